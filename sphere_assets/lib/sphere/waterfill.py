r"""Water-filled shell placement of patch embeddings (pure: numpy + JAX, no Dagster).

Every embedding row ``e_i`` (dimension D) with prominence ``p_i`` gets a place
``(shell_i, r_i, theta_i, phi_i)`` on a set of S concentric spheres ("shells").

Shells, capacities, targets
---------------------------
* Radii, square-root spaced between ``r_min`` and ``r_max``::

      t_s = s / max(S - 1, 1),   r_s = r_min + (r_max - r_min) * sqrt(t_s),   s = 0..S-1

  (the spacing shrinks outward, where shells are larger).
* Capacity fractions ``c_s = r_s^kappa / sum_j r_j^kappa`` (kappa = 1.5 by default). They are
  scale-free, so per-shard placements that each match their own N add up to a balanced whole.
* Integer targets by the largest-remainder (Hamilton) rule: ``q_s = N c_s``,
  ``n_s = floor(q_s)``, then the ``N - sum_s n_s`` shells with the largest fractional parts
  ``q_s - floor(q_s)`` get one more (ties: lower shell index first). ``sum_s n_s = N`` exactly.
* Balance criterion (the asset check): ``|count_s - n_s| <= max(tol_min, tol_frac * n_s)``
  with ``tol_min = 1``, ``tol_frac = 0.01``.

Features of an embedding
------------------------
* ``a_i = log(max(p_i, 1e-30))``: log prominence (heavy-tailed norms become additive).
* Concentration of the unit vector ``u_i = e_i / |e_i|``:
  ``k_i = log(D * sum_d u_id^4) = log(D * sum_d e_id^4 / (sum_d e_id^2)^2)`` in ``[0, log D]``
  (0 = energy spread evenly over all D coordinates, log D = one coordinate carries it all).
* Information score ``score_i = z(a)_i + w_spread * z(k)_i`` with ``z(x) = (x - mean x)/std x``
  over the N rows (0 when std = 0).

Angles: PCA-3 map to S^2 (deterministic)
---------------------------------------
* Sample rows ``j_m = floor((m + 1/2) N / M)``, ``m < M = min(N, pca_sample)`` (evenly spaced).
* ``mu`` = mean of the sample's unit vectors; ``V`` (D x 3) = top-3 right singular vectors of
  the centred sample (eigenvectors of its D x D scatter matrix), each column's sign fixed so its largest-|.| entry is positive; rank
  deficiency is completed with the first canonical axes not yet spanned (Gram-Schmidt).
* ``y_i = u_i V - mu V``; direction ``n_i = y_i / |y_i|`` (north pole ``(0,0,1)`` when
  ``|y_i| <= 1e-12``); ``theta = arccos(n_z)`` in [0, pi], ``phi = atan2(n_y, n_x) mod 2 pi`` in
  [0, 2 pi). Nearby unit vectors map to nearby directions, so semantic neighbours start as
  angular neighbours.

Radial start (rank based)
-------------------------
Rank ``rho_i`` of ``score_i`` among the N rows, exact ties broken by a seeded uniform
``v_i`` in [0, 1); ``shell_i = #{s : C_s <= rho_i}`` with cumulative targets
``C_s = sum_{j<=s} n_j`` (the point of rank rho goes to the shell whose range holds it).

* ``N <= exact_rank_limit``: exact ranks (one sort) -- the start is balanced by construction.
* Larger N: bucketed ranks, no full sort. Robust level ``t_i = Phi((score_i - med) / s)``
  (``med``, ``s`` = median and IQR / 1.349 of an evenly spaced sample of 65536 scores, std or 1
  as fallbacks; Phi = standard normal CDF), bucket ``b_i = floor(K t_i)`` with
  ``K = rank_bins``; with bucket counts ``H_b`` and ``E_b = sum_{b'<b} H_b'``:
  ``rho_i = E_{b_i} + v_i H_{b_i}``. Ranks are exact between buckets and uniformly random
  inside one, so every shell count is exact in expectation with a binomial error of at most
  ``sqrt(H_b) / 2`` per boundary bucket; the dynamics remove that residue.

Dynamics (``method="lateral"``: one jitted ``lax.while_loop``)
-------------------------------------------------------------
State: shell, direction, grid cell, a "settled" flag, per-point promotion/demotion/lateral
counts. Padding rows (to a bucketed static length) live in a dummy shell S and never move.
Each pass draws fresh keys (``key, k_sel, k_dir, k_cap = split(key, 4)``):

1. Occupancy ``m_s``, settled points ``q_s`` and the room left for movable (unsettled)
   points ``t_s = max(n_s - q_s, 0)``, cumulative ``T_s = sum_{j<=s} t_j``.
2. Scale-free prominence inside a shell: ``z_i = (a_i - mean_s a) / std_s a`` (0 when
   std = 0), binned per shell into B bins over ``[-z_clip, z_clip]`` (clipped).
3. Overflow cascade (water-filling): the movable points are ordered by (shell, z bin,
   fresh uniform w_i) -- rank ``rho_i = E[s_i, b_i] + w_i H[s_i, b_i]`` with ``H`` the
   (shell, bin) histogram and ``E`` its exclusive prefix sum in that order -- and the order
   is cut by ``T``: ``goal_i = #{s : T_s <= rho_i}``. An over-full shell thereby overflows its
   *most* prominent points outward (into the next shell, and further when that one is full
   too), an under-full shell draws in the *least* prominent points of the shells above
   (demotions). Exact in expectation; only boundary bins are split at random, so a pass
   leaves at most a few points of noise per shell.
4. Lateral search before promotion (``goal_i = s_i + 1``; a point the cascade carries
   several shells outward is not a marginal overflow and moves directly). Per-shell angular density from the
   cached SH basis: histogram of the shell's points on the equiangular grid (cells = nearest
   node, ``sht.grid_cell``), divided by the cell areas (quadrature weights) -> ``analysis``
   -> Gaussian low-pass ``g_l = exp(-(l / l_smooth)^2 / 2)`` -> ``synthesis`` -> relative
   density ``rho_s = 4 pi f_s / max(m_s, 1)`` (1 = uniform). A candidate at direction n scores
   ``n_dirs`` directions ``cos(delta) n + sin(delta)(cos a_k t1 + sin a_k t2)`` (t1, t2 a
   tangent frame, ``a_k = 2 pi (k + w') / n_dirs``, w' fresh uniform); if the best one lowers
   the density by ``(rho(n) - rho_best) / max(rho(n), 1e-3) >= lateral_threshold`` the point
   moves there instead of leaving the shell and becomes *settled* (it keeps that shell for
   good: it already relieved the crowding); otherwise it moves to ``goal_i``. Caps (in
   expectation, by a fresh uniform per candidate): per shell and pass at most
   ``lateral_share`` of the shell's promotion candidates move laterally, and settled points
   never exceed ``lateral_share * n_s``; so every pass still promotes most of the outward
   flow and the next pass re-ranks the rest (the excess left by lateral movers goes to the
   next most prominent points). Candidates beyond a static buffer (``lateral_buffer``
   slots) wait for the next pass; a pass without candidates skips the SH step.
5. Stop when every shell satisfies the balance criterion or after ``max_passes``.

``promotions`` / ``demotions`` count shell steps outward / inward per point, so
``shell - start_shell = promotions - demotions``. The rank start leaves only bucket noise, so
0-2 passes are typical; a warm start (``initial_shell``) far from balance converges in a few
passes, because step 3 moves points across as many shells as needed at once. Reported:
passes, promotions, demotions, lateral moves, converged, max |count - target| after every
pass. With ``devices`` the per-point arrays are sharded over a 1-D mesh of local devices
(XLA partitions the passes); float sums then run in another order, so individual z-bin edge
decisions can differ from a one-device run (balance is the same rule).

Quality: neighbourhood preservation
-----------------------------------
``neighbourhood_recall``: for Q query rows (evenly spaced), recall@k = the fraction of the k
angular nearest neighbours on the sphere that are among the k cosine nearest neighbours in
embedding space (tie-aware: cosine >= the k-th largest cosine), averaged (self excluded).

Exports
-------
``librarian_export`` (patch bytes -> r, theta, phi) and ``lvm_sequences`` (windows of
``window`` consecutive patch embeddings of one article -> the next one) build plain tensors.

Bad input: NaN/inf embeddings or prominences, or negative prominences, raise ``ValueError``
naming the offending rows (by key when keys are given).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr
from threadpoolctl import threadpool_limits

from sphere_assets.lib.sphere import sht

LOG_FLOOR = 1e-30
NORTH_POLE = np.array([0.0, 0.0, 1.0])
FEATURE_CHUNK = 16384  # rows per feature chunk (a few MB: stays in cache between the sums)
LEVEL_SAMPLE = 65536  # scores sampled for the robust centre/scale of the bucketed ranks
TRACE_PASSES = 64  # per-pass max |count - target| is recorded for the first 64 passes


# ---------------------------------------------------------------------------------------------
# configuration and result


@dataclass(frozen=True)
class WaterfillConfig:
    """Every knob of the placement (all documented in the module docstring)."""

    n_shells: int = 128
    r_min: float = 1.0
    r_max: float = 2.0
    kappa: float = 1.5
    spread_weight: float = 0.5
    pca_sample: int = 16384
    exact_rank_limit: int = 65536
    rank_bins: int = 65536
    band_limit: int = 32
    l_smooth: float = 6.0
    n_dirs: int = 8
    lateral_step: float = 0.15
    lateral_threshold: float = 0.2
    lateral_share: float = 0.25
    lateral_buffer: int = 0  # 0 = automatic: max(min(N, 4096), N // 8)
    z_bins: int = 256
    z_clip: float = 4.0
    max_passes: int = 32
    tol_frac: float = 0.01
    tol_min: float = 1.0
    seed: int = 0
    blas_threads: int = 1  # BLAS threads for the skinny feature GEMMs (0 = leave as is)

    def __post_init__(self):
        if self.n_shells < 1:
            raise ValueError(f"waterfill: n_shells must be >= 1, got {self.n_shells}")
        if not (0.0 < self.r_min < self.r_max) or not math.isfinite(self.r_max):
            raise ValueError(f"waterfill: need 0 < r_min < r_max, got {self.r_min}, {self.r_max}")
        if self.n_dirs < 1 or self.z_bins < 2 or self.max_passes < 0 or self.rank_bins < 2:
            raise ValueError("waterfill: n_dirs >= 1, z_bins >= 2, rank_bins >= 2, max_passes >= 0")
        if not 0.0 <= self.lateral_share <= 1.0:
            raise ValueError(
                f"waterfill: lateral_share must be in [0, 1], got {self.lateral_share}"
            )
        if self.pca_sample < 1 or self.exact_rank_limit < 0:
            raise ValueError("waterfill: pca_sample >= 1 and exact_rank_limit >= 0 required")


@dataclass
class Placement:
    """Per-row placement plus per-shell balance and run statistics."""

    shell: np.ndarray  # int32 [N]
    r: np.ndarray  # float32 [N]
    theta: np.ndarray  # float32 [N], [0, pi]
    phi: np.ndarray  # float32 [N], [0, 2 pi)
    xyz: np.ndarray  # float32 [N, 3] = r * unit
    unit: np.ndarray  # float32 [N, 3] final direction
    start_unit: np.ndarray  # float32 [N, 3] plain PCA projection (before dynamics)
    start_shell: np.ndarray  # int32 [N] rank start
    prominence: np.ndarray  # float32 [N]
    promotions: np.ndarray  # int32 [N]
    demotions: np.ndarray  # int32 [N]
    lateral_moves: np.ndarray  # int32 [N]
    radii: np.ndarray  # float64 [S]
    targets: np.ndarray  # int64 [S]
    counts: np.ndarray  # int64 [S]
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# shells, capacities, targets, balance


def shell_radii(n_shells: int, r_min: float, r_max: float) -> np.ndarray:
    """r_s = r_min + (r_max - r_min) sqrt(s / max(S-1, 1))."""
    t = np.arange(n_shells, dtype=np.float64) / max(n_shells - 1, 1)
    return r_min + (r_max - r_min) * np.sqrt(t)


def capacity_fractions(radii: np.ndarray, kappa: float) -> np.ndarray:
    """c_s = r_s^kappa / sum_j r_j^kappa (sums to 1)."""
    w = np.asarray(radii, dtype=np.float64) ** kappa
    return w / w.sum()


def largest_remainder(fractions: np.ndarray, n: int) -> np.ndarray:
    """Integer targets summing to n: floors of n*c, then +1 by largest fractional part."""
    quota = np.asarray(fractions, dtype=np.float64) * n
    base = np.floor(quota).astype(np.int64)
    short = int(n - base.sum())
    if short:
        order = np.argsort(-(quota - base), kind="stable")  # ties: lower shell first
        base[order[:short]] += 1
    return base


def shell_targets(n: int, config: WaterfillConfig) -> tuple[np.ndarray, np.ndarray]:
    """(radii [S], integer targets [S]) for n points."""
    radii = shell_radii(config.n_shells, config.r_min, config.r_max)
    return radii, largest_remainder(capacity_fractions(radii, config.kappa), n)


def shell_tolerance(
    targets: np.ndarray, tol_frac: float = 0.01, tol_min: float = 1.0
) -> np.ndarray:
    """Allowed |count - target| per shell: max(tol_min, tol_frac * target)."""
    return np.maximum(tol_min, tol_frac * np.asarray(targets, dtype=np.float64))


def balance_report(counts, targets, tol_frac: float = 0.01, tol_min: float = 1.0) -> dict:
    """Balance figures of a placement (the asset check uses ``ok``)."""
    counts = np.asarray(counts, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    dev = np.abs(counts - targets)
    tol = shell_tolerance(targets, tol_frac, tol_min)
    bad = np.nonzero(dev > tol)[0]
    return {
        "ok": bool(bad.size == 0),
        "max_abs_deviation": int(dev.max()) if dev.size else 0,
        "mean_abs_deviation": float(dev.mean()) if dev.size else 0.0,
        "max_relative_deviation": float((dev / np.maximum(targets, 1)).max()) if dev.size else 0.0,
        "shells_out_of_tolerance": [int(s) for s in bad[:20]],
        "n_shells_out_of_tolerance": int(bad.size),
    }


def shell_of_radius(r: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Index of the nearest shell radius (midpoint boundaries)."""
    mid = 0.5 * (radii[1:] + radii[:-1])
    return np.searchsorted(mid, np.asarray(r, dtype=np.float64), side="right").astype(np.int32)


