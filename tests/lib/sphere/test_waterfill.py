"""Water-filled shell placement: formulas vs independent references, balance on skewed inputs,
determinism, bad input."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from sphere_assets.lib.sphere import spreading as sp
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.sphere.features import (
    FEATURE_CHUNK,
    check_prominence,
    check_shapes,
    name_rows,
)

# one small static configuration shared by most tests (one jit compilation)
CFG = wf.WaterfillConfig(n_shells=16, band_limit=16)


def clustered(n, d=24, k=6, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    labels = rng.integers(0, k, n)
    x = centres[labels] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x * np.exp(0.5 * rng.standard_normal(n)).astype(np.float32)[:, None], labels


def independent_targets(n, n_shells, r_min=1.0, r_max=2.0, kappa=1.5):
    """Hamilton apportionment written out longhand (loop, no shared helpers)."""
    radii = [r_min + (r_max - r_min) * math.sqrt(s / max(n_shells - 1, 1)) for s in range(n_shells)]
    weights = [r**kappa for r in radii]
    total = sum(weights)
    quotas = [n * w / total for w in weights]
    seats = [int(math.floor(q)) for q in quotas]
    rema = sorted(range(n_shells), key=lambda s: (-(quotas[s] - seats[s]), s))
    for s in rema[: n - sum(seats)]:
        seats[s] += 1
    return np.array(radii), np.array(seats)


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
            f"waterfill: {bad.size} embedding row(s) contain NaN/inf: {name_rows(bad, row_keys)}"
        )
    if prominence is not None:
        check_prominence(prominence, row_keys)


def rank_fill(score: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Reference fill: stable argsort of the scores cut by cumulative targets (exactly balanced)."""
    order = np.argsort(score, kind="stable")
    shell = np.empty(len(score), np.int32)
    shell[order] = np.searchsorted(np.cumsum(targets), np.arange(len(score)), side="right")
    return shell


def assert_valid_placement(p: wf.Placement, n: int, cfg: wf.WaterfillConfig):
    radii, targets = independent_targets(n, cfg.n_shells, cfg.r_min, cfg.r_max, cfg.kappa)
    np.testing.assert_allclose(p.radii, radii, rtol=1e-12)
    np.testing.assert_array_equal(p.targets, targets)
    counts = np.bincount(p.shell, minlength=cfg.n_shells)
    tol = np.maximum(1.0, 0.01 * targets)
    assert np.all(np.abs(counts - targets) <= tol), (counts - targets, p.stats)
    assert p.stats["ok"]
    for a in (p.r, p.theta, p.phi, p.xyz, p.unit):
        assert np.isfinite(a).all()
    assert p.shell.shape == (n,) and p.xyz.shape == (n, 3)
    assert np.all((p.r >= cfg.r_min) & (p.r <= cfg.r_max))
    assert np.all((p.theta >= 0) & (p.theta <= np.pi))
    assert np.all((p.phi >= 0) & (p.phi < 2 * np.pi))
    np.testing.assert_allclose(np.linalg.norm(p.unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p.r, radii[p.shell], rtol=1e-6)
    # (r, theta, phi) and xyz describe the same point
    xyz = p.r[:, None] * np.stack(
        [np.sin(p.theta) * np.cos(p.phi), np.sin(p.theta) * np.sin(p.phi), np.cos(p.theta)], 1
    )
    np.testing.assert_allclose(xyz, p.xyz, atol=2e-5)


def test_nan_and_inf_rows_are_named():
    x, _ = clustered(100, d=8)
    x[5, 2] = np.nan
    x[42, 0] = np.inf
    keys = [("art", i) for i in range(100)]
    with pytest.raises(ValueError, match=r"2 embedding row\(s\).*\('art', 5\).*\('art', 42\)"):
        wf.place(x, row_keys=keys, config=CFG)
    with pytest.raises(ValueError, match=r"rows 5, 42"):
        validate_inputs(x)
    ok, _ = clustered(10, d=8)
    prom = np.ones(10)
    prom[[1, 8]] = [np.nan, -1.0]
    with pytest.raises(ValueError, match=r"prominence.*rows 1, 8"):
        wf.place(ok, prom, config=CFG)
    with pytest.raises(ValueError, match="2-D"):
        wf.place(np.zeros(5), config=CFG)


# ---------------------------------------------------------------------------------------------
# placement: balance on skewed inputs


def _inputs(kind: str):
    rng = np.random.default_rng(7)
    if kind == "dense_cluster":
        x = np.tile(rng.standard_normal(24), (900, 1)) + 1e-4 * rng.standard_normal((900, 24))
        x = np.concatenate([x, rng.standard_normal((100, 24))])
        return x.astype(np.float32), None
    if kind == "heavy_tails":
        x, _ = clustered(1000)
        scale = rng.pareto(0.8, 1000) + 1e-3  # infinite-mean tail
        return (x * scale[:, None]).astype(np.float32), None
    if kind == "duplicates":
        return np.tile(rng.standard_normal(24), (1000, 1)).astype(np.float32), np.ones(1000)
    if kind == "n_below_shells":
        x, _ = clustered(10)
        return x, None
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["dense_cluster", "heavy_tails", "duplicates", "n_below_shells"])
def test_balance_on_skewed_inputs(kind):
    x, prom = _inputs(kind)
    p = wf.place(x, prom, config=CFG)
    assert_valid_placement(p, x.shape[0], CFG)
    assert p.stats["converged"]


