r"""The one sphere map: embeddings -> (direction on S^2, information score), fitted once.

A :class:`SphereMapModel` is fitted on an evenly spaced sample of the whole corpus and then
applied, row by row, to any shard, old or new: placing a shard needs no other shard and no
refit, and the same embedding gets the same direction and score in every shard, bit for bit
(every output row depends only on its input row and the model: compiled kernels
with a fixed summation order and index tie-breaks, no BLAS, no statistics of the batch).

Two methods (``SphereMapConfig.method``):

* ``pca3``: ``n = normalize((u - mean) @ C)``, u the unit embedding, C the top-3 principal axes
  of the sample's unit rows (``features.fit_sphere_map``).
* ``neighbour`` (default): a neighbourhood-preserving layout of the sample carried to any row by
  its nearest sample rows (landmarks):

  1. *layout*: the sample's directions P (init PCA-3) are optimised full-batch with Adam (JAX)
     on a UMAP-style cross entropy on the sphere over the sample's cosine kNN graph
     (k = ``knn_k``): attraction ``-log q(d_ij)`` over the edges, repulsion
     ``-log(1 - q(d_in))`` over ``negatives`` random partners per edge,
     ``q(d) = 1 / (1 + a (d / sigma)^(2 b))``, d the great-circle angle (UMAP's a, b for
     min_dist 0.1);
  2. the layout's pile-ups are opened with the kernel-density spreading of ``spreading.py``
     (radius ``layout_spread_deg``, all landmarks in one shell): the map itself leaves room
     around every landmark, so a shard's points can later spread inside a shell without
     landing in another neighbourhood. The room is a trade (BENCHMARKS.md "sphere map"): 16K
     landmarks 1.5 degrees apart cover ~78% of the sphere, which flattens the layout
     (synthetic trustworthiness@10 0.939, UMAP's 0.939); 1.25 degrees keeps 0.957 and costs the
     bundled corpus 7.3% of recall in the shard-time spreading (1.0: 0.982, but -9.7% on the
     synthetic set, at the goal's edge);
  3. *out of sample*: a row's direction is
     ``normalize(sum_j w_j P_j)`` over its ``landmarks_k`` most cosine-similar landmarks,
     ``w_j = exp((c_j - c_max) / tau)``. The landmarks are searched through an inverted file
     (k-means centroids of the landmarks; the ``n_probe`` most similar centroids' lists are
     scanned exactly; compiled kernels, bit-identical per row: ``landmark_search.py``).
     ``n_probe`` is 2 by default. 1 cut the map's CPU time by ~40% at 1M synthetic rows and
     lost bundled-corpus union recall@10 (0.363 vs 0.372; measured with the earlier kernels,
     layout room 1.5 degrees and fixed-step spreading); set it where throughput matters more.

  The model is a fixed function of the embedding (stored landmarks, directions, centroids):
  it places rows it never saw, in any shard, with no refit.

Score (the radial order): ``score = (log p - m_p) / s_p + w (k - m_k) / s_k`` with p the
prominence, k the concentration (``features.embedding_features``) and the centres and scales
m, s of the *fit sample*, not of the shard; ``level = Phi((score - median) / scale)`` with the
sample's robust median and scale.

Drift (when to refit): the total-variation distance between the HEALPix (nside 4, 192 equal-area
cells) histogram of a shard's map directions and that of the fit sample, next to the largest such
distance among the shards the fit saw (``reference_drift``): a shard far above the reference has
moved away from what the map was fitted on.

Bad input: an empty sample, NaN/inf values, or a dimension that does not match the model raise
``ValueError`` naming the rows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sphere_assets.lib.sphere.features import (
    LOG_FLOOR,
    angles_of,
    embedding_features,
    evenly_spaced,
    fit_sphere_map,
    name_rows,
    unit_rows,
)

METHODS = ("neighbour", "pca3")
APPLY_CHUNK = 65536  # rows placed at a time (memory only: rows are independent)
UMAP_A, UMAP_B = 1.577, 0.8951  # UMAP's curve for min_dist = 0.1, spread = 1
DRIFT_NSIDE = 4


@dataclass(frozen=True)
class SphereMapConfig:
    """Every knob of the fit (defaults: the bundled-corpus figures in BENCHMARKS.md)."""

    method: str = "neighbour"
    sample_size: int = 16384
    knn_k: int = 15
    negatives: int = 5
    sigma: float = 0.4
    steps: int = 300
    learning_rate: float = 0.01
    layout_spread_deg: float = 1.25  # module docstring, step 2: room vs trustworthiness
    layout_spread_passes: int = 64
    landmarks_k: int = 3
    tau: float = 0.01
    n_lists: int = 0  # inverted-file lists (0 = automatic: sample / 128, at most 256)
    n_probe: int = 2  # inverted-file lists scanned per row (see the module docstring)
    spread_weight: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"sphere_map: method must be one of {METHODS}, got {self.method!r}")
        if self.sample_size < 2 or self.knn_k < 1 or self.negatives < 1:
            raise ValueError("sphere_map: sample_size >= 2, knn_k >= 1, negatives >= 1")
        if not self.sigma > 0 or self.steps < 0 or not self.learning_rate > 0:
            raise ValueError("sphere_map: sigma > 0, steps >= 0, learning_rate > 0")
        if self.landmarks_k < 1 or not self.tau > 0 or self.n_probe < 1 or self.n_lists < 0:
            raise ValueError("sphere_map: landmarks_k >= 1, tau > 0, n_probe >= 1, n_lists >= 0")


@dataclass(frozen=True)
class SphereMapModel:
    """Everything placement needs (stored as float32/float64 tensors + JSON metadata)."""

    method: str
    mean: np.ndarray  # float32 [D] mean unit row of the sample
    components: np.ndarray  # float32 [D, 3] PCA-3 axes
    landmarks_t: np.ndarray  # float32 [D, M] unit landmark rows (columns grouped by list)
    positions: np.ndarray  # float32 [M, 3] their directions on the sphere
    centroids_t: np.ndarray  # float32 [D, C] inverted-file centroids
    list_offsets: np.ndarray  # int64 [C + 1] columns of list c: offsets[c]:offsets[c + 1]
    score_centre: np.ndarray  # float64 [4]: m_p, s_p, m_k, s_k
    level_centre: np.ndarray  # float64 [2]: median, robust scale of the sample's score
    spread_weight: float
    direction_histogram: np.ndarray  # float64 [192] fit sample's share per HEALPix cell
    reference_drift: float
    landmarks_k: int = 3
    tau: float = 0.01
    n_probe: int = 2
    report: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def as_pca3(self) -> SphereMapModel:
        """The plain PCA-3 map of the same fit sample (its axes are stored with every model)."""
        return replace(self, method="pca3")

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays of the model (safetensors)."""
        return {
            "mean": self.mean,
            "components": self.components,
            "landmarks_t": self.landmarks_t,
            "positions": self.positions,
            "centroids_t": self.centroids_t,
            "list_offsets": self.list_offsets,
            "score_centre": self.score_centre,
            "level_centre": self.level_centre,
            "direction_histogram": self.direction_histogram,
        }

    def scalars(self) -> dict:
        return {
            "method": self.method,
            "spread_weight": self.spread_weight,
            "reference_drift": self.reference_drift,
            "landmarks_k": self.landmarks_k,
            "tau": self.tau,
            "n_probe": self.n_probe,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], scalars: dict, report: dict | None = None):
        return cls(
            method=str(scalars["method"]),
            **{name: t[name] for name in TENSOR_NAMES},
            spread_weight=float(scalars["spread_weight"]),
            reference_drift=float(scalars["reference_drift"]),
            landmarks_k=int(scalars["landmarks_k"]),
            tau=float(scalars["tau"]),
            n_probe=int(scalars["n_probe"]),
            report=report or {},
        )