# ---------------------------------------------------------------------------------------------
# validation and features


def _name_rows(rows: np.ndarray, row_keys: Sequence | None, limit: int = 10) -> str:
    shown = [repr(row_keys[int(i)]) if row_keys is not None else str(int(i)) for i in rows[:limit]]
    more = f" (+{rows.size - limit} more)" if rows.size > limit else ""
    label = "rows (keys)" if row_keys is not None else "rows"
    return f"{label} {', '.join(shown)}{more}"


def check_shapes(embeddings: np.ndarray, prominence, row_keys) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"waterfill: embeddings must be 2-D [N, D], got shape {embeddings.shape}")
    n = embeddings.shape[0]
    if row_keys is not None and len(row_keys) != n:
        raise ValueError(f"waterfill: {len(row_keys)} row keys for {n} embeddings")
    if prominence is not None and np.shape(prominence) != (n,):
        raise ValueError(f"waterfill: prominence shape {np.shape(prominence)} != ({n},)")


def check_prominence(prominence, row_keys=None) -> None:
    """Raise ValueError naming rows whose prominence is NaN, inf or negative."""
    prom = np.asarray(prominence)
    rows = np.nonzero(~np.isfinite(prom) | (prom < 0))[0]
    if rows.size:
        raise ValueError(
            f"waterfill: {rows.size} prominence value(s) are NaN/inf/negative: "
            f"{_name_rows(rows, row_keys)}"
        )


