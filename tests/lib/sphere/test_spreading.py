"""Spreading inside shells and the crowding figures, against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_assets.lib.sphere import spreading as sp


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def brute_nearest(unit: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Nearest same-shell angle by all pairs (arccos of clipped dot products, float64)."""
    out = np.full(unit.shape[0], np.inf)
    for s in np.unique(shell):
        rows = np.flatnonzero(shell == s)
        if rows.size < 2:
            continue
        ang = np.arccos(np.clip(unit[rows] @ unit[rows].T, -1, 1))
        np.fill_diagonal(ang, np.inf)
        out[rows] = ang.min(axis=1)
    return out


def piles(seed: int = 0, n_piles: int = 12, per_pile: int = 15, n_shells: int = 3):
    """Exact-duplicate piles (several per shell) plus a few scattered points."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_piles, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    unit = np.repeat(centres, per_pile, axis=0)
    scattered = fibonacci_sphere(60)
    unit = np.concatenate([unit, scattered])
    shell = np.concatenate(
        [np.repeat(np.arange(n_piles) % n_shells, per_pile), np.arange(60) % n_shells]
    )
    return unit, shell


def test_nearest_in_shell_and_crowding_match_brute_force():
    rng = np.random.default_rng(1)
    unit = rng.standard_normal((400, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    unit[10] = unit[11]  # an exact duplicate
    unit[20] = unit[21] + 1e-5  # a near one
    unit[20] /= np.linalg.norm(unit[20])
    shell = rng.integers(0, 5, 400)
    shell[10] = shell[11]
    shell[20] = shell[21]
    got = sp.nearest_in_shell(unit, shell)
    want = brute_nearest(unit, shell)
    np.testing.assert_allclose(got, want, atol=1e-7)
    crowd = sp.crowding(unit, shell, angles_deg=(0.01, 5.0))
    assert crowd["crowding_0.01deg"] == pytest.approx((want < np.deg2rad(0.01)).mean())
    assert crowd["crowding_5deg"] == pytest.approx((want < np.deg2rad(5.0)).mean())


@pytest.mark.parametrize("method", sp.METHODS)
def test_spreading_opens_piles_keeps_shells_and_lowers_crowding(method):
    unit, shell = piles()
    before = sp.crowding(unit, shell)
    assert before["crowding_0.01deg"] > 0.7  # the piles
    cfg = sp.SpreadConfig(radius_deg=0.6, max_passes=32, method=method)
    res = sp.spread_within_shells(unit, shell, cfg)
    after = sp.crowding(res.unit, shell)
    assert after["crowding_0.01deg"] == 0.0 and after["crowding_0.5deg"] <= 0.01
    np.testing.assert_allclose(np.linalg.norm(res.unit, axis=1), 1.0, atol=1e-12)
    # the scattered points (far apart) had no density gradient: they did not move
    np.testing.assert_array_equal(res.unit[-60:], unit[-60:])
    assert res.moved_points == 12 * 15
    # piles open up around where they were: every point stays within a few radii of its pile
    assert np.rad2deg(res.moved_rad.max()) < 4.0
    # determinism
    again = sp.spread_within_shells(unit, shell, cfg)
    np.testing.assert_array_equal(again.unit, res.unit)


@pytest.mark.parametrize("method", sp.METHODS)
def test_points_move_down_the_density(method):
    # a dense pile of 20 near-identical points and one point at its rim (0.3 deg away): the
    # rim point moves away from the pile (toward lower density), not into it
    rng = np.random.default_rng(2)
    centre = np.array([0.0, 0.0, 1.0])
    pile = centre + 1e-4 * rng.standard_normal((20, 3))
    rim = np.array([np.sin(np.deg2rad(0.3)), 0.0, np.cos(np.deg2rad(0.3))])
    unit = np.concatenate([pile, rim[None]])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    cfg = sp.SpreadConfig(max_passes=1, method=method)
    res = sp.spread_within_shells(unit, np.zeros(21, int), cfg)
    before = np.arccos(np.clip(rim @ centre, -1, 1))
    after = np.arccos(np.clip(res.unit[-1] @ centre, -1, 1))
    assert after > before + np.deg2rad(0.1)


def two_apart(angle_deg: float) -> np.ndarray:
    half = np.deg2rad(angle_deg) / 2
    return np.array([[np.sin(-half), 0.0, np.cos(half)], [np.sin(half), 0.0, np.cos(half)]])


def test_separation_moves_a_pair_only_by_its_overlap():
    # a pair 0.4 deg apart in one shell, and the same pair split over two shells: the pair of
    # one shell ends just past the radius, each point moved about half the 0.1 deg overlap;
    # the fixed step (gradient) moves each 0.25 deg, 5x further from its neighbourhood (the
    # map's 10-NN lie within 0.2-0.5 deg: every extra tenth of a degree costs recall)
    unit = np.concatenate([two_apart(0.4), two_apart(0.4)])
    shell = np.array([0, 0, 1, 2])
    res = sp.spread_within_shells(unit, shell, sp.PLACEMENT_SPREAD)
    gap = np.rad2deg(sp.angle_between(res.unit[:1], res.unit[1:2]))[0]
    assert 0.5 <= gap <= 0.5 * sp.SEPARATION_MARGIN + 1e-9
    moved = np.rad2deg(res.moved_rad)
    np.testing.assert_allclose(moved[:2], (0.5 * sp.SEPARATION_MARGIN - 0.4) / 2, rtol=1e-4)
    np.testing.assert_array_equal(res.unit[2:], unit[2:])  # other shells: no pair, no move
    assert res.passes == 1 and res.pairs_left == 0
    old = sp.spread_within_shells(unit, shell, sp.SpreadConfig(method="gradient"))
    assert np.rad2deg(old.moved_rad[:2]).min() > 4 * moved[:2].max()


def test_separation_keeps_a_piles_neighbourhood_order():
    # twins in one shell beside a tight row of points in other shells (their neighbourhood):
    # separation moves the twins apart by about the radius and nothing else, so the row keeps
    # its order and the twins stay nearer the row than least-move requires
    twins = np.repeat(two_apart(0.0)[:1], 2, axis=0)
    row = np.stack(
        [
            np.sin(np.deg2rad(0.05 * np.arange(1, 9))),
            np.zeros(8),
            np.cos(np.deg2rad(0.05 * np.arange(1, 9))),
        ],
        axis=1,
    )
    unit = np.concatenate([twins, row])
    shell = np.concatenate([[0, 0], np.arange(1, 9)])
    res = sp.spread_within_shells(unit, shell, sp.PLACEMENT_SPREAD)
    np.testing.assert_array_equal(res.unit[2:], row)
    gap = np.rad2deg(sp.angle_between(res.unit[:1], res.unit[1:2]))[0]
    assert 0.5 <= gap <= 0.5 * sp.SEPARATION_MARGIN + 1e-9
    assert np.rad2deg(res.moved_rad[:2]).max() <= 0.5 * sp.SEPARATION_MARGIN / 2 + 1e-9


def test_cell_occupancy_even_vs_piled():
    even = fibonacci_sphere(12 * 16 * 16 * 4)
    shell = np.zeros(even.shape[0], int)
    ok = sp.cell_occupancy(even, shell)
    assert ok["occupancy_max_over_mean_max"] <= 3.0  # mean 1 per cell: a few cells hold 2-3
    piled = even.copy()
    piled[:500] = even[0]
    bad = sp.cell_occupancy(piled, shell)
    assert bad["occupancy_max_over_mean_max"] > 50


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="radius_deg"):
        sp.SpreadConfig(radius_deg=0)
    with pytest.raises(ValueError, match="step"):
        sp.SpreadConfig(step=0)
    with pytest.raises(ValueError, match="method"):
        sp.SpreadConfig(method="jitter")
