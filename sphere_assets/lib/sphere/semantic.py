r"""Semantic retrieval over patch embeddings: exact cosine top-k, the cone-candidate rerank, an
approximate-nearest-neighbour index (faiss) and the article aggregation.

Pure numpy (+ faiss and healpy, imported inside the functions that use them).

Similarity
    cosine = dot product of L2-normalised float32 rows (:func:`unit_rows`; a zero row stays zero,
    cosine 0 with everything). Top-k order: cosine descending, ties by the smaller row (shard
    first, when results of several shards are merged: :func:`merge_top_k`).

Search paths (both kept; ``bench/navigate.py`` measures them side by side)
    * **exact** (:func:`top_k_cosine`): every row, chunked matmul + argpartition; the reference.
    * **ANN** (:func:`build_ann`, :func:`ann_search`): a faiss ``IndexIVFFlat`` (inner product on
      unit rows). Why faiss and IVF-Flat: faiss is maintained by Meta with CPU wheels on PyPI,
      releases the GIL, and serialises an index to bytes (stored in the warehouse like every
      other file, verified by its manifest); IVF-Flat keeps the full vectors (its scores *are*
      the exact cosines, no re-ranking needed), builds fast (a k-means of ``nlist`` centroids on
      a seeded sample: 40-60 s at 1M rows on 2 cores; HNSW took ~10x longer than IVF at 200k
      rows here), is deterministic for a fixed seed (the same file with 1 or 2 threads), and
      has one knob, ``nprobe``, that trades speed for recall up to exact (``nprobe = nlist``).
      ``kind="hnsw"`` (faiss ``IndexHNSWFlat``) is kept for comparison. At 1M rows it reaches
      recall@10 >= 0.999 at p50 < 1 ms (BENCHMARKS.md ``## navigate``), hence the default.
    * **cone-candidate** (:func:`cone_candidate_search`): place the query on the map (its unit
      direction on the sphere), take the points of a cone around it that holds between ``want``
      and 4 ``want`` points (:func:`widen_cone`: from the cap ``want`` uniformly spread points
      would fill, halved while too full, widened x1.5 while too empty; or the whole sphere),
      then rerank those exactly by cosine. Its
      recall is bounded by how well the map keeps embedding-space neighbours angularly close: a
      3-D map of a D-dimensional cloud cannot keep them all, so it needs many candidates.

Articles (:func:`aggregate_articles`)
    From the top ``pool`` patch hits: an article's score is the cosine of its best patch; ties
    are broken by the number of its patches among the hits (more first), then by article id.
    Each article carries its best patch (row) and hit count. Max rather than mean or sum: a
    long article should not win by having many mediocre patches, and one strongly matching
    passage is what a reader is sent to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sphere_assets.lib.sphere import cones

CHUNK_ROWS = 262_144  # rows per matmul block of the exact search
ANN_KINDS = ("ivf", "hnsw")
WIDEN = 1.5  # aperture factor per widening step of the cone-candidate search
SHRINK_ABOVE = 4  # a first cone holding more than this many times the wanted points is halved
MIN_APERTURE = 1e-4  # radians


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    n = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    return x / np.where(n > 0, n, 1.0)[:, None]


def _order(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Argsort of (-sim, idx) along the last axis: cosine descending, ties by the smaller row."""
    return np.lexsort((idx, -sims), axis=-1)


