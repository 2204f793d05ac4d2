"""THRML Langevin variant: drift = -grad E, energy and balance (kNN lists: test_neighbours,
grid field helpers: test_density)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import thrml

from sphere_assets.lib.sphere import thrml_langevin as tl
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.sphere.neighbours import approx_knn
from sphere_assets.lib.sphere.shells import capacity_fractions, largest_remainder, shell_radii

SMALL = tl.LangevinConfig(
    n_steps=60,
    record_every=10,
    n_quench=30,
    knn_k=5,
    knn_block=32,
    band_limit=8,
    waterfill=wf.WaterfillConfig(n_shells=8, band_limit=16),
)


def clustered(n, d=16, k=5, seed=0, spread=0.2):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    labels = rng.integers(0, k, n)
    x = centres[labels] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x * np.exp(0.3 * rng.standard_normal(n)).astype(np.float32)[:, None]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _small_model(n=200, step=1e-3):
    x = clustered(n)
    u = unit(x)
    idx, sim = approx_knn(u, 4, block=32)
    rng = np.random.default_rng(1)
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radii = shell_radii(4, 1.0, 2.0)
    shell = rng.integers(0, 4, n)
    cfg = tl.LangevinConfig(step_size=step, temperature=0.0, repulsion=0.0, band_limit=8)
    r0 = np.full(n, 1.5)
    model = tl.build_model(
        radii[shell], shell, d, r0, idx, np.maximum(sim, 0), radii, cfg, wf.cached_basis(8)
    )
    return model, cfg


@eqx.filter_jit
def _step(program, x, key):
    out, _ = thrml.sample_single_block(key, [x], [], program, 0, program.samplers[0].init())
    return out


def _with_repulsion(program, value):
    return eqx.tree_at(lambda p: p.samplers[0].repulsion, program, jnp.float32(value))


MODEL, MODEL_CFG = None, None


def model():
    global MODEL, MODEL_CFG
    if MODEL is None:
        MODEL, MODEL_CFG = _small_model()
    return MODEL, MODEL_CFG


def test_drift_is_minus_the_energy_gradient():
    m, cfg = model()
    x0 = m.init_state
    x1 = _step(m.program, x0, jax.random.key(0))
    spec = m.program.gibbs_spec

    @jax.jit
    def grad_energy(x):
        def energy(x):
            gs = thrml.block_state_to_global([x], spec)
            return sum(f.energy(gs, spec) for f in m.factors[:2])  # radial + kNN

        return jax.grad(energy)(x)

    grad = np.asarray(grad_energy(x0))
    x0 = np.asarray(x0)
    r0 = np.linalg.norm(x0, axis=1, keepdims=True)
    n0 = x0 / r0
    # radial part of -grad E is exactly the radial update
    r1 = np.linalg.norm(np.asarray(x1), axis=1)
    np.testing.assert_allclose(
        r1 - r0[:, 0], -cfg.step_size * np.sum(grad * n0, axis=1), rtol=1e-3, atol=1e-7
    )
    # tangential: E depends on n = x/r only, so grad_x E = P grad_n E / r
    n1 = np.asarray(x1) / r1[:, None]
    tangential = grad - np.sum(grad * n0, axis=1, keepdims=True) * n0
    np.testing.assert_allclose(n1 - n0, -cfg.step_size * tangential * r0, atol=2e-6)


@pytest.mark.slow
def test_density_repulsion_pushes_downhill():
    m, _ = model()
    x0 = m.init_state
    key = jax.random.key(0)
    push = np.asarray(_step(_with_repulsion(m.program, 1.0), x0, key))
    push = push - np.asarray(_step(m.program, x0, key))
    assert np.abs(push).max() > 0
    spec = m.program.gibbs_spec
    dens = eqx.tree_at(lambda f: f.strength, m.factors[-1], 1.0)
    e0 = float(dens.energy(thrml.block_state_to_global([x0], spec), spec))
    moved = jnp.asarray(np.asarray(x0) + 50 * push)
    assert float(dens.energy(thrml.block_state_to_global([moved], spec), spec)) < e0


@pytest.mark.slow
def test_place_thrml_lowers_energy_and_meets_balance():
    x = clustered(300)
    p = tl.place_thrml(x, config=SMALL)
    st = p.stats
    e = np.asarray(st["energy_trace"])
    assert st["energy_decreased"] and e[-1] < e[0] and st["energy_slope"] < 0
    assert len(e) == (60 + 30) // 10 + 1
    assert set(st["energy_terms"]) == {
        "RadialWellFactor",
        "KnnAttractionFactor",
        "DensityRepulsionFactor",
    }
    assert st["ok"]
    targets = largest_remainder(capacity_fractions(shell_radii(8, 1.0, 2.0), 1.5), 300)
    counts = np.bincount(p.shell, minlength=8)
    assert np.all(np.abs(counts - targets) <= np.maximum(1, 0.01 * targets))
    assert st["max_radius_error"] < 1e-3
    assert np.all((p.r >= 1.0) & (p.r <= 2.0)) and np.isfinite(p.xyz).all()
    assert np.all((p.phi >= 0) & (p.phi < 2 * np.pi))
    np.testing.assert_allclose(np.linalg.norm(p.xyz, axis=1), p.r, rtol=1e-5)
    # determinism
    q = tl.place_thrml(x, config=SMALL)
    np.testing.assert_array_equal(p.xyz, q.xyz)


@pytest.mark.slow
def test_place_thrml_empty_single_and_bad_rows():
    e = tl.place_thrml(np.zeros((0, 4), np.float32), config=SMALL)
    assert e.shell.size == 0 and e.stats["method"] == "thrml"
    one = tl.place_thrml(np.ones((1, 4), np.float32), config=SMALL)
    assert one.stats["ok"] and one.stats["knn_k"] == 0 and one.shell.tolist() == [7]
    bad = clustered(20)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="rows 3"):
        tl.place_thrml(bad, config=SMALL)


def test_sampler_is_a_thrml_conditional_sampler():
    model, _ = _small_model()
    assert isinstance(model.program.samplers[0], thrml.AbstractConditionalSampler)
    assert isinstance(model.program, thrml.FactorSamplingProgram)
    assert eqx.is_array(model.init_state)