def test_empty_and_single_point():
    e = wf.place(np.zeros((0, 8), np.float32), config=CFG)
    assert e.shell.shape == (0,) and e.stats["ok"] and e.stats["passes"] == 0
    assert e.counts.sum() == 0 and e.targets.sum() == 0
    one = wf.place(np.ones((1, 8), np.float32), config=CFG)
    assert_valid_placement(one, 1, CFG)
    assert one.shell[0] == CFG.n_shells - 1  # the largest quota (outer shell) takes the point


def test_exact_start_is_the_rank_fill_of_the_score():
    x, _ = clustered(800)
    p = wf.place(x, config=CFG)
    prep = wf.prepare_inputs(x, None, CFG)
    ref = rank_fill(prep.score.astype(np.float32), p.targets)
    np.testing.assert_array_equal(p.start_shell, ref)
    assert p.stats["passes"] == 0 and p.stats["start_max_abs_deviation"] == 0


@pytest.mark.slow
def test_bucketed_start_then_dynamics_balance():
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, exact_rank_limit=0, rank_bins=64)
    x, _ = clustered(1000)
    x[:400] = x[0]  # 40% duplicates: one rank bucket holds them all
    p = wf.place(x, config=cfg)
    assert p.stats["start"] == "bucketed_rank"
    assert_valid_placement(p, 1000, cfg)


# ---------------------------------------------------------------------------------------------
# dynamics from an unbalanced (warm) start: overflow cascade and lateral moves


def test_warm_start_overflow_and_lateral_moves():
    # the SH-density lateral step alone (the spreading step after it: the test below)
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=0.05, spread=None)
    x, _ = clustered(1000)
    init = np.zeros(1000, np.int64)  # everything poured into the innermost shell
    p = wf.place(x, config=cfg, initial_shell=init)
    assert_valid_placement(p, 1000, cfg)
    st = p.stats
    assert 1 <= st["passes"] <= 8 and st["converged"]
    assert st["lateral_moves"] > 0
    # each point's net radial motion is its promotions minus its demotions
    np.testing.assert_array_equal(p.shell - init, p.promotions - p.demotions)
    assert st["promotions"] - st["demotions"] == int((p.shell - init).sum())
    moved = p.lateral_moves > 0
    assert p.lateral_moves.max() == 1  # at most one lateral move per point
    ang = np.arccos(np.clip((p.unit * p.start_unit).sum(1), -1, 1))
    np.testing.assert_allclose(ang[moved], cfg.lateral_step, atol=2e-3)
    np.testing.assert_array_equal(p.unit[~moved], p.start_unit[~moved])
    # lateral movers stayed in their shell that pass; settled points never leave it again
    assert np.all(p.shell[moved] <= init[moved] + p.promotions[moved])
    # the most prominent points of the innermost shell overflowed outward
    z0 = p.shell == 0
    assert np.median(p.prominence[z0]) < np.median(p.prominence[~z0])