TENSOR_NAMES = (
    "mean", "components", "landmarks_t", "positions", "centroids_t", "list_offsets",
    "score_centre", "level_centre", "direction_histogram",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the sample


def corpus_sample_rows(shard_rows: list[int], sample_size: int) -> list[np.ndarray]:
    """Evenly spaced rows over the concatenation of shards (row counts ``shard_rows``), split
    back per shard: list of row indices per shard (deterministic; every shard is covered in
    proportion to its size)."""
    total = int(sum(shard_rows))
    picks = evenly_spaced(total, sample_size)
    starts = np.concatenate([[0], np.cumsum(shard_rows)]).astype(np.int64)
    return [
        picks[(picks >= a) & (picks < b)] - a for a, b in zip(starts[:-1], starts[1:], strict=True)
    ]


def check_rows(embeddings: np.ndarray, prominence: np.ndarray | None, what: str) -> None:
    """ValueError for an empty input or NaN/inf rows (named)."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"sphere_map: {what} is empty (shape {emb.shape}); nothing to fit")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if prominence is not None:
        p = np.asarray(prominence)
        bad = np.union1d(bad, np.flatnonzero(~np.isfinite(p) | (p < 0)))
    if bad.size:
        raise ValueError(
            f"sphere_map: {bad.size} {what} row(s) have NaN/inf values (or a negative "
            f"prominence): {name_rows(bad, None)}"
        )


# ---------------------------------------------------------------------------------------------
# applying a model: compiled kernels, bit-identical per row (landmark_search.py)


def map_outputs(model: SphereMapModel, embeddings: np.ndarray) -> np.ndarray:
    """Map directions [N, 3] float64 (unit rows) of embeddings [N, D]; a zero output (or a
    zero row) maps to the north pole. Bit-identical per row whatever the batch."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] != model.dim:
        raise ValueError(
            f"sphere_map: embeddings of shape {emb.shape} do not match the map's dimension "
            f"{model.dim} (refit the map: dagster asset materialize --select sphere_map)"
        )
    from sphere_assets.lib.sphere import landmark_search as ls

    out = np.empty((emb.shape[0], 3), np.float64)
    c32 = np.ascontiguousarray
    f32 = np.float32
    pca = model.method == "pca3" or model.positions.shape[0] == 0
    if not pca:
        index = ls.landmark_index(
            model.centroids_t, model.list_offsets, model.landmarks_t, model.positions
        )
    for start in range(0, emb.shape[0], APPLY_CHUNK):
        x = c32(emb[start : start + APPLY_CHUNK], dtype=f32)
        dst = out[start : start + x.shape[0]]
        if pca:
            ls.pca_rows(x, c32(model.mean, f32), c32(model.components, f32), dst)
        else:
            ls.landmark_directions(
                index, x, int(model.landmarks_k), int(model.n_probe), float(model.tau), dst
            )
    return out


def map_directions(model: SphereMapModel, embeddings: np.ndarray) -> np.ndarray:
    """The map direction (unit [N, 3] float64) of each embedding row: what ``shell_placements``
    starts from and what a query is placed at."""
    return map_outputs(model, embeddings)


def row_features(embeddings: np.ndarray, prominence=None, row_keys=None) -> dict:
    """prominence (default: the row norm), log prominence and concentration [N] (float64) of
    each row; ValueError naming rows (by key when given) with NaN/inf values."""
    emb = np.asarray(embeddings)
    # embedding_features wants a PCA map; only its norms and concentrations are used here
    axes = fit_sphere_map(np.zeros((0, emb.shape[1]), np.float32))
    norm, conc, _ = embedding_features(emb, axes, row_keys)
    prom = norm if prominence is None else np.asarray(prominence, dtype=np.float64)
    return dict(
        prominence=prom, log_prominence=np.log(np.maximum(prom, LOG_FLOOR)), concentration=conc
    )


def map_scores(model: SphereMapModel, embeddings: np.ndarray, prominence=None, row_keys=None):
    """:func:`row_features` plus the model's score [N], direction unit [N, 3], theta, phi."""
    f = row_features(embeddings, prominence, row_keys)
    f["score"] = score_of(model, f["log_prominence"], f["concentration"])
    f["unit"] = map_directions(model, embeddings)
    f["theta"], f["phi"] = angles_of(f["unit"])
    return f


def score_of(model_or_centre, log_prom, conc, spread_weight: float | None = None) -> np.ndarray:
    """(log p - m_p) / s_p + w (k - m_k) / s_k with a model's (or a given) centres."""
    if isinstance(model_or_centre, SphereMapModel):
        centre, spread_weight = model_or_centre.score_centre, model_or_centre.spread_weight
    else:
        centre = model_or_centre
    m_p, s_p, m_k, s_k = (float(v) for v in centre)
    return (log_prom - m_p) / s_p + spread_weight * (conc - m_k) / s_k


def score_level(model: SphereMapModel, score: np.ndarray) -> np.ndarray:
    """level = Phi((score - median) / scale) in [0, 1] with the fit sample's median and scale."""
    from scipy.special import ndtr

    med, scale = (float(v) for v in model.level_centre)
    return ndtr((np.asarray(score) - med) / scale)


def direction_histogram(unit: np.ndarray) -> np.ndarray:
    """Share of directions per HEALPix cell (nside ``DRIFT_NSIDE``, nested) [12 nside^2]."""
    import healpy

    n_cells = 12 * DRIFT_NSIDE * DRIFT_NSIDE
    if unit.shape[0] == 0:
        return np.zeros(n_cells)
    pix = healpy.vec2pix(DRIFT_NSIDE, *np.asarray(unit, np.float64).T, nest=True)
    return np.bincount(pix, minlength=n_cells) / unit.shape[0]


def drift(model: SphereMapModel, unit: np.ndarray) -> float:
    """Total-variation distance in [0, 1] between a shard's direction histogram and the fit's."""
    return float(0.5 * np.abs(direction_histogram(unit) - model.direction_histogram).sum())


# ---------------------------------------------------------------------------------------------
# fitting


def _robust_centre(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) with std 1 where it is 0 (a constant feature contributes nothing)."""
    sd = float(x.std())
    return float(x.mean()), sd if sd > 0 else 1.0


def _level_centre(score: np.ndarray) -> tuple[float, float]:
    q25, med, q75 = np.percentile(score, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = float(score.std())
    return float(med), float(scale) if scale > 0 else 1.0


def sample_knn(u: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Exact cosine kNN [M, k] of unit rows (self excluded), chunked."""
    m = u.shape[0]
    k = min(k, m - 1)
    out = np.empty((m, k), np.int64)
    for start in range(0, m, chunk):
        s = u[start : start + chunk] @ u.T
        rows = np.arange(s.shape[0])
        s[rows, rows + start] = -np.inf
        out[start : start + s.shape[0]] = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return out


def _free_layout(u: np.ndarray, init: np.ndarray, config: SphereMapConfig, log) -> tuple:
    """Full-batch Adam on the UMAP-style loss (module docstring) over free directions
    [M, 3] starting at ``init``: (directions float64 [M, 3], report)."""
    import jax
    import jax.numpy as jnp

    m = u.shape[0]
    t0 = time.perf_counter()
    knn = sample_knn(u, config.knn_k)
    t_knn = time.perf_counter() - t0
    src = jnp.asarray(np.repeat(np.arange(m), knn.shape[1]), jnp.int32)
    dst = jnp.asarray(knn.reshape(-1), jnp.int32)
    neg_src = jnp.repeat(src, config.negatives)
    key = jax.random.key(config.seed)

    def q_of(y, i, j):
        c = jnp.clip(jnp.sum(y[i] * y[j], axis=1), -1 + 1e-6, 1 - 1e-6)
        d = jnp.arccos(c) / config.sigma
        return 1.0 / (1.0 + UMAP_A * d ** (2 * UMAP_B))

    def loss(p, k):
        y = p / jnp.linalg.norm(p, axis=1, keepdims=True)
        neg_dst = jax.random.randint(k, neg_src.shape, 0, m)
        attract = -jnp.mean(jnp.log(q_of(y, src, dst) + 1e-4))
        repel = -jnp.mean(jnp.log(1.0 - q_of(y, neg_src, neg_dst) + 1e-4))
        return attract + config.negatives * repel

    # Adam (Kingma & Ba), written out: five lines do not justify a dependency
    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def step(p, mom, vel, k, t):
        value, g = jax.value_and_grad(loss)(p, k)
        mom = b1 * mom + (1 - b1) * g
        vel = b2 * vel + (1 - b2) * g * g
        lr = config.learning_rate * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        return p - lr * mom / (jnp.sqrt(vel) + eps), mom, vel, value

    p = jnp.asarray(init, jnp.float32)
    mom = jnp.zeros_like(p)
    vel = jnp.zeros_like(p)
    losses = []
    t1 = time.perf_counter()
    for i in range(config.steps):
        key, k = jax.random.split(key)
        p, mom, vel, value = step(p, mom, vel, k, jnp.float32(i + 1))
        if i % 100 == 0 or i == config.steps - 1:
            losses.append(float(value))
            if log is not None:
                done = i + 1
                rate = done / max(time.perf_counter() - t1, 1e-9)
                log(f"sphere_map: layout step {done}/{config.steps}, loss {float(value):.4f}, "
                    f"{rate:.1f} steps/s, ETA {(config.steps - done) / rate:.0f} s")  # fmt: skip
    y = np.asarray(jax.device_get(p), np.float64)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    report = {
        "knn_seconds": round(t_knn, 3),
        "layout_seconds": round(time.perf_counter() - t1, 3),
        "loss_trace": [round(v, 5) for v in losses],
    }
    return y, report


def inverted_file(u: np.ndarray, n_lists: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [C, D] unit float32, list of each row [M]) by k-means (scipy, seeded)."""
    from scipy.cluster.vq import kmeans2

    n_lists = max(1, min(n_lists, u.shape[0]))
    cent, _ = kmeans2(u.astype(np.float64), n_lists, seed=seed, minit="++")
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    cent = cent.astype(np.float32)
    return cent, np.argmax(u @ cent.T, axis=1)


def _landmark_tensors(u, positions, config: SphereMapConfig) -> dict:
    """The landmark arrays of the model, columns grouped by inverted-file list."""
    m = u.shape[0]
    n_lists = config.n_lists or min(256, max(1, m // 128))
    cent, lists = inverted_file(u, n_lists, config.seed)
    order = np.argsort(lists, kind="stable")
    offsets = np.zeros(cent.shape[0] + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(lists, minlength=cent.shape[0]))
    return {
        "landmarks_t": np.ascontiguousarray(u[order].T, np.float32),
        "positions": np.ascontiguousarray(positions[order], np.float32),
        "centroids_t": np.ascontiguousarray(cent.T, np.float32),
        "list_offsets": offsets,
    }


def fit_sphere_map_model(
    sample: np.ndarray,
    sample_prominence: np.ndarray | None = None,
    config: SphereMapConfig = SphereMapConfig(),
    sample_shard: np.ndarray | None = None,
    log=None,
) -> SphereMapModel:
    """Fit the map on ``sample`` [M, D] (already the evenly spaced corpus sample).

    ``sample_prominence`` [M] (default: row norms) centres the score; ``sample_shard`` [M]
    (optional) gives the reference drift (largest drift of one shard's sample rows vs the whole
    sample). ``log``: progress lines (callable) for long fits.
    """
    from sphere_assets.lib.sphere.spreading import SpreadConfig, spread_within_shells

    t0 = time.perf_counter()
    emb = np.asarray(sample)
    check_rows(emb, sample_prominence, "sample")
    dim = emb.shape[1]
    pca = fit_sphere_map(emb, emb.shape[0])
    f = row_features(emb, sample_prominence)
    log_prom, conc = f["log_prominence"], f["concentration"]
    score_centre = np.array([*_robust_centre(log_prom), *_robust_centre(conc)], np.float64)
    score = score_of(score_centre, log_prom, conc, config.spread_weight)
    model = SphereMapModel(
        method=config.method,
        mean=pca.mean.astype(np.float32),
        components=pca.components.astype(np.float32),
        landmarks_t=np.zeros((dim, 0), np.float32),
        positions=np.zeros((0, 3), np.float32),
        centroids_t=np.zeros((dim, 0), np.float32),
        list_offsets=np.zeros(1, np.int64),
        score_centre=score_centre,
        level_centre=np.array(_level_centre(score), np.float64),
        spread_weight=config.spread_weight,
        direction_histogram=np.zeros(12 * DRIFT_NSIDE * DRIFT_NSIDE),
        reference_drift=0.0,
        landmarks_k=config.landmarks_k,
        tau=config.tau,
        n_probe=config.n_probe,
    )
    fit_report: dict = {}
    if config.method == "neighbour" and emb.shape[0] > 2:
        u = unit_rows(emb).astype(np.float32)
        init = map_directions(model, emb)  # the PCA-3 map starts the layout
        layout, fit_report = _free_layout(u, init, config, log)
        t1 = time.perf_counter()
        opened = spread_within_shells(
            layout, np.zeros(layout.shape[0], np.int64),
            SpreadConfig(radius_deg=config.layout_spread_deg,
                         max_passes=config.layout_spread_passes, seed=config.seed),
        )  # fmt: skip
        fit_report.update(
            layout_spread_seconds=round(time.perf_counter() - t1, 3),
            layout_spread_moves=opened.moved_points,
            layout_pairs_left=opened.pairs_left,
        )
        model = replace(model, **_landmark_tensors(u, opened.unit, config))
    unit = map_directions(model, emb)
    model = replace(model, direction_histogram=direction_histogram(unit))
    ref = 0.0
    if sample_shard is not None:
        ref = max(
            (drift(model, unit[sample_shard == s]) for s in np.unique(sample_shard)), default=0.0
        )
    report = {
        "config": asdict(config),
        "sample_rows": int(emb.shape[0]),
        "dimension": dim,
        **fit_report,
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    return replace(model, reference_drift=float(ref), report=report)