def top_k_cosine(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of ``x`` [N, D] (unit rows) for each query row of ``q`` [M, D] (unit):
    (rows [M, k'], cosines [M, k']) with k' = min(k, N), cosine descending (ties: smaller row)."""
    q = np.asarray(q, dtype=np.float32)
    q = q[None, :] if q.ndim == 1 else q
    n = x.shape[0]
    kk = min(int(k), n)
    if kk <= 0:
        return np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    best_s = np.zeros((q.shape[0], 0), np.float32)
    for start in range(0, n, CHUNK_ROWS):
        s = q @ x[start : start + CHUNK_ROWS].T
        m = min(kk, s.shape[1])
        if m < s.shape[1]:
            part = np.argpartition(-s, m - 1, axis=1)[:, :m]
        else:
            part = np.tile(np.arange(s.shape[1]), (q.shape[0], 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        o = _order(cand_s, cand_i)[:, :kk]
        best_s = np.take_along_axis(cand_s, o, 1)
        best_i = np.take_along_axis(cand_i, o, 1)
    return best_i, best_s


def rerank(q: np.ndarray, x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among ``rows`` of ``x`` for one unit query ``q`` [D]: (rows, cosines)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return rows, np.zeros(0, np.float32)
    s = x[rows] @ np.asarray(q, dtype=np.float32).reshape(-1)
    kk = min(int(k), rows.size)
    part = np.argpartition(-s, kk - 1)[:kk] if kk < rows.size else np.arange(rows.size)
    o = np.lexsort((rows[part], -s[part]))
    return rows[part][o], s[part][o]


def merge_top_k(
    parts: Sequence[tuple[int, np.ndarray, np.ndarray]], k: int
) -> list[tuple[int, int, float]]:
    """Merge per-shard top-k lists ``(shard_no, rows, cosines)`` into the global top-k:
    [(shard_no, row, cosine)], cosine descending, ties by (shard_no, row). Exact when every
    part is its shard's exact top-k."""
    flat = [
        (float(c), sh, int(r))
        for sh, rows, cos in parts
        for r, c in zip(rows.tolist(), cos.tolist(), strict=True)
    ]
    flat.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(sh, r, c) for c, sh, r in flat[: max(int(k), 0)]]


# --- cone-candidate search ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConeCandidates:
    rows: np.ndarray  # int64 input rows of the candidates
    aperture: float  # radians of the final cone
    steps: int  # widening steps taken


def widen_cone(
    count_at: Callable[[float], np.ndarray], n_points: int, want: int, start: float | None = None
) -> ConeCandidates:
    """A cone around the query holding between ``want`` and ``SHRINK_ABOVE * want`` points (or
    the whole sphere): from ``start`` (default: the cap ``want`` uniformly spread points would
    fill), halved while it holds more than that and the half still holds ``want``, then widened
    x``WIDEN`` while it holds fewer than ``want``. ``count_at(aperture)`` returns the rows."""
    want = min(max(int(want), 1), max(n_points, 1))
    a = start if start is not None else cones.aperture_for_count(n_points, want)
    a = min(max(a, MIN_APERTURE), math.pi)
    rows = count_at(a)
    steps = 0
    while rows.size > SHRINK_ABOVE * want and a > MIN_APERTURE:  # a crowded map: shrink
        smaller = count_at(a / 2)
        steps += 1
        if smaller.size < want:
            break
        a, rows = a / 2, smaller
    while rows.size < want and a < math.pi:
        a = min(a * WIDEN, math.pi)
        rows = count_at(a)
        steps += 1
    return ConeCandidates(rows, a, steps)


def cone_candidate_search(
    q: np.ndarray,
    q_dir: np.ndarray,
    index: cones.ConeIndex,
    x: np.ndarray,
    k: int,
    want: int,
) -> tuple[np.ndarray, np.ndarray, ConeCandidates]:
    """Top-k rows of ``x`` (unit embeddings, input-row order of ``index``) for the unit query
    ``q`` placed at ``q_dir`` on the sphere: the cone around ``q_dir`` widened until it holds
    ``want`` points, reranked exactly. (rows, cosines, the candidates)."""
    d = cones.check_direction(q_dir)

    def rows_at(a: float) -> np.ndarray:
        return cones.cone_query(index, d, a)[0].rows

    cand = widen_cone(rows_at, index.size, want)
    rows, cos = rerank(q, x, cand.rows, k)
    return rows, cos, cand


# --- ANN index (faiss) ------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnParams:
    kind: str = "ivf"
    nlist: int = 0  # ivf: inverted lists (0 = auto: ~4 sqrt(N), at most N // 39)
    nprobe: int = 0  # ivf: lists searched per query (0 = auto)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    train_sample: int = 131_072
    seed: int = 0


def auto_nlist(n: int) -> int:
    """~4 sqrt(N) lists, with at least 39 training points per list (faiss' minimum), >= 1."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def auto_nprobe(nlist: int) -> int:
    """Lists probed by default: nlist / 64, at least 16 (all when nlist <= 16)."""
    return min(nlist, max(16, nlist // 64))


def build_ann(x: np.ndarray, params: AnnParams):
    """A faiss index over the unit rows ``x`` [N, D] (float32), inner-product metric."""
    import faiss

    if params.kind not in ANN_KINDS:
        raise ValueError(f"ANN kind must be one of {ANN_KINDS}, got {params.kind!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    if params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        index.add(x)
        return index
    nlist = params.nlist or auto_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = params.seed
    index.cp.min_points_per_centroid = 1  # small shards: train on what there is, no warning
    rng = np.random.default_rng(params.seed)
    sample = (
        x
        if n <= params.train_sample
        else x[np.sort(rng.choice(n, params.train_sample, replace=False))]
    )
    if n:
        index.train(sample)
        index.add(x)
    index.nprobe = params.nprobe or auto_nprobe(nlist)
    return index


def set_search_params(index, nprobe: int = 0, ef_search: int = 0) -> None:
    """Set ``nprobe`` (IVF) or ``efSearch`` (HNSW) on a loaded index (0 = leave as stored)."""
    if nprobe and hasattr(index, "nprobe"):
        index.nprobe = int(min(nprobe, index.nlist))
    if ef_search and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef_search)


def ann_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [M, k], cosines [M, k]) of the faiss index for unit queries ``q``; missing hits
    (fewer than k reachable) are dropped by the caller (row -1)."""
    q = np.ascontiguousarray(np.asarray(q, dtype=np.float32).reshape(-1, index.d))
    kk = max(1, min(int(k), max(index.ntotal, 1)))
    sims, rows = index.search(q, kk)
    return rows.astype(np.int64), sims.astype(np.float32)


def serialize_ann(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize_ann(data: bytes):
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found_i ∩ truth_i| / |truth_i| over query rows (rows as int arrays [M, k])."""
    vals = []
    for f, t in zip(found, truth, strict=True):
        t = set(int(v) for v in t if v >= 0)
        if t:
            vals.append(len(t & set(int(v) for v in f if v >= 0)) / len(t))
    return float(np.mean(vals)) if vals else 1.0


# --- articles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArticleScore:
    article_id: str
    score: float  # cosine of the best patch
    hits: int  # patches of the article among the pooled hits
    best: int  # position (in the hit list) of the best patch


def aggregate_articles(
    article_ids: Sequence[str], cosines: Sequence[float], k: int
) -> list[ArticleScore]:
    """Top-k articles of a patch hit list (see module docstring: best cosine, then hit count,
    then article id)."""
    best: dict[str, tuple[float, int]] = {}
    hits: dict[str, int] = {}
    for pos, (a, c) in enumerate(zip(article_ids, cosines, strict=True)):
        hits[a] = hits.get(a, 0) + 1
        if a not in best or c > best[a][0]:
            best[a] = (float(c), pos)
    ranked = sorted(best, key=lambda a: (-best[a][0], -hits[a], a))
    return [ArticleScore(a, best[a][0], hits[a], best[a][1]) for a in ranked[: max(int(k), 0)]]