def test_lateral_threshold_off_means_no_lateral_moves():
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=1e9, spread=None)
    x, _ = clustered(1000)
    p = wf.place(x, config=cfg, initial_shell=np.zeros(1000, int))
    assert p.stats["lateral_moves"] == 0
    assert_valid_placement(p, 1000, cfg)
    np.testing.assert_array_equal(p.unit, p.start_unit)


def test_determinism_and_seed_dependence():
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=0.05)
    x, _ = clustered(700)
    init = np.zeros(700, int)
    a = wf.place(x, config=cfg, initial_shell=init)
    b = wf.place(x, config=cfg, initial_shell=init)
    for f in ("shell", "r", "theta", "phi", "xyz", "lateral_moves", "promotions"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = wf.place(x, config=wf.WaterfillConfig(**{**cfg.__dict__, "seed": 1}), initial_shell=init)
    assert not np.array_equal(a.lateral_moves, c.lateral_moves) or not np.array_equal(
        a.shell, c.shell
    )


def test_same_result_with_jax_x64_enabled():
    x, _ = clustered(300)
    a = wf.place(x, config=CFG)
    with jax.enable_x64(True):
        b = wf.place(x, config=CFG)
    np.testing.assert_array_equal(a.shell, b.shell)
    np.testing.assert_array_equal(a.theta, b.theta)


@pytest.mark.slow
def test_points_sharded_over_two_host_devices(tmp_path):
    """Two forced CPU devices: the passes run on a 1-D mesh and still fill every shell (a
    subprocess, because the device count is fixed when JAX starts)."""
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(
        "import os\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
        "import jax, numpy as np\n"
        "from sphere_assets.lib.sphere import waterfill as wf\n"
        "x = np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)\n"
        "cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=1e9)\n"
        "init = np.zeros(1500, int)\n"
        "a = wf.place(x, config=cfg, initial_shell=init)\n"
        "b = wf.place(x, config=cfg, initial_shell=init, devices=jax.devices())\n"
        "assert b.stats['devices'] == 2 and b.stats['ok'] and b.stats['passes'] >= 1\n"
        # float sums run in another order on two devices, so a few z-bin edges may differ
        "assert (a.shell == b.shell).mean() > 0.9, (a.shell == b.shell).mean()\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_spreading_step_opens_pile_ups_without_changing_shells():
    # 40% of the rows are copies of 8 vectors: piles of identical directions in a few shells
    x, _ = clustered(2000)
    x[:800] = x[np.arange(800) % 8]
    off = wf.place(x, config=wf.WaterfillConfig(n_shells=16, band_limit=16, spread=None))
    on = wf.place(x, config=wf.WaterfillConfig(n_shells=16, band_limit=16))
    np.testing.assert_array_equal(on.shell, off.shell)  # balance untouched
    np.testing.assert_array_equal(on.start_unit, off.start_unit)  # the map direction
    st = on.stats
    # the goal: at most 1% of points with a same-shell neighbour within 0.01 degrees
    assert st["crowding_0.01deg_before"] > 0.3 and st["crowding_0.01deg_after"] <= 0.01
    assert st["spread_moves"] == int((on.spread_rad > 0).sum()) > 0
    ang = np.arccos(np.clip((on.unit.astype(np.float64) * off.unit).sum(1), -1, 1))
    np.testing.assert_allclose(ang, on.spread_rad, atol=1e-3)  # spread = the angle moved
    # least-move separation: at most half the (margined) radius a pass
    step_max = 0.5 * np.deg2rad(0.5) * sp.SEPARATION_MARGIN
    assert np.all(on.spread_rad <= st["spread_passes"] * step_max + 1e-6)
