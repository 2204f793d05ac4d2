r"""THRML Langevin variant of the shell placement (``method="thrml"``; pure, no Dagster).

The water-filling (``waterfill.place``, lateral method) decides every point's shell, hence its
target radius ``r*_i``. This module then relaxes all positions jointly with overdamped Langevin
dynamics of an energy-based model written with the ``thrml`` library.

Model
-----
State of point i: ``x_i = r_i n_i`` in R^3 (``|n_i| = 1``); node type :class:`ParticleNode`
with a float32[3] state. Energy (three thrml factors)::

    E = sum_i (k_r / 2) (r_i - r*_i)^2                                     RadialWellFactor
      + (k_a / (2 k)) sum_i sum_{j in N(i)} w_ij |n_i - n_j|^2             KnnAttractionFactor
      + (k_rho / 2) sum_i rho_{s_i}(n_i)                                    DensityRepulsionFactor

* ``N(i)``: the (approximate, see below) k nearest cosine neighbours of row i in embedding
  space, ``w_ij = max(cos_ij, 0)``: sparse [N, k] interaction lists, never an N x N matrix.
* ``rho_s(n) = (4 pi / m_s) sum_{j in s} K(n, c_j)`` with the SH low-pass kernel
  ``K(n, c) = sum_l g_l (2l+1)/(4 pi) P_l(n . c)``, ``g_l = exp(-(l / l_smooth)^2 / 2)``:
  points of the shell binned on the equiangular grid of the cached SH basis (``c_j`` = cell
  centre), histogram / cell area -> ``sht.analysis`` -> taper -> ``sht.synthesis``; evaluated
  off-grid by bilinear interpolation in (theta, phi). 1 = uniform density. ``s_i`` is the
  water-filled shell of point i.

Dynamics (Euler-Maruyama, projected on the sphere, one thrml block holding every point, so
every step is a simultaneous update)::

    F_i^n = -(k_a / k) [sum_{j in N(i)} w_ij (n_i - n_j) + sum_{j : i in N(j)} w_ji (n_i - n_j)]
            - k_rho grad_S rho_{s_i}(n_i)
    n_i <- normalize(n_i + eta P_i F_i^n + sqrt(2 eta T) P_i xi_i),  P_i = I - n_i n_i^T
    r_i <- clip(r_i - eta k_r (r_i - r*_i) + sqrt(2 eta T) zeta_i, r_min, r_max)

(``grad_S rho = d_theta rho e_theta + (1/sin theta) d_phi rho e_phi``: the two derivatives
are central differences on the grid (one-sided at the first/last ring), interpolated
bilinearly together with rho; the second kNN sum is the reaction on neighbours, so the drift is
the exact gradient of the attraction term.) The run: ``n_steps`` steps at temperature T,
then ``n_quench`` steps at T = 0 (annealing, so radii settle in their wells), in one thrml
sampling run (the sampler state counts steps); the energy is recorded at step 0 and every
``record_every`` steps. Start: ``n_i`` = the water-filled direction, ``r_i`` = the unfilled
level ``r_min + (r_max - r_min) Phi(score)`` (robust-normalised information score, as in
``waterfill``), so the radial term starts high and the energy trace falls.

Reported shell = nearest shell radius of the final ``r_i``; the balance metrics are the same as
for the lateral method.

The kNN lists come from ``neighbours.approx_knn`` (sorted sign-random-projection blocks);
the SH density field and its gradient from ``density.py``.

What is thrml here
------------------
thrml provides the graph and the sampling machinery: :class:`ParticleNode` (an
``AbstractNode`` with continuous float32[3] state), one ``Block`` holding every node in a
``BlockGibbsSpec``, the three energy terms as ``EBMFactor`` subclasses (their ``energy`` gives
the energy trace), one ``InteractionGroup`` (head = tail = every node) whose interaction PyTree
carries the per-point parameters and the sparse kNN index lists, a ``FactorSamplingProgram``,
and ``sample_with_observation`` (the scans, key splitting, state gathering, sampler state)
with an ``AbstractObserver`` that records the energy terms. The kNN lists travel as an [N, k]
index array rather than as N*k head/tail node pairs because thrml compiles interaction
groups with per-edge Python work (10-11 s for 1M edges on the shared 2 cores). thrml ships
only discrete samplers (Bernoulli/softmax); the continuous Langevin update is our
``AbstractConditionalSampler`` subclass (:class:`LangevinSampler`); the kNN search and the
SH density field are plain JAX/numpy.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import lru_cache

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import thrml
from threadpoolctl import threadpool_limits
from thrml.models.ebm import EBMFactor, FactorizedEBM

from sphere_assets.lib.sphere import sht
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.sphere.density import (
    GridShape,
    cell_index,
    density_gradient,
    interpolate,
    lowpass_taper,
    shell_density,
    unit_angles,
)
from sphere_assets.lib.sphere.features import (
    FEATURE_CHUNK,
    angles_of,
    check_shapes,
    unit_rows,
)
from sphere_assets.lib.sphere.neighbours import approx_knn
from sphere_assets.lib.sphere.shells import balance_report, shell_of_radius

PARTICLE_SD = jax.ShapeDtypeStruct((3,), jnp.float32)


class ParticleNode(thrml.AbstractNode):
    """A point on the shell sphere: state float32[3] = r * n."""


NODE_SHAPES = {ParticleNode: PARTICLE_SD}


@dataclass(frozen=True)
class LangevinConfig:
    n_steps: int = 200
    record_every: int = 10
    n_quench: int = 40
    step_size: float = 0.05  # eta
    temperature: float = 1e-3  # T
    radial_stiffness: float = 4.0  # k_r
    attraction: float = 1.0  # k_a
    repulsion: float = 0.1  # k_rho
    knn_k: int = 10
    knn_tables: int = 4
    knn_block: int = 128
    band_limit: int = 16  # SH basis of the density field
    l_smooth: float = 4.0
    seed: int = 0
    waterfill: wf.WaterfillConfig = field(default_factory=wf.WaterfillConfig)

    def __post_init__(self):
        if self.n_steps < 1 or self.record_every < 1 or self.n_quench < 0:
            raise ValueError("thrml_langevin: n_steps >= 1, record_every >= 1, n_quench >= 0")
        if not (self.step_size > 0 and self.temperature >= 0):
            raise ValueError("thrml_langevin: step_size > 0 and temperature >= 0 required")
        if self.knn_k < 0 or self.knn_tables < 1 or self.knn_block < 8:
            raise ValueError("thrml_langevin: knn_k >= 0, knn_tables >= 1, knn_block >= 8")


def _split(x):
    r = jnp.linalg.norm(x, axis=-1)
    n = x / jnp.maximum(r, 1e-12)[..., None]
    return r, n


# ---------------------------------------------------------------------------------------------
# thrml factors and interactions


class ParticleParams(eqx.Module):
    """Per-point parameters of the one interaction group (head = tail = every node).

    thrml hands the sampler these arrays sliced to [N, 1, ...] next to the self states.
    """

    target_r: jax.Array  # [N] water-filled radius
    shell: jax.Array  # [N] int32 water-filled shell
    neighbour: jax.Array  # [N, k] int32 kNN list (global node index)
    weight: jax.Array  # [N, k] float32 w_ij = max(cos_ij, 0)


def particle_interactions(nodes: thrml.Block, target_r, shell, neighbour, weight):
    """The sparse interaction lists as one thrml InteractionGroup.

    One N-row group instead of an (N*k)-row head/tail group per kNN edge: thrml compiles
    interaction groups with per-edge Python work, which took 10-11 s for N*k = 1M edges.
    """
    params = ParticleParams(
        jnp.asarray(target_r, jnp.float32),
        jnp.asarray(shell, jnp.int32),
        jnp.asarray(neighbour, jnp.int32),
        jnp.asarray(weight, jnp.float32),
    )
    return thrml.InteractionGroup(params, nodes, [nodes])


class DensityField(eqx.Module):
    """Everything needed to rebuild rho_s from positions (shared by energy and sampler)."""

    plan: sht.ShtPlan
    taper: jax.Array
    area: jax.Array
    counts: jax.Array  # [S] float32
    grid: GridShape = eqx.field(static=True)
    n_shells: int = eqx.field(static=True)

    def build(self, theta, phi, shell):
        """Relative density per shell on the grid [S, n_theta, n_phi] of points at (theta, phi)."""
        return shell_density(
            self.plan,
            self.grid,
            shell,
            cell_index(self.grid, theta, phi),
            jnp.ones(theta.shape[0], jnp.float32),
            self.counts,
            self.taper,
            self.area,
            self.n_shells,
        )


def _positions(global_state, block_spec, nodes: thrml.Block):
    """[N, 3] positions of `nodes` in their order, from a thrml global state."""
    sd_index, locs = thrml.get_node_locations(nodes, block_spec)
    return jnp.take(global_state[sd_index], locs, axis=0)


class RadialWellFactor(EBMFactor):
    """(k_r / 2) (|x_i| - r*_i)^2 for every node."""

    target_r: jax.Array
    stiffness: float

    def __init__(self, nodes: thrml.Block, target_r, stiffness: float):
        super().__init__([nodes])
        self.target_r = jnp.asarray(target_r, jnp.float32)
        self.stiffness = float(stiffness)

    def energy(self, global_state, block_spec):
        r, _ = _split(_positions(global_state, block_spec, self.node_groups[0]))
        return 0.5 * self.stiffness * jnp.sum((r - self.target_r) ** 2)

    def to_interaction_groups(self):
        return []  # parameters travel in particle_interactions


class KnnAttractionFactor(EBMFactor):
    """(k_a / 2k) sum_i sum_j w_ij |n_i - n_j|^2 over the sparse kNN lists."""

    weight: jax.Array  # [N, k]
    neighbour: jax.Array  # [N, k]
    strength: float

    def __init__(self, nodes: thrml.Block, neighbour, weight, strength: float):
        super().__init__([nodes])
        self.weight = jnp.asarray(weight, jnp.float32)
        self.neighbour = jnp.asarray(neighbour, jnp.int32)
        self.strength = float(strength)

    def energy(self, global_state, block_spec):
        k = self.weight.shape[1]
        _, n = _split(_positions(global_state, block_spec, self.node_groups[0]))
        d2 = jnp.sum((n[:, None, :] - n[self.neighbour]) ** 2, axis=-1)
        return 0.5 * self.strength / max(k, 1) * jnp.sum(self.weight * d2)

    def to_interaction_groups(self):
        return []  # the kNN lists travel in particle_interactions


class DensityRepulsionFactor(EBMFactor):
    """(k_rho / 2) sum_i rho_{s_i}(n_i) (SH-smoothed per-shell density, see module docstring)."""

    shell: jax.Array
    density: DensityField
    strength: float

    def __init__(self, nodes: thrml.Block, shell, density: DensityField, strength: float):
        super().__init__([nodes])
        self.shell = jnp.asarray(shell, jnp.int32)
        self.density = density
        self.strength = float(strength)

    def energy(self, global_state, block_spec):
        _, n = _split(_positions(global_state, block_spec, self.node_groups[0]))
        theta, phi = unit_angles(n)
        rho = self.density.build(theta, phi, self.shell)
        values = interpolate(rho, self.density.grid, self.shell, theta, phi)
        return 0.5 * self.strength * jnp.sum(values)

    def to_interaction_groups(self):
        return []  # the shells travel in particle_interactions


# ---------------------------------------------------------------------------------------------
# the Langevin conditional sampler


class LangevinSampler(thrml.AbstractConditionalSampler):
    """One Euler-Maruyama step for a block holding every particle (module docstring)."""

    density: DensityField
    step_size: jax.Array
    temperature: jax.Array
    hot_steps: jax.Array  # steps at `temperature`; later steps run at T = 0 (quench)
    radial_stiffness: jax.Array
    attraction: jax.Array
    repulsion: jax.Array
    r_min: float
    r_max: float

    def sample(self, key, interactions, active_flags, states, sampler_state, output_sd):
        found = [
            (inter, st[0][:, 0])
            for inter, st in zip(interactions, states, strict=True)
            if isinstance(inter, ParticleParams)
        ]
        if len(found) != 1:
            raise ValueError("LangevinSampler: expected exactly one ParticleParams interaction")
        params, x = found[0]  # x: [N, 3] positions of the block (= every node, index order)
        target_r, shell = params.target_r[:, 0], params.shell[:, 0]
        neighbour, weight = params.neighbour[:, 0], params.weight[:, 0]  # [N, k]
        r, n = _split(x)
        force = jnp.zeros_like(n)
        k = neighbour.shape[1]
        if k:
            diff = n[:, None, :] - n[neighbour]  # n_i - n_j, [N, k, 3]
            pull = (self.attraction / k) * weight[..., None] * diff
            force = force - jnp.sum(pull, axis=1)
            # reaction on the neighbours: the exact gradient of the (asymmetric) kNN energy
            force = force + jax.ops.segment_sum(
                pull.reshape(-1, 3), neighbour.reshape(-1), num_segments=n.shape[0]
            )
        theta, phi = unit_angles(n)
        rho = self.density.build(theta, phi, shell)
        grad = density_gradient(rho, self.density.grid, shell, n, theta, phi)
        force = force - self.repulsion * grad
        k_n, k_r = jax.random.split(key)
        hot = (sampler_state < self.hot_steps).astype(jnp.float32)
        noise = hot * jnp.sqrt(2 * self.step_size * self.temperature)
        xi = jax.random.normal(k_n, n.shape, jnp.float32)
        move = self.step_size * force + noise * xi
        move = move - jnp.sum(move * n, axis=1, keepdims=True) * n  # tangent projection
        n_new = n + move
        n_new = n_new / jnp.linalg.norm(n_new, axis=1, keepdims=True)
        zeta = jax.random.normal(k_r, r.shape, jnp.float32)
        r_new = r - self.step_size * self.radial_stiffness * (r - target_r) + noise * zeta
        r_new = jnp.clip(r_new, self.r_min, self.r_max)
        return (r_new[:, None] * n_new).astype(output_sd.dtype), sampler_state + 1

    def init(self):
        return jnp.zeros((), jnp.int32)  # sampler state: steps taken so far


class EnergyObserver(thrml.AbstractObserver):
    """Records each factor's energy at every observation (array [n_factors])."""

    ebm: FactorizedEBM
    blocks: list

    def __call__(self, program, state_free, state_clamped, carry, iteration):
        spec = program.gibbs_spec
        global_state = thrml.block_state_to_global(state_free + state_clamped, spec)
        terms = jnp.stack([f.energy(global_state, spec) for f in self.ebm.factors])
        return carry, terms


