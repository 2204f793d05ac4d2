r"""Water-filled shell placement of patch embeddings (pure: numpy + JAX, no Dagster).

Every embedding row ``e_i`` (dimension D) with prominence ``p_i`` gets a place
``(shell_i, r_i, theta_i, phi_i)`` on S concentric shells: square-root spaced radii, capacity
fractions ``~ r_s^kappa`` turned into integer targets by the largest-remainder rule; a rank
start from an information score (log prominence + concentration), PCA-3 start angles; then
water-filling passes (one jitted ``lax.while_loop``) overflow the most prominent points of
over-full shells outward, with a lateral move inside the shell instead (SH density field,
``density.py``) when that relieves the crowding enough; stop when every shell holds its target
within ``max(tol_min, tol_frac * target)``.

The full specification (formulas, caps, padding, sharding) is in
``sphere_assets/placements/README.md`` ("Water-filling: the specification"). The pieces:
``shells.py`` (radii, targets, balance rule), ``features.py`` (validation, score, PCA-3 map),
``density.py`` (SH density field); neighbourhood recall is in ``neighbours.py``, the
Librarian / LVM exports in ``exports.py``.

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
from threadpoolctl import threadpool_limits

from sphere_assets.lib.sphere import sht, spreading
from sphere_assets.lib.sphere import sphere_map as sm
from sphere_assets.lib.sphere.density import (
    GridShape,
    cell_index,
    lowpass_taper,
    shell_density,
    unit_angles,
)
from sphere_assets.lib.sphere.features import (
    NORTH_POLE,
    angles_of,
    check_prominence,
    check_shapes,
    evenly_spaced,
)
from sphere_assets.lib.sphere.shells import (
    balance_report,
    capacity_fractions,
    largest_remainder,
    shell_radii,
    shell_tolerance,
)

TRACE_PASSES = 64  # per-pass max |count - target| is recorded for the first 64 passes


# ---------------------------------------------------------------------------------------------
# configuration and result


@dataclass(frozen=True)
class WaterfillConfig:
    """Every knob of the placement (all documented in sphere_assets/placements/README.md)."""

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
    # the final lateral step inside each shell (spreading.py: least-move separation); None =
    # no spreading
    spread: spreading.SpreadConfig | None = spreading.PLACEMENT_SPREAD

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
    start_unit: np.ndarray  # float32 [N, 3] the map direction (before any lateral move)
    start_shell: np.ndarray  # int32 [N] rank start
    prominence: np.ndarray  # float32 [N]
    promotions: np.ndarray  # int32 [N]
    demotions: np.ndarray  # int32 [N]
    lateral_moves: np.ndarray  # int32 [N]
    radii: np.ndarray  # float64 [S]
    targets: np.ndarray  # int64 [S]
    counts: np.ndarray  # int64 [S]
    stats: dict = field(default_factory=dict)
    score: np.ndarray | None = None  # float64 [N] information score (the map's centres)
    spread_rad: np.ndarray | None = None  # float32 [N] angle moved by the spreading step


# ---------------------------------------------------------------------------------------------
# shell targets of a run


def shell_targets(n: int, config: WaterfillConfig) -> tuple[np.ndarray, np.ndarray]:
    """(radii [S], integer targets [S]) for n points."""
    radii = shell_radii(config.n_shells, config.r_min, config.r_max)
    return radii, largest_remainder(capacity_fractions(radii, config.kappa), n)


# ---------------------------------------------------------------------------------------------
# features of a run


@dataclass
class PreparedInputs:
    """Per-row inputs of the dynamics (shared by the lateral and THRML methods)."""

    prominence: np.ndarray  # float64 [N]
    log_prominence: np.ndarray  # float64 [N]
    concentration: np.ndarray  # float64 [N]
    score: np.ndarray  # float64 [N] information score (centres of the map's fit sample)
    level: np.ndarray  # float64 [N] Phi of the robust score (the map's median and scale)
    unit: np.ndarray  # float64 [N, 3] map direction
    theta: np.ndarray  # float64 [N]
    phi: np.ndarray  # float64 [N]
    sphere_map: sm.SphereMapModel


def own_pca_map(emb: np.ndarray, prominence, config: WaterfillConfig) -> sm.SphereMapModel:
    """A PCA-3 map fitted on these rows alone (standalone use of :func:`place`: tests, bench;
    the pipeline passes the global ``sphere_map`` instead)."""
    rows = evenly_spaced(emb.shape[0], config.pca_sample)
    prom = None if prominence is None else np.asarray(prominence)[rows]
    fit = sm.SphereMapConfig(method="pca3", spread_weight=config.spread_weight)
    return sm.fit_sphere_map_model(emb[rows], prom, fit)


def prepare_inputs(
    embeddings,
    prominence=None,
    config: WaterfillConfig = WaterfillConfig(),
    row_keys=None,
    sphere_map: sm.SphereMapModel | None = None,
) -> PreparedInputs:
    """Validate rows; prominence, information score, level and map direction of every row with
    ``sphere_map`` (default: :func:`own_pca_map`)."""
    emb = np.asarray(embeddings)
    check_shapes(emb, prominence, row_keys)
    if prominence is not None:
        check_prominence(prominence, row_keys)
    feats = sm.row_features(emb, prominence, row_keys)  # validates every row (named)
    model = sphere_map if sphere_map is not None else own_pca_map(emb, prominence, config)
    score = sm.score_of(model, feats["log_prominence"], feats["concentration"])
    unit = sm.map_directions(model, emb)
    theta, phi = angles_of(unit)
    return PreparedInputs(
        feats["prominence"], feats["log_prominence"], feats["concentration"], score,
        sm.score_level(model, score), unit, theta, phi, model,
    )  # fmt: skip


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


def _cell_of(grid: GridShape, unit):
    """Flat grid cell (it * n_phi + ip) of unit vectors (JAX)."""
    return cell_index(grid, *unit_angles(unit))


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
    ).reshape(-1)  # [S * cells]
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
    *, grid: GridShape, st: _Static,
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
                     np.zeros_like(targets), stats, np.zeros(0), z_f)  # fmt: skip


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
    sphere_map: sm.SphereMapModel | None = None,
) -> Placement:
    """Water-filled placement (``method="lateral"``) of embedding rows; see module docstring.

    ``sphere_map``: the fitted map giving directions and scores (the global ``sphere_map``
    asset in the pipeline); default: a PCA-3 map fitted on these rows (:func:`own_pca_map`).

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
        prep = prepare_inputs(emb, prominence, config, row_keys, sphere_map)
        return place_prepared(prep, config, basis, initial_shell, device, t0, devices)


