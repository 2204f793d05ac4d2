"""The navigator: cone queries and semantic retrieval over the materialized sphere, in Python.

    from sphere_assets.navigate.navigate import Navigator
    nav = Navigator.open()                       # $SPHERE_WAREHOUSE or data/warehouse
    nav.cone(theta=1.2, phi=0.3, apertures=[2, 5], shells=(10, 40))   # degrees -> [ConeResult]
    nav.cone(patch=("pydoc:assert", 3), apertures=[5])                # around a stored patch
    nav.query_text("The assert statement", k=10)                     # -> SemanticResult
    nav.query_patch("pydoc:assert", 3, k=10)

Angles given to the navigator are degrees (theta = colatitude, phi = longitude); results carry
``theta``/``phi`` in radians as shell_placements stores them, and ``angle_deg``.

What it reads (lazily, once per process; a missing piece raises :class:`io.MissingInput`
naming the asset and the command that builds it): ``sphere_index`` (cones), ``embedding_ann``
(semantic default path), ``patch_embeddings`` (exact and cone-candidate paths, stored-patch
queries), ``blt_patches`` text and ``raw_articles`` titles (results), the ``entropy_model``
(text queries).

Text queries: the text is patched with the pipeline's own BLT patcher (``entropy_model`` and
the threshold ``blt_patches`` calibrates with its default config, on the same entropy segments:
:func:`calibration_segments`) and every patch is embedded exactly as ``patch_embeddings`` does
(``lib.text.patch_embeddings.pool_patch_embeddings``). The query vector is the embedding of the
text's **last** patch by default (``pool="last"``: the model is causal, so it is pooled from
hidden states that have read the whole text; a text equal to an article's prefix ending at a
patch reproduces that patch's stored embedding), or the mean of the unit patch embeddings
(``pool="mean"``).

The cone-candidate path searches the index over the sphere_map directions
(``sphere_index``'s ``map.safetensors``: where the map put each patch, before the water-filling
moved it) when the shard has one, else the placements' own; a stored patch is searched around its
map direction, a text around ``place(its vector)``.

Placing a query on the map (for the cone-candidate path, ``sphere cone --text`` and the
``angle_deg`` of semantic hits) needs the fitted map: ``place`` (embeddings [N, D] -> unit
[N, 3]); by default the sphere_map of the placements family (``placements.io.load_sphere_map``
+ ``lib.sphere.sphere_map.map_directions``) when that code exists. Without a map, text queries
still run on the ANN/exact paths and report ``angle_deg`` None. A stored patch is placed at its
stored direction.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sphere_assets.core.lazy import lazy_module
from sphere_assets.navigate import io
from sphere_assets.navigate.contract import SPHERE_INDEX
from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT
from sphere_resources.store import Warehouse

cones = lazy_module("sphere_assets.lib.sphere.cones")
se = lazy_module("sphere_assets.lib.sphere.semantic")

PATHS = ("ann", "exact", "cone")
DEFAULT_PATH = "ann"  # bench/navigate.py: recall@10 >= 0.95 at p50 well under 5 ms at 1M
DEFAULT_CANDIDATES = 4096  # cone-candidate path: points gathered before the exact rerank
ARTICLE_POOL = 100  # patch hits aggregated into articles (at least 10 k)
Place = Callable[[np.ndarray], np.ndarray]


class NavigateError(ValueError):
    """A query the navigator cannot answer (unknown id, empty text, bad angle...)."""


@dataclass(frozen=True)
class PatchHit:
    """One stored patch in a result."""

    article_id: str
    patch_index: int
    shard: str
    row: int  # row in the shard's shell_placements / patch_embeddings / blt_patches
    shell: int
    theta: float  # radians, as stored
    phi: float  # radians, as stored
    angle_deg: float | None  # angle to the query direction (None: query not placed)
    cosine: float | None = None  # semantic queries
    text: str | None = None
    title: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConeResult:
    """Every point inside one cone."""

    theta_deg: float
    phi_deg: float
    aperture_deg: float
    shells: tuple[int, int] | None
    hits: list[PatchHit]  # by angle, then shard and row
    shell_counts: dict[int, int]
    candidates: int  # points the exact test looked at
    seconds: float

    @property
    def count(self) -> int:
        return len(self.hits)


@dataclass(frozen=True)
class ArticleHit:
    article_id: str
    title: str | None
    score: float  # cosine of its best patch among the pooled hits
    hits: int  # its patches among the pooled hits
    best: PatchHit


@dataclass(frozen=True)
class SemanticResult:
    query: str
    path: str
    patches: list[PatchHit]
    articles: list[ArticleHit]
    query_patches: int
    placed: bool  # whether the query has a direction on the sphere
    candidates: int | None  # cone-candidate path: points reranked
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    unplaced: str | None = None  # why the query has no direction (no fitted map)


@dataclass
class Shard:
    """What the navigator holds of one shard (each part loaded on first use)."""

    key: str
    cone: object | None = None
    map_cone: object | None = None  # index over sphere_map directions (else = cone)
    rows: object | None = None  # pa.Table article_id, patch_index, theta, phi (row order)
    shell: np.ndarray | None = None  # row order
    unit: np.ndarray | None = None  # float64 [N, 3] row order
    emb: np.ndarray | None = None  # unit float32 [N, D]
    emb_meta: dict | None = None
    ann: object | None = None
    texts: object | None = None
    titles: dict | None = None
    article_ids: np.ndarray | None = None
    pidx: np.ndarray | None = None  # patch_index, row order
    theta: np.ndarray | None = None  # stored radians, row order
    phi: np.ndarray | None = None


def default_place(store: Warehouse) -> Place | None:
    """The placements family's fitted map as a ``place`` function, None when that code does not
    exist yet (the map asset missing on disk raises when first used)."""
    try:
        from sphere_assets.lib.sphere.sphere_map import map_directions
        from sphere_assets.placements.io import load_sphere_map
    except ImportError:
        return None
    state: dict = {}

    def place(embeddings: np.ndarray) -> np.ndarray:
        if "model" not in state:
            state["model"] = load_sphere_map(store)
        return map_directions(state["model"], np.asarray(embeddings, dtype=np.float32))

    return place


class Navigator:
    """Cone and semantic queries over one warehouse (see module docstring)."""

    def __init__(self, store: Warehouse, place: Place | None = None, nprobe: int = 0):
        self.store = store
        self.place = place if place is not None else default_place(store)
        self.nprobe = nprobe
        keys = io.index_partitions(store)
        self.shards = {k: Shard(k) for k in keys}
        self._cell_cache: dict[tuple, np.ndarray | None] = {}
        self._text_model = None

    @classmethod
    def open(cls, warehouse: str | None = None, place: Place | None = None) -> Navigator:
        root = warehouse or os.environ.get("SPHERE_WAREHOUSE") or DEFAULT_WAREHOUSE_ROOT
        return cls(Warehouse(root), place=place)

    # --- loading ----------------------------------------------------------------------------

    def _require_index(self) -> None:
        if not self.shards:
            raise io.missing(SPHERE_INDEX.name, None, "the navigator")

    def _cone(self, s: Shard):
        if s.cone is None:
            s.cone = io.load_cone_index(self.store, s.key)
            s.rows = io.read_index_rows(self.store, s.key)
            inv = np.empty_like(s.cone.row)
            inv[s.cone.row] = np.arange(s.cone.row.size)
            s.shell = s.cone.shell[inv]
            s.unit = s.cone.unit[inv]
            s.article_ids = s.rows.column("article_id").to_numpy(zero_copy_only=False)
            s.pidx = s.rows.column("patch_index").to_numpy()
            s.theta = s.rows.column("theta").to_numpy()
            s.phi = s.rows.column("phi").to_numpy()
        return s.cone

    def _map_index(self, s: Shard):
        """The shard's index over sphere_map directions, else its placement index."""
        if s.map_cone is None:
            s.map_cone = io.load_map_index(self.store, s.key) or self._cone(s)
        return s.map_cone

    def _ids(self, s: Shard) -> np.ndarray:
        self._cone(s)
        return s.article_ids

    def key_of(self, s: Shard, row: int) -> tuple[str, str, int]:
        """(shard, article_id, patch_index) of a row of shard ``s``."""
        self._cone(s)
        return s.key, str(s.article_ids[row]), int(s.pidx[row])

    def _emb(self, s: Shard) -> np.ndarray:
        if s.emb is None:
            emb, meta = io.read_embeddings(self.store, s.key, "the navigator")
            s.emb, s.emb_meta = se.unit_rows(emb), meta
        return s.emb

    def _ann(self, s: Shard):
        if s.ann is None:
            s.ann = se.deserialize_ann(io.read_ann_bytes(self.store, s.key))
            se.set_search_params(s.ann, nprobe=self.nprobe)
        return s.ann

    def _texts(self, s: Shard):
        if s.texts is None:
            s.texts = io.read_patch_texts(self.store, s.key) or False
            s.titles = io.read_titles(self.store, s.key)
        return s.texts

    def load(self, semantic: bool = True, path: str = DEFAULT_PATH) -> Navigator:
        """Load everything a query of ``path`` needs now (a warm process)."""
        self._require_index()
        for s in self.shards.values():
            self._cone(s)
            self._texts(s)
            if semantic:
                if path == "ann":
                    self._ann(s)
                else:
                    self._emb(s)
        return self

    # --- hits -------------------------------------------------------------------------------

    def _angle(self, s: Shard, row: int, d: np.ndarray | None) -> float | None:
        if d is None:
            return None
        self._cone(s)
        dot = float(cones.dots(s.unit[row][None], d)[0])
        return math.degrees(math.acos(max(-1.0, min(1.0, dot))))

    def _hit(
        self,
        s: Shard,
        row: int,
        angle_deg: float | None,
        cosine: float | None,
        with_text: bool = True,
    ) -> PatchHit:
        self._cone(s)
        texts = self._texts(s) if with_text else False
        aid = str(s.article_ids[row])
        return PatchHit(
            article_id=aid,
            patch_index=int(s.pidx[row]),
            shard=s.key,
            row=int(row),
            shell=int(s.shell[row]),
            theta=float(s.theta[row]),
            phi=float(s.phi[row]),
            angle_deg=angle_deg,
            cosine=None if cosine is None else float(cosine),
            text=texts[row].as_py() if texts is not False else None,
            title=s.titles.get(aid) if with_text and s.titles else None,
        )

    def locate(self, article_id: str, patch_index: int) -> tuple[Shard, int]:
        """(shard, row) of a stored patch; NavigateError naming what is unknown."""
        self._require_index()
        known_article = False
        for s in self.shards.values():
            self._cone(s)
            rows = np.flatnonzero(s.article_ids == article_id)
            if rows.size == 0:
                continue
            known_article = True
            pidx = s.pidx[rows]
            match = rows[pidx == patch_index]
            if match.size:
                return s, int(match[0])
            raise NavigateError(
                f"article {article_id!r} has patches 0..{int(pidx.max())}, not {patch_index} "
                f"(sphere_index shard {s.key})"
            )
        if not known_article:
            raise NavigateError(
                f"unknown article id {article_id!r}: not in sphere_index (shards "
                f'{", ".join(self.shards)}); list ids with `sphere sql "select distinct '
                f'article_id from sphere_index"`'
            )
        raise AssertionError("unreachable")

    # --- cones ------------------------------------------------------------------------------

    def direction_of(
        self,
        theta: float | None = None,
        phi: float | None = None,
        xyz: Sequence[float] | None = None,
        patch: tuple[str, int] | None = None,
        text: str | None = None,
    ) -> np.ndarray:
        """Unit direction from exactly one of: theta+phi (degrees), xyz, a stored patch, a text."""
        given = [theta is not None or phi is not None, xyz is not None, patch, text is not None]
        if sum(bool(g) for g in given) != 1:
            raise NavigateError("give exactly one of theta/phi, xyz, patch or text")
        if xyz is not None:
            try:
                return cones.check_direction(np.asarray(xyz, dtype=np.float64))
            except ValueError as exc:
                raise NavigateError(str(exc)) from None
        if patch is not None:
            s, row = self.locate(*patch)
            return s.unit[row].copy()
        if text is not None:
            d = self.place_vectors(self.text_query_vector(text)[0][None])
            return d[0]
        if theta is None or phi is None:
            raise NavigateError("a direction by angles needs both theta and phi (degrees)")
        if not (0.0 <= theta <= 180.0) or not math.isfinite(phi):
            raise NavigateError(f"theta must be in [0, 180] degrees, got {theta}")
        return cones.direction(math.radians(theta), math.radians(phi))

    def _cells(self, nside: int, d: np.ndarray, aperture: float):
        key = (nside, d.tobytes(), aperture)
        if key not in self._cell_cache:
            if len(self._cell_cache) > 64:
                self._cell_cache.clear()
            self._cell_cache[key] = cones.candidate_cells(nside, d, aperture)
        return self._cell_cache[key]

    def cone(
        self,
        apertures: float | Sequence[float],
        shells: tuple[int, int] | None = None,
        with_text: bool = True,
        **where,
    ) -> list[ConeResult]:
        """Every stored point inside each cone (apertures in degrees) around the direction
        ``where`` names (see :meth:`direction_of`), on shells ``s0 <= shell <= s1``."""
        self._require_index()
        d = self.direction_of(**where)
        alphas_deg = [float(a) for a in np.atleast_1d(apertures)]
        if not alphas_deg:
            raise NavigateError("give at least one aperture")
        for a in alphas_deg:
            if not (math.isfinite(a) and 0.0 <= a <= 180.0):
                raise NavigateError(f"aperture must be in [0, 180] degrees, got {a}")
        alphas = [math.radians(a) for a in alphas_deg]
        for s in self.shards.values():  # loading is not part of the query's time
            self._cone(s)
        import healpy  # noqa: F401  (about 1 s the first time, also not the query's)

        t0 = time.perf_counter()
        per = [[] for _ in alphas]
        cand = 0
        widest = max(alphas)
        for s in self.shards.values():
            index = self._cone(s)
            cells = None if widest + cones.PAD >= math.pi else self._cells(index.nside, d, widest)
            matches = cones.cone_query(index, d, alphas, shells, cells=cells)
            cand += matches[0].candidates
            for i, m in enumerate(matches):
                per[i].append((s, m))
        seconds = time.perf_counter() - t0
        theta, phi = cones.angles_of(d[None])
        out = []
        for i, a in enumerate(alphas_deg):
            found = []  # (angle_deg, shard order, row, shard)
            shell_list = []
            for s, m in per[i]:
                ang = np.degrees(m.angles()).tolist()
                found.extend(
                    (g, _shard_order(s.key), r, s)
                    for g, r in zip(ang, m.rows.tolist(), strict=True)
                )
                shell_list.append(s.shell[m.rows])
            found.sort(key=lambda h: h[:3])
            out.append(
                ConeResult(
                    theta_deg=math.degrees(float(theta[0])),
                    phi_deg=math.degrees(float(phi[0])),
                    aperture_deg=a,
                    shells=shells,
                    hits=[self._hit(s, row, g, None, with_text) for g, _, row, s in found],
                    shell_counts=cones.shell_counts(
                        np.concatenate(shell_list) if shell_list else np.zeros(0, np.int64)
                    ),
                    candidates=cand,
                    seconds=seconds,
                )
            )
        return out

    # --- semantic ---------------------------------------------------------------------------

    def _text_tools(self):
        """(model, threshold, mode, max_length, model sha) of the pipeline's patcher, cached."""
        if self._text_model is None:
            import warnings

            import dagster as dg

            warnings.filterwarnings("ignore", category=dg.BetaWarning)
            from sphere_assets.patching import io as patching_io
            from sphere_assets.patching.blt_patches import BltPatchesConfig, calibrate
            from sphere_resources.contracts import ContractError

            try:
                model, _, sha = patching_io.load_model(self.store)
            except ContractError as exc:
                raise io.MissingInput(
                    f"text queries need the entropy_model: {exc}; build it with `{io.BUILD}`"
                ) from None
            config = BltPatchesConfig()
            calibration = calibrate(config, calibration_segments(self.store, patching_io))
            self._text_model = (model, calibration.threshold, config.mode, config.max_length(), sha)
        return self._text_model

    def embed_text(self, text: str) -> np.ndarray:
        """Embeddings [m, D] of the text's BLT patches (the pipeline's patcher and pooling)."""
        if not text or not text.strip():
            raise NavigateError("the query text is empty")
        from sphere_assets.lib.text import patch_embeddings as pe
        from sphere_assets.lib.text import patcher as pt
        from sphere_assets.lib.text import torch_runtime as rt

        model, threshold, mode, max_length, _ = self._text_tools()
        data = text.encode("utf-8")
        with rt.torch_runtime(model.config.num_threads):
            res = pt.patch_article(model, data, threshold, mode, max_length)
            vec = pe.pool_patch_embeddings(
                model, data, res.byte_start, res.byte_len, byte_entropy=res.byte_entropy
            )
        return vec.embeddings

    def text_query_vector(self, text: str, pool: str = "last") -> tuple[np.ndarray, int]:
        """(unit query vector [D], number of query patches)."""
        emb = self.embed_text(text)
        return pool_query(emb, pool), int(emb.shape[0])

    def place_vectors(self, q: np.ndarray) -> np.ndarray:
        """Directions of query vectors on the map; MissingInput when there is no map."""
        if self.place is None:
            raise io.MissingInput(
                "placing a text on the sphere needs the fitted map (the placements family's "
                "sphere_map asset and sphere_assets/lib/sphere/sphere_map.py, issue 14), which "
                f"this checkout does not have yet; build it with `{io.BUILD}` once it exists"
            )
        d = np.asarray(self.place(np.asarray(q, dtype=np.float32).reshape(1, -1)))
        return cones.unit_vectors(d)

    def search(
        self,
        q: np.ndarray,
        k: int = 10,
        path: str = DEFAULT_PATH,
        q_dir: np.ndarray | None = None,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> tuple[list[tuple[Shard, int, float]], int | None]:
        """Top-k (shard, row, cosine) over every shard for the unit query ``q`` by ``path``."""
        self._require_index()
        if path not in PATHS:
            raise NavigateError(f"path must be one of {PATHS}, got {path!r}")
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        parts, reranked = [], None
        order = list(self.shards.values())
        total = sum(self._cone(s).size for s in order) if path == "cone" else 0
        for no, s in enumerate(order):
            if path == "ann":
                rows, cos = se.ann_search(self._ann(s), q[None], k)
                keep = rows[0] >= 0
                parts.append((no, rows[0][keep], cos[0][keep]))
            elif path == "exact":
                rows, cos = se.top_k_cosine(q[None], self._emb(s), k)
                parts.append((no, rows[0], cos[0]))
            else:
                if q_dir is None:
                    raise io.MissingInput(
                        "the cone-candidate path needs the query placed on the map "
                        "(no fitted map: use --path ann or exact)"
                    )
                index = self._map_index(s)
                want = max(k, math.ceil(candidates * index.size / max(total, 1)))
                rows, cos, cand = se.cone_candidate_search(q, q_dir, index, self._emb(s), k, want)
                reranked = (reranked or 0) + int(cand.rows.size)
                parts.append((no, rows, cos))
        merged = se.merge_top_k(parts, k)
        return [(order[no], row, cos) for no, row, cos in merged], reranked

    def _semantic(
        self,
        label: str,
        q: np.ndarray,
        q_dir: np.ndarray | None,
        n_query: int,
        k: int,
        k_articles: int,
        path: str,
        candidates: int,
        t_start: float,
        timings: dict,
        search_dir: np.ndarray | None = None,
    ) -> SemanticResult:
        pool = max(k, ARTICLE_POOL, 10 * k_articles) if k_articles else k
        t0 = time.perf_counter()
        where = q_dir if search_dir is None else search_dir
        found, reranked = self.search(q, pool, path, where, candidates)
        timings["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        patches = [self._hit(s, row, self._angle(s, row, q_dir), cos) for s, row, cos in found[:k]]
        articles = []
        if k_articles:
            ids = [str(self._ids(s)[row]) for s, row, _ in found]
            for a in se.aggregate_articles(ids, [c for _, _, c in found], k_articles):
                s, row, cos = found[a.best]
                best = self._hit(s, row, self._angle(s, row, q_dir), cos)
                articles.append(ArticleHit(a.article_id, best.title, a.score, a.hits, best))
        timings["results"] = time.perf_counter() - t0
        return SemanticResult(
            query=label,
            path=path,
            patches=patches,
            articles=articles,
            query_patches=n_query,
            placed=q_dir is not None,
            candidates=reranked,
            seconds=time.perf_counter() - t_start,
            timings={k_: round(v, 6) for k_, v in timings.items()},
        )

    def query_text(
        self,
        text: str,
        k: int = 10,
        k_articles: int = 0,
        path: str = DEFAULT_PATH,
        pool: str = "last",
        candidates: int = DEFAULT_CANDIDATES,
    ) -> SemanticResult:
        """Top-k stored patches (and top ``k_articles`` articles) most similar to ``text``."""
        t_start = time.perf_counter()
        self._require_index()
        q, n_query = self.text_query_vector(text, pool)
        timings = {"embed": time.perf_counter() - t_start}
        q_dir, unplaced = None, None
        t0 = time.perf_counter()
        try:
            q_dir = self.place_vectors(q[None])[0]
        except (ValueError, KeyError, FileNotFoundError) as exc:  # no (usable) map
            if path == "cone":
                raise
            unplaced = str(exc)
        timings["place"] = time.perf_counter() - t0
        label = f"text {text[:60]!r}"
        result = self._semantic(
            label, q, q_dir, n_query, k, k_articles, path, candidates, t_start, timings
        )
        return replace(result, unplaced=unplaced)

    def query_patch(
        self,
        article_id: str,
        patch_index: int,
        k: int = 10,
        k_articles: int = 0,
        path: str = DEFAULT_PATH,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> SemanticResult:
        """Top-k stored patches similar to a stored patch (itself first, cosine 1), placed at
        its stored direction."""
        t_start = time.perf_counter()
        s, row = self.locate(article_id, patch_index)
        q = self._emb(s)[row].copy()
        label = f"patch {article_id!r} #{patch_index}"
        mi = self._map_index(s)  # the cone path searches around its map direction
        search_dir = mi.unit[int(np.flatnonzero(mi.row == row)[0])].copy()
        return self._semantic(
            label,
            q,
            s.unit[row].copy(),
            1,
            k,
            k_articles,
            path,
            candidates,
            t_start,
            {},
            search_dir=search_dir,
        )


def calibration_segments(store: Warehouse, patching_io) -> list[np.ndarray]:
    """The entropy segments blt_patches calibrates its threshold on: the entropy_model's
    calibration sample when the patching family has one (``load_calibration_segments``), else
    (older code or an entropy_model written before it) the held-out segments."""
    from sphere_resources.contracts import ContractError

    load = getattr(patching_io, "load_calibration_segments", None)
    if load is not None:
        try:
            return load(store)[0]
        except ContractError:
            pass
    return patching_io.load_heldout_segments(store)


def pool_query(emb: np.ndarray, pool: str) -> np.ndarray:
    """The query vector of a text's patch embeddings [m, D]: the last patch's (``last``) or the
    mean of the unit rows (``mean``), L2-normalised."""
    if emb.shape[0] == 0:
        raise NavigateError("the query text has no patches")
    if pool == "last":
        return se.unit_rows(emb[-1:])[0]
    if pool == "mean":
        return se.unit_rows(se.unit_rows(emb).mean(axis=0, keepdims=True))[0]
    raise NavigateError(f"pool must be last or mean, got {pool!r}")


def _shard_order(key: str):
    return (0, int(key), key) if key.lstrip("-").isdigit() else (1, 0, key)


def hit_json(hit: PatchHit, **extra) -> dict:
    """The JSON object of one hit (CLI --json): keys, shell, stored angles, angle, cosine, text."""
    out = {
        "article_id": hit.article_id,
        "patch_index": hit.patch_index,
        "shell": hit.shell,
        "theta": hit.theta,
        "phi": hit.phi,
        "angle_deg": hit.angle_deg,
        "shard": hit.shard,
        "row": hit.row,
        "title": hit.title,
        "text": hit.text,
    }
    if hit.cosine is not None:
        out["cosine"] = hit.cosine
    out.update(extra)
    return out


__all__ = [
    "ArticleHit",
    "ConeResult",
    "NavigateError",
    "Navigator",
    "PatchHit",
    "SemanticResult",
    "hit_json",
    "pool_query",
]