# ---------------------------------------------------------------------------------------------
# entry point


@dataclass
class LangevinModel:
    """The thrml program and its parts (built once; `run_langevin` samples it)."""

    program: thrml.FactorSamplingProgram
    observer: EnergyObserver
    nodes: thrml.Block
    factors: list
    init_state: jax.Array
    build_seconds: float


@lru_cache(maxsize=4)
def particle_graph(n: int) -> tuple[thrml.Block, thrml.BlockGibbsSpec]:
    """N particle nodes in one free block (cached per N: the same nodes and spec give the same
    static jit signature, so a second run of the same size reuses the compiled program)."""
    nodes = thrml.Block([ParticleNode() for _ in range(n)])
    return nodes, thrml.BlockGibbsSpec([nodes], [], NODE_SHAPES)


def build_model(
    target_r, shell, unit0, r0, knn_idx, knn_w, radii, config: LangevinConfig, basis: sht.ShBasis
) -> LangevinModel:
    """Nodes, factors, sampler and the thrml sampling program for N points."""
    t0 = time.perf_counter()
    n = len(target_r)
    n_shells = len(radii)
    nodes, spec = particle_graph(n)
    counts = np.bincount(np.asarray(shell), minlength=n_shells).astype(np.float32)
    density = DensityField(
        plan=sht.sht_plan(basis, dtype=np.float32),
        taper=jnp.asarray(lowpass_taper(basis.L, config.l_smooth)),
        area=jnp.asarray(np.asarray(basis.weights, np.float32)),
        counts=jnp.asarray(counts),
        grid=GridShape(basis.n_theta, basis.n_phi),
        n_shells=n_shells,
    )
    factors = [RadialWellFactor(nodes, target_r, config.radial_stiffness)]
    if knn_idx.shape[1] > 0:
        factors.append(KnnAttractionFactor(nodes, knn_idx, knn_w, config.attraction))
    factors.append(DensityRepulsionFactor(nodes, shell, density, config.repulsion))
    sampler = LangevinSampler(
        density=density,
        # scalars as arrays: traced, so changing them does not recompile
        step_size=jnp.float32(config.step_size),
        temperature=jnp.float32(config.temperature),
        hot_steps=jnp.int32(config.n_steps),
        radial_stiffness=jnp.float32(config.radial_stiffness),
        attraction=jnp.float32(config.attraction),
        repulsion=jnp.float32(config.repulsion),
        r_min=float(radii[0]) if n_shells == 1 else float(min(radii)),
        r_max=float(max(radii)),
    )
    group = particle_interactions(nodes, target_r, shell, knn_idx, knn_w)
    program = thrml.FactorSamplingProgram(spec, [sampler], factors, [group])
    observer = EnergyObserver(FactorizedEBM(factors, NODE_SHAPES), [nodes])
    init = (np.asarray(r0, np.float32)[:, None] * np.asarray(unit0, np.float32)).astype(np.float32)
    return LangevinModel(
        program, observer, nodes, factors, jnp.asarray(init), time.perf_counter() - t0
    )