def _point_shardings(devices, n_pad: int):
    """(per-point sharding, replicated sharding) over a 1-D mesh, or None for one device."""
    if devices is None or len(devices) < 2 or n_pad % len(devices):
        return None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(list(devices)), ("points",))
    return NamedSharding(mesh, PartitionSpec("points")), NamedSharding(mesh, PartitionSpec())


def _checked_initial_shell(initial_shell, n: int, n_shells: int) -> np.ndarray | None:
    """The warm-start shells as an array, or ValueError unless they are [N] ints in [0, S)."""
    if initial_shell is None:
        return None
    initial_shell = np.asarray(initial_shell)
    if initial_shell.shape != (n,) or initial_shell.min() < 0 or initial_shell.max() >= n_shells:
        raise ValueError(f"waterfill: initial_shell must be [N] ints in [0, {n_shells})")
    return initial_shell


def _static_of(n: int, config: WaterfillConfig) -> _Static:
    """The static (jit signature) shape of a run over n points."""
    n_pad = _bucket(n)
    buffer = config.lateral_buffer or max(min(n_pad, 4096), n_pad // 8)
    return _Static(
        n_pad=n_pad,
        n_shells=config.n_shells,
        exact_start=n <= config.exact_rank_limit,
        rank_bins=config.rank_bins,
        z_bins=config.z_bins,
        z_clip=float(config.z_clip),
        n_dirs=config.n_dirs,
        buffer=int(min(buffer, n_pad)),
    )


def _padded(a, n: int, n_pad: int, fill, dtype) -> np.ndarray:
    """Rows 0..n-1 of ``a`` followed by ``fill`` up to n_pad rows."""
    out = np.full((n_pad,) + np.shape(a)[1:], fill, dtype=dtype)
    out[:n] = a
    return out


def _program_args(prep: PreparedInputs, config, basis, initial_shell, targets, tol, st, device):
    """(per-point arrays [n_pad, ...], shared arrays) of ``_waterfill_program``."""
    n = prep.score.size
    it, ip = sht.grid_cell(basis, prep.theta, prep.phi)
    level = prep.score if st.exact_start else prep.level
    unit = _padded(prep.unit, n, st.n_pad, 0.0, np.float32)
    unit[n:] = NORTH_POLE  # padding rows need a valid direction
    dyn = dict(
        plan=cached_plan(basis, device),
        taper=lowpass_taper(basis.L, config.l_smooth),
        area=np.asarray(basis.weights, dtype=np.float32),
        max_passes=np.int32(config.max_passes),
        lateral_step=np.float32(config.lateral_step),
        lateral_threshold=np.float32(config.lateral_threshold),
        lateral_share=np.float32(config.lateral_share),
    )
    warm = initial_shell if initial_shell is not None else np.zeros(n)
    point_args = [
        _padded(level, n, st.n_pad, 0.0, np.float32),
        _padded(prep.log_prominence, n, st.n_pad, 0.0, np.float32),
        unit,
        _padded(it * basis.n_phi + ip, n, st.n_pad, 0, np.int32),
        _padded(np.ones(n, bool), n, st.n_pad, False, bool),
        _padded(warm, n, st.n_pad, 0, np.int32),
    ]
    shared_args = [
        np.bool_(initial_shell is not None),
        targets.astype(np.int32),
        tol.astype(np.float32),
        np.cumsum(targets).astype(np.float32),
        jax.random.key(config.seed),
        dyn,
    ]
    return point_args, shared_args


def _run_program(point_args, shared_args, basis, st: _Static, devices):
    """The jitted passes, points split over ``devices`` when several (everything else
    replicated): (final state on the host, start shells [n_pad], devices used)."""
    shardings = _point_shardings(devices, st.n_pad)
    if shardings is not None:
        point_args = [jax.device_put(a, shardings[0]) for a in point_args]
        shared_args = jax.device_put(shared_args, shardings[1])
    out, shell0 = _waterfill_program(
        *point_args,
        *shared_args,
        grid=GridShape(basis.n_theta, basis.n_phi),
        st=st,
    )
    used = 1 if shardings is None else len(devices)
    return jax.device_get(out), np.asarray(jax.device_get(shell0)), used


def _final_directions(prep: PreparedInputs, lat: np.ndarray, moved_unit):
    """(unit [N, 3], theta [N], phi [N]) float64: the start direction, renormalised new
    directions (and their angles) for the lateral movers (``lat`` > 0)."""
    final_unit = prep.unit.copy()
    theta, phi = prep.theta.copy(), prep.phi.copy()
    moved = np.nonzero(lat)[0]
    if moved.size:  # only lateral movers changed direction
        u = np.asarray(moved_unit[moved], dtype=np.float64)
        final_unit[moved] = u / np.linalg.norm(u, axis=1, keepdims=True)
        theta[moved], phi[moved] = angles_of(final_unit[moved])
    return final_unit, theta, phi


def wrap_phi32(phi: np.ndarray) -> np.ndarray:
    """phi as float32 in [0, 2 pi): values that round up to 2 pi become 0."""
    phi32 = phi.astype(np.float32)
    return np.where(phi32 >= np.float32(2 * np.pi), np.float32(0), phi32)


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
    initial_shell = _checked_initial_shell(initial_shell, n, config.n_shells)
    st = _static_of(n, config)
    args = _program_args(prep, config, basis, initial_shell, targets, tol, st, device)
    t1 = time.perf_counter()
    out, shell0, n_devices = _run_program(*args, basis, st, devices)
    shell0 = shell0[:n].astype(np.int32)
    t_dynamics = time.perf_counter() - t1

    shell = np.asarray(out["shell"][:n], dtype=np.int32)
    lat = np.asarray(out["lat"][:n], np.int32)
    final_unit, theta, phi = _final_directions(prep, lat, out["unit"][:n])
    t2 = time.perf_counter()
    final_unit, theta, phi, spread_rad, spread_stats = _spread(
        final_unit, theta, phi, shell, config
    )
    t_spread = time.perf_counter() - t2
    r = radii[shell]
    counts = np.bincount(shell, minlength=config.n_shells).astype(np.int64)
    passes = int(out["it"])
    start_kind = "exact_rank" if st.exact_start else "bucketed_rank"
    start_counts = np.bincount(shell0, minlength=config.n_shells)
    stats = {
        "method": "lateral",
        "n_points": n,
        "n_padded": st.n_pad,
        "passes": passes,
        "promotions": int(out["prom"][:n].sum()),
        "demotions": int(out["dem"][:n].sum()),
        "lateral_moves": int(lat.sum()),
        "converged": bool(out["done"]),
        "start": start_kind if initial_shell is None else "initial_shell",
        "start_max_abs_deviation": int(np.abs(start_counts - targets).max()),
        "excess_trace": [float(v) for v in np.asarray(out["trace"])[: min(passes, TRACE_PASSES)]],
        "band_limit": basis.L,
        "devices": n_devices,
        "seconds_features": t_features,
        "seconds_dynamics": t_dynamics,
        "seconds_spread": t_spread,
        **spread_stats,
        "seconds": time.perf_counter() - t0,
        **balance_report(counts, targets, config.tol_frac, config.tol_min),
    }
    return Placement(
        shell=shell,
        r=r.astype(np.float32),
        theta=theta.astype(np.float32),
        phi=wrap_phi32(phi),
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
        score=prep.score,
        spread_rad=spread_rad.astype(np.float32),
    )


def _spread(unit, theta, phi, shell, config: WaterfillConfig):
    """The final lateral step (``spreading.py``) inside each shell; crowding before / after.

    Returns (unit, theta, phi, moved angle [N], stats)."""
    before = spreading.crowding(unit, shell)
    stats = {f"{k}_before": v for k, v in before.items()}
    if config.spread is None:
        return unit, theta, phi, np.zeros(unit.shape[0]), {
            **stats, **{f"{k}_after": v for k, v in before.items()}, "spread_moves": 0,
            "spread_passes": 0,
        }  # fmt: skip
    res = spreading.spread_within_shells(unit, shell, config.spread)
    theta, phi = theta.copy(), phi.copy()
    moved = np.flatnonzero(res.moved_rad > 0)
    theta[moved], phi[moved] = angles_of(res.unit[moved])
    after = spreading.crowding(res.unit, shell)
    stats.update({f"{k}_after": v for k, v in after.items()})
    stats.update(
        spread_moves=res.moved_points,
        spread_passes=res.passes,
        spread_pairs_left=res.pairs_left,
        spread_radius_deg=config.spread.radius_deg,
        spread_p99_deg=float(np.rad2deg(np.quantile(res.moved_rad, 0.99))) if moved.size else 0.0,
        spread_max_deg=float(np.rad2deg(res.moved_rad.max())) if moved.size else 0.0,
    )
    return res.unit, theta, phi, res.moved_rad, stats