def validate_inputs(embeddings, prominence=None, row_keys=None) -> None:
    """Raise ValueError naming rows whose embedding/prominence is not finite (or negative)."""
    emb = np.asarray(embeddings)
    check_shapes(emb, prominence, row_keys)
    bad = [
        np.nonzero(~np.isfinite(emb[i : i + FEATURE_CHUNK]).all(axis=1))[0] + i
        for i in range(0, emb.shape[0], FEATURE_CHUNK)
    ]
    bad = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if bad.size:
        raise ValueError(
            f"waterfill: {bad.size} embedding row(s) contain NaN/inf: {_name_rows(bad, row_keys)}"
        )
    if prominence is not None:
        check_prominence(prominence, row_keys)


def evenly_spaced(n: int, m: int) -> np.ndarray:
    """min(m, n) row indices floor((j + 1/2) n / m): a deterministic systematic sample."""
    m = min(m, n)
    return ((np.arange(m, dtype=np.float64) + 0.5) * n / max(m, 1)).astype(np.int64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass(frozen=True)
class SphereMap:
    """PCA-3 map: n = normalize((u - mean) @ components)."""

    mean: np.ndarray  # float64 [D]
    components: np.ndarray  # float64 [D, 3], orthonormal columns (zero columns when D < 3)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[idx, np.arange(components.shape[1])])
    return components * np.where(signs == 0, 1.0, signs)


def _complete_basis(cols: list[np.ndarray], dim: int, want: int) -> np.ndarray:
    """Extend orthonormal columns with canonical axes (Gram-Schmidt) up to `want` columns."""
    out = list(cols)
    for axis in range(dim):
        if len(out) >= want:
            break
        v = np.zeros(dim)
        v[axis] = 1.0
        for c in out:
            v -= (c @ v) * c
        n = np.linalg.norm(v)
        if n > 1e-8:
            out.append(v / n)
    while len(out) < want:  # D < 3: the missing directions are identically zero
        out.append(np.zeros(dim))
    return np.stack(out, axis=1)


def fit_sphere_map(embeddings: np.ndarray, sample_size: int = 16384) -> SphereMap:
    """PCA-3 of unit vectors on an evenly spaced sample (see module docstring)."""
    emb = np.asarray(embeddings)
    n, dim = emb.shape
    if n == 0:
        return SphereMap(np.zeros(dim), _complete_basis([], dim, 3))
    with np.errstate(invalid="ignore", over="ignore"):
        u = unit_rows(emb[evenly_spaced(n, sample_size)])
    u = u[np.isfinite(u).all(axis=1)]  # non-finite rows are rejected by the feature pass
    if u.shape[0] == 0:
        return SphereMap(np.zeros(dim), _complete_basis([], dim, 3))
    mean = u.mean(axis=0)
    centred = u - mean
    cols: list[np.ndarray] = []
    if centred.shape[0] > 1 and np.abs(centred).max() > 0:
        # right singular vectors of the centred sample = eigenvectors of its D x D scatter
        evals, evecs = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(-evals, kind="stable")
        evals, evecs = evals[order], evecs[:, order]
        keep = evals > max(evals[0] * 1e-12, 1e-24)
        cols = [evecs[:, i] for i in range(min(3, int(keep.sum())))]
    comps = _complete_basis(cols, dim, 3)
    return SphereMap(mean=mean, components=_fix_signs(comps))


def embedding_features(
    embeddings: np.ndarray, sphere_map: SphereMap, row_keys: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunked pass over the rows: (norm [N], concentration k [N], direction n [N, 3]).

    Also the NaN/inf check: a row with a NaN/inf element has a non-finite sum of squares;
    flagged rows are re-checked element-wise and either named in a ValueError or (finite rows
    whose float32 squares overflow) recomputed in float64.
    """
    emb = np.asarray(embeddings)
    n, dim = emb.shape
    sq = np.empty(n, np.float64)
    quad = np.empty(n, np.float64)
    proj = np.empty((n, 3), np.float64)
    comps32 = sphere_map.components.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, FEATURE_CHUNK):
            x = np.asarray(emb[start : start + FEATURE_CHUNK], dtype=np.float32)
            sl = slice(start, start + x.shape[0])
            sq[sl] = np.einsum("ij,ij->i", x, x)
            x2 = x * x
            quad[sl] = np.einsum("ij,ij->i", x2, x2)
            proj[sl] = x @ comps32
    flagged = np.nonzero(~(np.isfinite(sq) & np.isfinite(quad)))[0]
    if flagged.size:
        x64 = np.asarray(emb[flagged], dtype=np.float64)
        nonfinite = ~np.isfinite(x64).all(axis=1)
        if nonfinite.any():
            raise ValueError(
                f"waterfill: {int(nonfinite.sum())} embedding row(s) contain NaN/inf: "
                f"{_name_rows(flagged[nonfinite], row_keys)}"
            )
        sq[flagged] = np.einsum("ij,ij->i", x64, x64)
        quad[flagged] = np.einsum("ij,ij->i", x64**2, x64**2)
        proj[flagged] = x64 @ sphere_map.components
    norm = np.sqrt(sq)
    pos = norm > 0
    safe_sq = np.where(pos, sq, 1.0)
    conc = np.log(np.maximum(np.where(pos, dim * quad / (safe_sq * safe_sq), 1.0), 1.0))
    y = np.where(pos[:, None], proj / np.where(pos, norm, 1.0)[:, None], 0.0)
    y -= sphere_map.mean @ sphere_map.components
    yn = np.linalg.norm(y, axis=1, keepdims=True)
    ok = yn > 1e-12
    unit = np.where(ok, y / np.where(ok, yn, 1.0), NORTH_POLE)
    return norm, conc, unit


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over all rows; zeros when std == 0 or the array is empty."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def information_score(log_prominence: np.ndarray, concentration: np.ndarray, w_spread: float):
    """score = z(log prominence) + w_spread * z(concentration)."""
    return zscore(log_prominence) + w_spread * zscore(concentration)


def score_level(score: np.ndarray) -> np.ndarray:
    """t = Phi((score - median) / s) in [0, 1] with a robust scale from an evenly spaced sample."""
    sample = score[evenly_spaced(score.size, LEVEL_SAMPLE)]
    q25, med, q75 = np.percentile(sample, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = sample.std()
    if not scale > 0:
        scale = 1.0
    return ndtr((score - med) / scale)


def angles_of(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta in [0, pi], phi in [0, 2 pi) of unit vectors (float64)."""
    u = np.asarray(unit, dtype=np.float64)
    theta = np.arccos(np.clip(u[:, 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2 * np.pi)
    return theta, np.where(phi >= 2 * np.pi, 0.0, phi)


@dataclass
class PreparedInputs:
    """Per-row inputs of the dynamics (shared by the lateral and THRML methods)."""

    prominence: np.ndarray  # float64 [N]
    log_prominence: np.ndarray  # float64 [N]
    concentration: np.ndarray  # float64 [N]
    score: np.ndarray  # float64 [N]
    unit: np.ndarray  # float64 [N, 3] PCA-3 start direction
    theta: np.ndarray  # float64 [N]
    phi: np.ndarray  # float64 [N]
    sphere_map: SphereMap


def prepare_inputs(
    embeddings, prominence=None, config: WaterfillConfig = WaterfillConfig(), row_keys=None
) -> PreparedInputs:
    """Validate rows and compute prominence, information score and start direction."""
    emb = np.asarray(embeddings)
    check_shapes(emb, prominence, row_keys)
    if prominence is not None:
        check_prominence(prominence, row_keys)
    smap = fit_sphere_map(emb, config.pca_sample)
    norm, conc, unit = embedding_features(emb, smap, row_keys)
    prom = norm if prominence is None else np.asarray(prominence, dtype=np.float64)
    log_prom = np.log(np.maximum(prom, LOG_FLOOR))
    score = information_score(log_prom, conc, config.spread_weight)
    theta, phi = angles_of(unit)
    return PreparedInputs(prom, log_prom, conc, score, unit, theta, phi, smap)


@lru_cache(maxsize=8)
def cached_plan(basis: sht.ShBasis, device=None) -> sht.ShtPlan:
    """float32 device tables of a basis (ShBasis hashes by identity), built once per device."""
    return sht.sht_plan(basis, dtype=np.float32, device=device)


@lru_cache(maxsize=8)
def cached_basis(L: int) -> sht.ShBasis:
    """One ShBasis per band limit per process (building it costs a Legendre recursion)."""
    return sht.build_basis(L)


# ---------------------------------------------------------------------------------------------
# JAX program: rank start + water-filling passes


@dataclass(frozen=True)
class _GridShape:
    """The static part of an ShBasis that ``sht.grid_cell`` needs (hashable jit argument)."""

    n_theta: int
    n_phi: int


@dataclass(frozen=True)
class _Static:
    n_pad: int
    n_shells: int
    exact_start: bool
    rank_bins: int
    z_bins: int
    z_clip: float
    n_dirs: int
    buffer: int


def _bucket(n: int) -> int:
    """Static padded length: >= n, multiple of 2^max(10, floor(log2 n) - 3) (<= 12.5% waste)."""
    if n <= 1024:
        return 1024
    g = 1 << max(10, int(math.log2(n)) - 3)
    return -(-n // g) * g


def _lowpass_taper(L: int, l_smooth: float) -> np.ndarray:
    degree = np.floor(np.sqrt(np.arange(L * L))).astype(np.float64)
    return np.exp(-0.5 * (degree / l_smooth) ** 2).astype(np.float32)


def _cell_of(grid: _GridShape, unit):
    """Flat grid cell (it * n_phi + ip) of unit vectors (JAX)."""
    theta = jnp.arccos(jnp.clip(unit[..., 2], -1.0, 1.0))
    phi = jnp.mod(jnp.arctan2(unit[..., 1], unit[..., 0]), 2 * jnp.pi)
    it, ip = sht.grid_cell(grid, theta, phi)
    return (it * grid.n_phi + ip).astype(jnp.int32)


def shell_density(plan, grid: _GridShape, shell, cell, weight, counts, taper, area, n_shells):
    """Relative SH-smoothed angular density per shell [S, cells] (1 = uniform).

    histogram on the grid / cell area -> analysis -> taper g_l -> synthesis -> * 4pi / m_s.
    """
    n_cells = grid.n_theta * grid.n_phi
    hist = jax.ops.segment_sum(
        weight, shell * n_cells + cell, num_segments=(n_shells + 1) * n_cells
    )
    hist = hist[: n_shells * n_cells].reshape(n_shells, grid.n_theta, grid.n_phi)
    coeffs = sht.analysis(plan, hist / area[None, :, None]) * taper[None, :]
    smooth = sht.synthesis(plan, coeffs).astype(jnp.float32)
    rel = smooth * (4 * jnp.pi / jnp.maximum(counts, 1.0))[:, None, None]
    return rel.reshape(n_shells, n_cells)


def _rank_start(level, valid, tie, cum_targets, st: _Static):
    """Rank start (module docstring): exact ranks, or bucketed ranks for large N."""
    f32 = jnp.float32
    if st.exact_start:
        order = jnp.lexsort((tie, level, (~valid).astype(jnp.int32)))  # padding last
        rank = jnp.zeros(st.n_pad, f32).at[order].set(jnp.arange(st.n_pad, dtype=f32))
    else:
        bucket = jnp.clip(jnp.floor(level * st.rank_bins), 0, st.rank_bins - 1).astype(jnp.int32)
        hist = jax.ops.segment_sum(valid.astype(f32), bucket, num_segments=st.rank_bins)
        before = jnp.cumsum(hist) - hist
        rank = before[bucket] + tie * hist[bucket]
    shell = jnp.searchsorted(cum_targets, rank, side="right")
    shell = jnp.minimum(shell, st.n_shells - 1).astype(jnp.int32)
    return jnp.where(valid, shell, st.n_shells)


def _tangent_frame(u):
    ref = jnp.where(
        (jnp.abs(u[:, 2]) < 0.9)[:, None],
        jnp.array([0.0, 0.0, 1.0], jnp.float32),
        jnp.array([1.0, 0.0, 0.0], jnp.float32),
    )
    t1 = ref - jnp.sum(ref * u, axis=1, keepdims=True) * u
    t1 = t1 / jnp.linalg.norm(t1, axis=1, keepdims=True)
    return t1, jnp.cross(u, t1)


def _lateral_step(
    s, shell, counts, targets_f, settled_cnt, n_cand, in_buf, k_dir, k_cap, dyn, grid, st: _Static
):
    """Lateral search of the promotion candidates in the buffer; returns the movers' updates."""
    f32 = jnp.float32
    S = st.n_shells
    (idx,) = jnp.nonzero(in_buf, size=st.buffer, fill_value=st.n_pad)
    slot_ok = idx < st.n_pad
    density = shell_density(
        dyn["plan"], grid, shell, s["cell"], dyn["valid_f"], counts, dyn["taper"], dyn["area"], S
    ).reshape(-1)
    n_cells = grid.n_theta * grid.n_phi
    cu = jnp.take(s["unit"], idx, axis=0, mode="clip")
    cs = jnp.minimum(jnp.take(shell, idx, mode="clip"), S - 1)
    cc = jnp.take(s["cell"], idx, mode="clip")
    rho_cur = density[cs * n_cells + cc]
    t1, t2 = _tangent_frame(cu)
    offset = jax.random.uniform(k_dir, (st.buffer, 1), f32)
    ang = (2 * jnp.pi / st.n_dirs) * (jnp.arange(st.n_dirs, dtype=f32)[None, :] + offset)
    c, sn = jnp.cos(dyn["lateral_step"]), jnp.sin(dyn["lateral_step"])
    ring = jnp.cos(ang)[..., None] * t1[:, None, :] + jnp.sin(ang)[..., None] * t2[:, None, :]
    dirs = c * cu[:, None, :] + sn * ring
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    dcell = _cell_of(grid, dirs.reshape(-1, 3)).reshape(st.buffer, st.n_dirs)
    rho = density[cs[:, None] * n_cells + dcell]
    best = jnp.argmin(rho, axis=1)
    rho_best = jnp.take_along_axis(rho, best[:, None], axis=1)[:, 0]
    gain = (rho_cur - rho_best) / jnp.maximum(rho_cur, 1e-3)
    wants = slot_ok & (gain >= dyn["lateral_threshold"])
    # caps (in expectation): lateral_share of the shell's promotion candidates this pass, and
    # settled points never exceed lateral_share of the shell's target
    n_wants = jax.ops.segment_sum(wants.astype(f32), cs, num_segments=S)
    room = jnp.maximum(dyn["lateral_share"] * targets_f - settled_cnt, 0.0)
    quota = jnp.minimum(dyn["lateral_share"] * n_cand, room)
    accept = jnp.minimum(1.0, quota / jnp.maximum(n_wants, 1.0))
    mover = wants & (jax.random.uniform(k_cap, (st.buffer,), f32) < accept[cs])
    new_u = jnp.take_along_axis(dirs, best[:, None, None], axis=1)[:, 0]
    new_c = jnp.take_along_axis(dcell, best[:, None], axis=1)[:, 0]
    moved = jnp.zeros(st.n_pad, bool).at[idx].set(mover, mode="drop")
    unit = s["unit"].at[idx].set(jnp.where(mover[:, None], new_u, cu), mode="drop")
    cell = s["cell"].at[idx].set(jnp.where(mover, new_c, cc), mode="drop")
    return moved, unit, cell


@partial(jax.jit, static_argnames=("grid", "st"))
def _waterfill_program(
    level, log_prom, unit, cell, valid, init_shell, use_initial, targets, tol, cum_targets, key,
    dyn,
    *, grid: _GridShape, st: _Static,
):  # fmt: skip
    S, B = st.n_shells, st.z_bins
    f32 = jnp.float32
    valid_f = valid.astype(f32)
    dyn = {**dyn, "valid_f": valid_f}
    key, k_tie = jax.random.split(key)
    tie = jax.random.uniform(k_tie, (st.n_pad,), f32)
    shell0 = jnp.where(
        use_initial & valid, init_shell, _rank_start(level, valid, tie, cum_targets, st)
    ).astype(jnp.int32)
    targets_f = targets.astype(f32)

    def occupancy(shell):
        return jax.ops.segment_sum(valid_f, shell, num_segments=S + 1)[:S]

    def balanced(counts):
        return jnp.all(jnp.abs(counts - targets_f) <= tol)

    zero_i = jnp.zeros(st.n_pad, jnp.int32)
    state0 = dict(
        it=jnp.int32(0),
        key=key,
        shell=shell0,
        unit=unit,
        cell=cell,
        settled=jnp.zeros(st.n_pad, bool),
        prom=zero_i,
        dem=zero_i,
        lat=zero_i,
        done=balanced(occupancy(shell0)),
        trace=jnp.full((TRACE_PASSES,), -1.0, f32),
    )

    def body(s):
        key, k_sel, k_dir, k_cap = jax.random.split(s["key"], 4)
        shell = s["shell"]
        movable = valid & ~s["settled"]
        movable_f = movable.astype(f32)
        counts = occupancy(shell)
        settled_cnt = counts - jax.ops.segment_sum(movable_f, shell, num_segments=S + 1)[:S]
        t_eff = jnp.maximum(targets_f - settled_cnt, 0.0)  # room left for movable points

        # scale-free prominence inside each shell: z against the shell's mean and std
        cnt = jnp.maximum(counts, 1.0)
        mean = jax.ops.segment_sum(log_prom * valid_f, shell, num_segments=S + 1)[:S] / cnt
        mean2 = jax.ops.segment_sum(log_prom * log_prom * valid_f, shell, num_segments=S + 1)[:S]
        sd = jnp.sqrt(jnp.maximum(mean2 / cnt - mean * mean, 0.0))
        sh_c = jnp.minimum(shell, S - 1)
        mu_i, sd_i = mean[sh_c], sd[sh_c]
        z = jnp.where(sd_i > 1e-6 * (1.0 + jnp.abs(mu_i)), (log_prom - mu_i) / sd_i, 0.0)
        zbin = jnp.floor((z + st.z_clip) * (B / (2 * st.z_clip)))
        zbin = jnp.clip(zbin, 0, B - 1).astype(jnp.int32)

        # overflow cascade: order movable points by (shell, z bin, uniform) and cut the order
        # by the cumulative room -> the most prominent of an over-full shell flow outward,
        # an under-full shell draws in the least prominent from above (multi-shell if needed)
        hist = jax.ops.segment_sum(movable_f, shell * B + zbin, num_segments=(S + 1) * B)
        hist = hist.reshape(S + 1, B)
        before = jnp.cumsum(hist.reshape(-1)) - hist.reshape(-1)  # exclusive, shell-major
        slot = shell * B + zbin
        w = jax.random.uniform(k_sel, (st.n_pad,), f32)
        rank = before[slot] + w * hist.reshape(-1)[slot]
        goal = jnp.searchsorted(jnp.cumsum(t_eff), rank, side="right")
        goal = jnp.where(movable, jnp.minimum(goal, S - 1), shell).astype(jnp.int32)
        # a lateral move is a local relief: only one-shell promotions search (a point carried
        # several shells outward by the cascade is not a marginal overflow of its shell)
        one_up = goal == shell + 1

        # lateral search before promotion (candidates compacted into a static buffer)
        n_cand = jax.ops.segment_sum(one_up.astype(f32), sh_c, num_segments=S)
        in_buf = one_up & (jnp.cumsum(one_up.astype(jnp.int32)) <= st.buffer)
        moved, unit_new, cell_new = jax.lax.cond(
            jnp.any(in_buf),
            lambda: _lateral_step(
                s,
                shell,
                counts,
                targets_f,
                settled_cnt,
                n_cand,
                in_buf,
                k_dir,
                k_cap,
                dyn,
                grid,
                st,
            ),
            lambda: (jnp.zeros(st.n_pad, bool), s["unit"], s["cell"]),
        )
        # one-shell candidates beyond the buffer wait for the next pass
        new_shell = jnp.where(moved | (one_up & ~in_buf), shell, goal)
        step = new_shell - shell
        counts_new = occupancy(new_shell)
        dev = jnp.max(jnp.abs(counts_new - targets_f))
        return dict(
            it=s["it"] + 1,
            key=key,
            shell=new_shell,
            unit=unit_new,
            cell=cell_new,
            settled=s["settled"] | moved,
            prom=s["prom"] + jnp.maximum(step, 0),
            dem=s["dem"] + jnp.maximum(-step, 0),
            lat=s["lat"] + moved.astype(jnp.int32),
            done=balanced(counts_new),
            trace=s["trace"].at[s["it"]].set(dev, mode="drop"),
        )

    def cond(s):
        return (s["it"] < dyn["max_passes"]) & ~s["done"]

    return jax.lax.while_loop(cond, body, state0), shell0


# ---------------------------------------------------------------------------------------------
# public entry point


def _empty_placement(config: WaterfillConfig) -> Placement:
    radii, targets = shell_targets(0, config)
    z_i, z_f, z_3 = np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 3), np.float32)
    stats = {
        "method": "lateral",
        "n_points": 0,
        "passes": 0,
        "promotions": 0,
        "demotions": 0,
        "lateral_moves": 0,
        "converged": True,
        "excess_trace": [],
        "seconds": 0.0,
        **balance_report(np.zeros_like(targets), targets, config.tol_frac, config.tol_min),
    }
    return Placement(z_i, z_f, z_f, z_f, z_3, z_3, z_3, z_i, z_f, z_i, z_i, z_i, radii, targets,
                     np.zeros_like(targets), stats)  # fmt: skip


def place(
    embeddings,
    prominence=None,
    *,
    config: WaterfillConfig = WaterfillConfig(),
    basis: sht.ShBasis | None = None,
    row_keys: Sequence | None = None,
    initial_shell: np.ndarray | None = None,
    device=None,
    devices: Sequence | None = None,
) -> Placement:
    """Water-filled placement (``method="lateral"``) of embedding rows; see module docstring.

    ``prominence`` defaults to the rows' L2 norm. ``basis`` is the cached SH basis (built for
    ``config.band_limit`` when omitted; a given basis decides the band limit). ``initial_shell``
    replaces the rank start (warm start, e.g. after new rows arrived). ``device``: a JAX device
    (default: JAX's default device). ``devices``: several local devices to shard the points
    over (a 1-D mesh; per-shell tables stay replicated; XLA partitions the passes).
    """
    t0 = time.perf_counter()
    emb = np.asarray(embeddings)
    check_shapes(emb, prominence, row_keys)
    n = emb.shape[0]
    if basis is not None and basis.L != config.band_limit:
        config = replace(config, band_limit=basis.L)
    if n == 0:
        return _empty_placement(config)
    # skinny GEMMs (N x D @ D x 3, a D x D scatter) gain nothing from BLAS threads and lose a
    # lot when cores are shared (spinning workers); one thread by default
    blas = threadpool_limits(config.blas_threads, "blas") if config.blas_threads else nullcontext()
    with blas, jax.default_device(device) if device is not None else nullcontext():
        prep = prepare_inputs(emb, prominence, config, row_keys)
        return place_prepared(prep, config, basis, initial_shell, device, t0, devices)


def _point_shardings(devices, n_pad: int):
    """(per-point sharding, replicated sharding) over a 1-D mesh, or None for one device."""
    if devices is None or len(devices) < 2 or n_pad % len(devices):
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(list(devices)), ("points",))
    return NamedSharding(mesh, PartitionSpec("points")), NamedSharding(mesh, PartitionSpec())


def place_prepared(
    prep: PreparedInputs,
    config: WaterfillConfig,
    basis: sht.ShBasis | None = None,
    initial_shell: np.ndarray | None = None,
    device=None,
    t0: float | None = None,
    devices: Sequence | None = None,
) -> Placement:
    """:func:`place` on already prepared inputs (one feature pass shared with other callers)."""
    t0 = time.perf_counter() if t0 is None else t0
    n = prep.score.size
    t_features = time.perf_counter() - t0
    radii, targets = shell_targets(n, config)
    tol = shell_tolerance(targets, config.tol_frac, config.tol_min)
    basis = basis if basis is not None else cached_basis(config.band_limit)
    if initial_shell is not None:
        initial_shell = np.asarray(initial_shell)
        if (
            initial_shell.shape != (n,)
            or initial_shell.min() < 0
            or initial_shell.max() >= config.n_shells
        ):
            raise ValueError(f"waterfill: initial_shell must be [N] ints in [0, {config.n_shells})")

    n_pad = _bucket(n)
    buffer = config.lateral_buffer or max(min(n_pad, 4096), n_pad // 8)
    st = _Static(
        n_pad=n_pad,
        n_shells=config.n_shells,
        exact_start=n <= config.exact_rank_limit,
        rank_bins=config.rank_bins,
        z_bins=config.z_bins,
        z_clip=float(config.z_clip),
        n_dirs=config.n_dirs,
        buffer=int(min(buffer, n_pad)),
    )

    def padded(a, fill, dtype):
        out = np.full((n_pad,) + np.shape(a)[1:], fill, dtype=dtype)
        out[:n] = a
        return out

    it, ip = sht.grid_cell(basis, prep.theta, prep.phi)
    level = prep.score if st.exact_start else score_level(prep.score)
    unit = padded(prep.unit, 0.0, np.float32)
    unit[n:] = NORTH_POLE  # padding rows need a valid direction
    dyn = dict(
        plan=cached_plan(basis, device),
        taper=_lowpass_taper(basis.L, config.l_smooth),
        area=np.asarray(basis.weights, dtype=np.float32),
        max_passes=np.int32(config.max_passes),
        lateral_step=np.float32(config.lateral_step),
        lateral_threshold=np.float32(config.lateral_threshold),
        lateral_share=np.float32(config.lateral_share),
    )
    point_args = [
        padded(level, 0.0, np.float32),
        padded(prep.log_prominence, 0.0, np.float32),
        unit,
        padded(it * basis.n_phi + ip, 0, np.int32),
        padded(np.ones(n, bool), False, bool),
        padded(initial_shell if initial_shell is not None else np.zeros(n), 0, np.int32),
    ]
    shared_args = [
        np.bool_(initial_shell is not None),
        targets.astype(np.int32),
        tol.astype(np.float32),
        np.cumsum(targets).astype(np.float32),
        jax.random.key(config.seed),
        dyn,
    ]
    shardings = _point_shardings(devices, n_pad)
    if shardings is not None:  # points split over the devices, everything else replicated
        point_args = [jax.device_put(a, shardings[0]) for a in point_args]
        shared_args = jax.device_put(shared_args, shardings[1])
    t1 = time.perf_counter()
    out, shell0 = _waterfill_program(
        *point_args,
        *shared_args,
        grid=_GridShape(basis.n_theta, basis.n_phi),
        st=st,
    )
    out = jax.device_get(out)
    shell0 = np.asarray(jax.device_get(shell0))[:n].astype(np.int32)
    t_dynamics = time.perf_counter() - t1

    shell = np.asarray(out["shell"][:n], dtype=np.int32)
    lat = np.asarray(out["lat"][:n], np.int32)
    start_kind = "exact_rank" if st.exact_start else "bucketed_rank"
    if initial_shell is not None:
        start_kind = "initial_shell"
    final_unit = prep.unit.copy()
    theta, phi = prep.theta.copy(), prep.phi.copy()
    moved = np.nonzero(lat)[0]
    if moved.size:  # only lateral movers changed direction
        u = np.asarray(out["unit"][:n][moved], dtype=np.float64)
        final_unit[moved] = u / np.linalg.norm(u, axis=1, keepdims=True)
        theta[moved], phi[moved] = angles_of(final_unit[moved])
    r = radii[shell]
    counts = np.bincount(shell, minlength=config.n_shells).astype(np.int64)
    passes = int(out["it"])
    start_counts = np.bincount(shell0, minlength=config.n_shells)
    phi32 = phi.astype(np.float32)
    stats = {
        "method": "lateral",
        "n_points": n,
        "n_padded": n_pad,
        "passes": passes,
        "promotions": int(out["prom"][:n].sum()),
        "demotions": int(out["dem"][:n].sum()),
        "lateral_moves": int(lat.sum()),
        "converged": bool(out["done"]),
        "start": start_kind,
        "start_max_abs_deviation": int(np.abs(start_counts - targets).max()),
        "excess_trace": [float(v) for v in np.asarray(out["trace"])[: min(passes, TRACE_PASSES)]],
        "band_limit": basis.L,
        "devices": 1 if shardings is None else len(devices),
        "seconds_features": t_features,
        "seconds_dynamics": t_dynamics,
        "seconds": time.perf_counter() - t0,
        **balance_report(counts, targets, config.tol_frac, config.tol_min),
    }
    return Placement(
        shell=shell,
        r=r.astype(np.float32),
        theta=theta.astype(np.float32),
        phi=np.where(phi32 >= np.float32(2 * np.pi), np.float32(0), phi32),
        xyz=(r[:, None] * final_unit).astype(np.float32),
        unit=final_unit.astype(np.float32),
        start_unit=prep.unit.astype(np.float32),
        start_shell=shell0,
        prominence=prep.prominence.astype(np.float32),
        promotions=np.asarray(out["prom"][:n], np.int32),
        demotions=np.asarray(out["dem"][:n], np.int32),
        lateral_moves=lat,
        radii=radii,
        targets=targets,
        counts=counts,
        stats=stats,
    )


def rank_fill(score: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Reference fill: stable argsort of the scores cut by cumulative targets (exactly balanced)."""
    order = np.argsort(score, kind="stable")
    shell = np.empty(len(score), np.int32)
    shell[order] = np.searchsorted(np.cumsum(targets), np.arange(len(score)), side="right")
    return shell


# ---------------------------------------------------------------------------------------------
# neighbourhood preservation


def _topk_rows(sims: np.ndarray, k: int) -> np.ndarray:
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return part


def knn_indices(
    queries: np.ndarray, base: np.ndarray, query_rows: np.ndarray, k: int, chunk: int = 16384
) -> np.ndarray:
    """Exact top-k by dot product of each query against all base rows (query row excluded)."""
    q = np.asarray(queries, dtype=np.float32)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for start in range(0, base.shape[0], chunk):
        b = np.asarray(base[start : start + chunk], dtype=np.float32)
        s = q @ b.T
        own = (query_rows[:, None] >= start) & (query_rows[:, None] < start + b.shape[0])
        rows = np.nonzero(own[:, 0])[0]
        s[rows, query_rows[rows] - start] = -np.inf
        idx = _topk_rows(s, k)
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, idx + start], axis=1)
        keep = _topk_rows(cand_s, k)
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def neighbourhood_recall(
    embeddings: np.ndarray, unit: np.ndarray, k: int = 10, n_queries: int = 256
) -> float:
    """Mean recall@k of cosine kNN (embedding space) among angular kNN (sphere), Q queries.

    Tie-aware: an angular neighbour is a hit when its cosine similarity to the query is at
    least the k-th largest cosine similarity (so exact duplicates all count as neighbours).
    """
    emb = np.asarray(embeddings)
    n = emb.shape[0]
    if n <= 1:
        return 1.0
    k = min(k, n - 1)
    rows = evenly_spaced(n, n_queries)
    q = unit_rows(emb[rows])
    # cosine kNN: unit rows (chunked normalisation keeps memory at one chunk)
    e_nn = knn_indices(q, _UnitView(emb), rows, k)
    s_nn = knn_indices(np.asarray(unit)[rows], np.asarray(unit), rows, k)
    kth = np.einsum("qkd,qd->qk", unit_rows(emb[e_nn.reshape(-1)]).reshape(*e_nn.shape, -1), q)
    kth = kth.min(axis=1)
    got = np.einsum("qkd,qd->qk", unit_rows(emb[s_nn.reshape(-1)]).reshape(*s_nn.shape, -1), q)
    hits = (got >= kth[:, None] - 1e-6).sum(axis=1)
    return float(np.mean(hits) / k)


class _UnitView:
    """Row-normalised view of a matrix, normalised chunk by chunk on slicing."""

    def __init__(self, x):
        self.x = x
        self.shape = x.shape

    def __getitem__(self, sl):
        return unit_rows(self.x[sl]).astype(np.float32)


def random_unit(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random directions on S^2 (baseline for neighbourhood recall)."""
    g = np.random.default_rng(seed).standard_normal((n, 3))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# exports


def librarian_export(patches: Sequence[bytes], r, theta, phi, max_len: int | None = None) -> dict:
    """Patch bytes -> (r, theta, phi) training tensors (see :func:`librarian_export_flat`)."""
    lengths = np.fromiter((len(p) for p in patches), dtype=np.int64, count=len(patches))
    flat = np.frombuffer(b"".join(bytes(p) for p in patches), dtype=np.uint8)
    return librarian_export_flat(flat, lengths, r, theta, phi, max_len)


def librarian_export_flat(flat, lengths, r, theta, phi, max_len: int | None = None) -> dict:
    """Patches given as one byte buffer + lengths (in row order) -> training tensors.

    ``bytes`` uint8 [P, width] (zero padded; width = longest patch, capped at ``max_len``),
    ``lengths`` int32 [P] (bytes kept), ``target`` float32 [P, 3] = (r, theta, phi).
    """
    flat = np.asarray(flat, dtype=np.uint8).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = lengths.size
    r, theta, phi = (np.asarray(a, dtype=np.float32).reshape(-1) for a in (r, theta, phi))
    if not (r.size == theta.size == phi.size == n):
        raise ValueError(
            f"librarian_export: {n} patches but r/theta/phi sizes {r.size}/{theta.size}/{phi.size}"
        )
    if int(lengths.sum()) != flat.size:
        raise ValueError(f"librarian_export: lengths sum {lengths.sum()} != {flat.size} bytes")
    width = int(lengths.max()) if n else 0
    if max_len is not None:
        width = min(width, int(max_len))
    kept = np.minimum(lengths, width)
    out = np.zeros((n, width), np.uint8)
    if n and width:
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(n), kept)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(kept) - kept, kept)
        out[rows, cols] = flat[np.repeat(starts, kept) + cols]
    target = np.stack([r, theta, phi], axis=1) if n else np.zeros((0, 3), np.float32)
    return {"bytes": out, "lengths": kept.astype(np.int32), "target": target}


def lvm_sequences(embeddings: np.ndarray, article_ids, patch_index, window: int = 5) -> dict:
    """Windows of `window` consecutive patch embeddings of one article -> the next patch.

    Rows are ordered by (article, patch_index); a window starting at row i is used when the
    window + 1 rows belong to the same article with consecutive patch_index values.
    Returns ``inputs`` float32 [M, window, D], ``target`` float32 [M, D], ``rows`` int64
    [M, window + 1] (row numbers of the inputs and the target in the given table).
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    n, dim = emb.shape
    pidx = np.asarray(patch_index, dtype=np.int64)
    _, art = np.unique(np.asarray(article_ids), return_inverse=True)
    order = np.lexsort((pidx, art))
    a_sorted, p_sorted = art[order], pidx[order]
    span = window + 1
    if n < span:
        return {
            "inputs": np.zeros((0, window, dim), np.float32),
            "target": np.zeros((0, dim), np.float32),
            "rows": np.zeros((0, span), np.int64),
        }
    starts = np.arange(n - span + 1)
    offs = np.arange(span)
    same = (a_sorted[starts[:, None] + offs] == a_sorted[starts, None]).all(axis=1)
    consecutive = (p_sorted[starts[:, None] + offs] == p_sorted[starts, None] + offs).all(axis=1)
    ok = starts[same & consecutive]
    rows = order[ok[:, None] + offs]
    return {"inputs": emb[rows[:, :window]], "target": emb[rows[:, window]], "rows": rows}
