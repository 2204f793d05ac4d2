"""Water-filled shell placement: formulas vs independent references, balance on skewed inputs,
determinism, bad input, exports."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre

from sphere_assets.lib.sphere import sht
from sphere_assets.lib.sphere import waterfill as wf

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


# ---------------------------------------------------------------------------------------------
# shells, capacities, targets


def test_radii_capacities_and_targets_match_longhand():
    for n, s in [(0, 5), (1, 16), (7, 16), (1000, 128), (12345, 37), (100, 1)]:
        radii, targets = independent_targets(n, s)
        got_r, got_t = wf.shell_targets(n, wf.WaterfillConfig(n_shells=s))
        np.testing.assert_allclose(got_r, radii, rtol=1e-12)
        np.testing.assert_array_equal(got_t, targets)
        assert got_t.sum() == n
    c = wf.capacity_fractions(np.array([1.0, 4.0]), 1.5)
    np.testing.assert_allclose(c, [1 / 9, 8 / 9])


def test_largest_remainder_properties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        f = rng.random(rng.integers(1, 40))
        f /= f.sum()
        n = int(rng.integers(0, 5000))
        t = wf.largest_remainder(f, n)
        assert t.sum() == n
        assert np.all(np.abs(t - n * f) < 1.0)
    # hand example: quotas 3.5, 3.3, 3.2 -> 4, 3, 3 ; ties go to the lower shell
    np.testing.assert_array_equal(wf.largest_remainder(np.array([0.35, 0.33, 0.32]), 10), [4, 3, 3])
    np.testing.assert_array_equal(wf.largest_remainder(np.array([0.5, 0.5]), 1), [1, 0])


def test_balance_report_tolerance_rule():
    targets = np.array([0, 50, 1000])
    ok = wf.balance_report(np.array([1, 51, 1010]), targets)
    assert ok["ok"] and ok["max_abs_deviation"] == 10
    bad = wf.balance_report(np.array([2, 50, 1000]), targets)
    assert not bad["ok"] and bad["shells_out_of_tolerance"] == [0]
    bad = wf.balance_report(np.array([0, 50, 1011]), targets)
    assert bad["shells_out_of_tolerance"] == [2]


# ---------------------------------------------------------------------------------------------
# features and the sphere map


def test_sphere_map_is_pca_of_unit_vectors():
    x, _ = clustered(3000, d=20)
    smap = wf.fit_sphere_map(x, sample_size=1000)
    idx = ((np.arange(1000) + 0.5) * 3000 / 1000).astype(int)
    x64 = x[idx].astype(np.float64)
    u = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(u - u.mean(0), full_matrices=False)
    ref = vt[:3].T
    # same columns up to sign; sign rule: largest-|.| entry positive
    np.testing.assert_allclose(np.abs(ref.T @ smap.components), np.eye(3), atol=1e-6)
    for j in range(3):
        col = smap.components[:, j]
        assert col[np.argmax(np.abs(col))] > 0
    np.testing.assert_allclose(smap.mean, u.mean(0), atol=1e-12)


def test_sphere_map_degenerate_inputs_are_deterministic():
    one = wf.fit_sphere_map(np.ones((1, 5), np.float32))
    dup = wf.fit_sphere_map(np.ones((10, 5), np.float32))
    np.testing.assert_allclose(one.components, np.eye(5)[:, :3])
    np.testing.assert_allclose(dup.components, np.eye(5)[:, :3])
    small = wf.fit_sphere_map(np.eye(2, dtype=np.float32))  # D < 3: zero third column
    assert small.components.shape == (2, 3) and np.all(small.components[:, 2] == 0)


def test_embedding_features_against_float64_reference():
    x, _ = clustered(500, d=16)
    x[3] = 0.0  # zero row: concentration 0, direction from -mean only
    x[7] *= 1e21  # float32 squares overflow: must be recomputed exactly
    smap = wf.fit_sphere_map(x)
    norm, conc, unit = wf.embedding_features(x, smap)
    x64 = x.astype(np.float64)
    ref_norm = np.linalg.norm(x64, axis=1)
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-5)
    u = np.divide(x64, ref_norm[:, None], out=np.zeros_like(x64), where=ref_norm[:, None] > 0)
    ref_conc = np.log(np.maximum(16 * (u**4).sum(1), 1.0))
    ref_conc[3] = 0.0
    np.testing.assert_allclose(conc, ref_conc, atol=1e-5)
    y = u @ smap.components - smap.mean @ smap.components
    np.testing.assert_allclose(unit, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-5)
    assert np.isfinite(unit).all()


def test_nan_and_inf_rows_are_named():
    x, _ = clustered(100, d=8)
    x[5, 2] = np.nan
    x[42, 0] = np.inf
    keys = [("art", i) for i in range(100)]
    with pytest.raises(ValueError, match=r"2 embedding row\(s\).*\('art', 5\).*\('art', 42\)"):
        wf.place(x, row_keys=keys, config=CFG)
    with pytest.raises(ValueError, match=r"rows 5, 42"):
        wf.validate_inputs(x)
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
    ref = wf.rank_fill(prep.score.astype(np.float32), p.targets)
    np.testing.assert_array_equal(p.start_shell, ref)
    assert p.stats["passes"] == 0 and p.stats["start_max_abs_deviation"] == 0


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
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=0.05)
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
    cfg = wf.WaterfillConfig(n_shells=16, band_limit=16, lateral_threshold=1e9)
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


# ---------------------------------------------------------------------------------------------
# SH density (lateral search field) vs the addition theorem


def test_shell_density_matches_legendre_kernel_sum():
    L, l_smooth = 8, 3.0
    basis = sht.build_basis(L)
    grid = wf._GridShape(basis.n_theta, basis.n_phi)
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((40, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    theta, phi = wf.angles_of(pts)
    it, ip = sht.grid_cell(basis, theta, phi)
    cell = (it * basis.n_phi + ip).astype(np.int32)
    shell = np.zeros(40, np.int32)
    shell[30:] = 1  # second shell: 10 points
    counts = np.array([30.0, 10.0], np.float32)
    rho = wf.shell_density(
        sht.sht_plan(basis, dtype=np.float32),
        grid,
        jnp.asarray(shell),
        jnp.asarray(cell),
        jnp.ones(40, jnp.float32),
        jnp.asarray(counts),
        jnp.asarray(wf._lowpass_taper(L, l_smooth)),
        jnp.asarray(basis.weights.astype(np.float32)),
        2,
    )
    rho = np.asarray(rho).reshape(2, basis.n_theta, basis.n_phi)
    # reference: rho_s(x) = 4pi/m_s sum_{i in s} sum_l g_l (2l+1)/(4pi) P_l(x . c_i)
    tt, pp = np.meshgrid(basis.theta, basis.phi, indexing="ij")
    nodes = np.stack([np.sin(tt) * np.cos(pp), np.sin(tt) * np.sin(pp), np.cos(tt)], -1)
    centres = nodes[it, ip]
    for s, rows in [(0, slice(0, 30)), (1, slice(30, 40))]:
        cos = np.clip(nodes.reshape(-1, 3) @ centres[rows].T, -1, 1)
        ref = sum(
            math.exp(-0.5 * (l / l_smooth) ** 2) * (2 * l + 1) / (4 * np.pi) * eval_legendre(l, cos)
            for l in range(L)
        ).sum(1) * (4 * np.pi / counts[s])
        np.testing.assert_allclose(rho[s].reshape(-1), ref, atol=2e-4 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# neighbourhood preservation


def test_neighbourhood_recall_against_brute_force():
    x, _ = clustered(400, d=12)
    rng = np.random.default_rng(5)
    unit = rng.standard_normal((400, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    got = wf.neighbourhood_recall(x, unit, k=10, n_queries=50)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = wf.evenly_spaced(400, 50)
    hits = []
    for q in rows:
        se = xu @ xu[q]
        se[q] = -np.inf
        ss = unit @ unit[q]
        ss[q] = -np.inf
        kth = np.sort(se)[-10]
        hits.append(int((se[np.argsort(-ss)[:10]] >= kth - 1e-6).sum()))
    assert got == pytest.approx(np.mean(hits) / 10)
    # exact duplicates are all neighbours of each other, whichever of them the sphere picks
    dup = np.tile(x[:1], (50, 1))
    assert wf.neighbourhood_recall(dup, np.tile([[0.0, 0.0, 1.0]], (50, 1))) == 1.0
    # a map that is the embedding itself (3-D data) preserves every neighbourhood
    y = rng.standard_normal((300, 3))
    assert wf.neighbourhood_recall(y, y / np.linalg.norm(y, axis=1, keepdims=True)) == 1.0


def test_pca_map_preserves_more_neighbours_than_random_angles():
    x, _ = clustered(1500, d=24, k=12, spread=0.1)
    p = wf.place(x, config=CFG)
    pca = wf.neighbourhood_recall(x, p.start_unit)
    placed = wf.neighbourhood_recall(x, p.unit)
    rnd = wf.neighbourhood_recall(x, wf.random_unit(1500))
    assert pca > 3 * rnd
    assert placed >= 0.9 * pca


# ---------------------------------------------------------------------------------------------
# exports


def test_librarian_export():
    out = wf.librarian_export([b"ab", b"", b"xyz1"], [1.0, 1.5, 2.0], [0.1, 0.2, 0.3], [1, 2, 3])
    np.testing.assert_array_equal(out["bytes"], [[97, 98, 0, 0], [0, 0, 0, 0], [120, 121, 122, 49]])
    np.testing.assert_array_equal(out["lengths"], [2, 0, 4])
    np.testing.assert_allclose(out["target"], [[1.0, 0.1, 1], [1.5, 0.2, 2], [2.0, 0.3, 3]])
    assert out["bytes"].dtype == np.uint8 and out["target"].dtype == np.float32
    cut = wf.librarian_export([b"abcdef"], [1], [0], [0], max_len=3)
    np.testing.assert_array_equal(cut["bytes"], [[97, 98, 99]])
    assert cut["lengths"][0] == 3
    empty = wf.librarian_export([], [], [], [])
    assert empty["bytes"].shape == (0, 0) and empty["target"].shape == (0, 3)


def test_lvm_sequences_windows_stay_inside_articles():
    # rows deliberately shuffled; article "a" has patches 0..6, "b" has 0..2 (too short), "c"
    # has a gap (0,1,2,3,5,6) so no window crosses the gap
    arts = ["a"] * 7 + ["b"] * 3 + ["c"] * 6
    pidx = list(range(7)) + [0, 1, 2] + [0, 1, 2, 3, 5, 6]
    perm = np.random.default_rng(0).permutation(16)
    emb = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    out = wf.lvm_sequences(emb[perm], np.array(arts)[perm], np.array(pidx)[perm], window=5)
    rows = out["rows"]
    assert rows.shape == (2, 6)  # a: windows starting at 0 and 1
    orig = perm[rows]  # back to the unshuffled row numbers
    np.testing.assert_array_equal(orig, [[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(out["inputs"], emb[orig[:, :5]])
    np.testing.assert_array_equal(out["target"], emb[orig[:, 5]])
    none = wf.lvm_sequences(emb[:3], ["a"] * 3, [0, 1, 2])
    assert none["inputs"].shape == (0, 5, 2)


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