class _WithState(thrml.AbstractObserver):
    """Energy terms at every observation; the carry keeps the latest state."""

    inner: EnergyObserver

    def __call__(self, program, state_free, state_clamped, carry, iteration):
        _, terms = self.inner(program, state_free, state_clamped, None, iteration)
        return state_free[0], terms


@eqx.filter_jit
def _sample(key, program, observer, init, n_warmup: int, n_samples: int, every: int):
    schedule = thrml.SamplingSchedule(
        n_warmup=n_warmup, n_samples=n_samples, steps_per_sample=every
    )
    final, terms = thrml.sample_with_observation(
        key, program, schedule, [init], [], jnp.zeros_like(init), _WithState(observer)
    )
    return terms, final


def run_langevin(model: LangevinModel, config: LangevinConfig, key):
    """n_steps at temperature T then n_quench at T = 0 (rounded up to whole records), in one
    thrml sampling run; energy at step 0 and every record_every steps.

    Returns (energy terms [records, n_factors], final positions [N, 3]).
    """
    total = config.n_steps + config.n_quench
    n_records = -(-total // config.record_every)
    return _sample(
        key, model.program, model.observer, model.init_state, 0, n_records + 1, config.record_every
    )


def place_thrml(
    embeddings,
    prominence=None,
    *,
    config: LangevinConfig = LangevinConfig(),
    basis: sht.ShBasis | None = None,
    row_keys=None,
    device=None,
    sphere_map=None,
) -> wf.Placement:
    """THRML Langevin placement; returns a :class:`waterfill.Placement` with energy stats.

    ``sphere_map``: the fitted map (as in :func:`waterfill.place`)."""
    t0 = time.perf_counter()
    wcfg = config.waterfill
    emb = np.asarray(embeddings)
    if emb.ndim == 2 and emb.shape[0] == 0:
        lateral = wf.place(emb, prominence, config=wcfg, basis=basis, row_keys=row_keys)
        lateral.stats.update(method="thrml", energy_trace=[], energy_decreased=True)
        return lateral
    check_shapes(emb, prominence, row_keys)
    if basis is not None and basis.L != wcfg.band_limit:
        wcfg = replace(wcfg, band_limit=basis.L)
    blas = threadpool_limits(wcfg.blas_threads, "blas") if wcfg.blas_threads else nullcontext()
    with blas, jax.default_device(device) if device is not None else nullcontext():
        # one validation + feature pass feeds both the water-filling and the Langevin start
        prep = wf.prepare_inputs(emb, prominence, wcfg, row_keys, sphere_map)
        lateral = wf.place_prepared(prep, wcfg, basis, None, device, t0)
        n = lateral.shell.size
        level = prep.level
        t_knn = time.perf_counter()
        unit_emb = np.empty(emb.shape, np.float32)
        for i in range(0, n, FEATURE_CHUNK):
            unit_emb[i : i + FEATURE_CHUNK] = unit_rows(emb[i : i + FEATURE_CHUNK])
        knn_idx, knn_sim = approx_knn(
            unit_emb, config.knn_k, config.knn_tables, config.knn_block, config.seed
        )
        t_knn = time.perf_counter() - t_knn
    del unit_emb
    radii = lateral.radii
    r_lo, r_hi = float(radii.min()), float(radii.max())
    r0 = r_lo + (r_hi - r_lo) * level
    field_basis = wf.cached_basis(config.band_limit)
    with jax.default_device(device) if device is not None else nullcontext():
        model = build_model(
            radii[lateral.shell],
            lateral.shell,
            lateral.unit,
            r0,
            knn_idx,
            np.maximum(knn_sim, 0.0),
            radii,
            config,
            field_basis,
        )
        t_run = time.perf_counter()
        terms, final = run_langevin(model, config, jax.random.key(config.seed))
        terms = np.asarray(jax.device_get(terms), np.float64)
        final = np.asarray(jax.device_get(final), np.float64)
        t_run = time.perf_counter() - t_run
    energy = terms.sum(axis=1)
    r = np.linalg.norm(final, axis=1)
    unit = final / np.maximum(r, 1e-12)[:, None]
    r = np.clip(r, r_lo, r_hi)  # float32 rounding of |x| at the clipped bounds
    final = r[:, None] * unit
    shell = shell_of_radius(r, radii)
    theta, phi = angles_of(unit)
    counts = np.bincount(shell, minlength=len(radii)).astype(np.int64)
    half = max(1, len(energy) // 2)
    slope = float(np.polyfit(np.arange(len(energy)), energy, 1)[0]) if len(energy) > 1 else 0.0
    names = [type(f).__name__ for f in model.factors]
    stats = {
        "method": "thrml",
        "n_points": n,
        "passes": config.record_every
        * (-(-(config.n_steps + config.n_quench) // config.record_every)),
        "steps": config.n_steps,
        "quench_steps": config.n_quench,
        "promotions": lateral.stats["promotions"],
        "demotions": lateral.stats["demotions"],
        "lateral_moves": lateral.stats["lateral_moves"],
        "waterfill_passes": lateral.stats["passes"],
        "converged": lateral.stats["converged"],
        "energy_trace": [float(e) for e in energy],
        "energy_terms": {name: [float(v) for v in terms[:, i]] for i, name in enumerate(names)},
        "energy_decreased": bool(energy[half:].mean() < energy[:half].mean()),
        "energy_slope": slope,
        "knn_k": int(knn_idx.shape[1]),
        "max_radius_error": float(np.abs(r - radii[lateral.shell]).max()),
        "shell_changes_vs_waterfill": int((shell != lateral.shell).sum()),
        "seconds_knn": t_knn,
        "seconds_build": model.build_seconds,
        "seconds_sampling": t_run,
        "seconds": time.perf_counter() - t0,
        **balance_report(counts, lateral.targets, wcfg.tol_frac, wcfg.tol_min),
    }
    return wf.Placement(
        shell=shell,
        r=r.astype(np.float32),
        theta=theta.astype(np.float32),
        phi=wf.wrap_phi32(phi),
        xyz=final.astype(np.float32),
        unit=unit.astype(np.float32),
        start_unit=lateral.start_unit,
        start_shell=lateral.start_shell,
        prominence=lateral.prominence,
        promotions=lateral.promotions,
        demotions=lateral.demotions,
        lateral_moves=lateral.lateral_moves,
        radii=radii,
        targets=lateral.targets,
        counts=counts,
        stats=stats,
        score=lateral.score,
        spread_rad=lateral.spread_rad,
    )
