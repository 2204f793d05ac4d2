"""Shells, capacities, largest-remainder targets and the balance rule vs longhand references."""

from __future__ import annotations

import numpy as np

from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.sphere.shells import balance_report, capacity_fractions, largest_remainder
from tests.lib.sphere.test_waterfill import independent_targets


def test_radii_capacities_and_targets_match_longhand():
    for n, s in [(0, 5), (1, 16), (7, 16), (1000, 128), (12345, 37), (100, 1)]:
        radii, targets = independent_targets(n, s)
        got_r, got_t = wf.shell_targets(n, wf.WaterfillConfig(n_shells=s))
        np.testing.assert_allclose(got_r, radii, rtol=1e-12)
        np.testing.assert_array_equal(got_t, targets)
        assert got_t.sum() == n
    c = capacity_fractions(np.array([1.0, 4.0]), 1.5)
    np.testing.assert_allclose(c, [1 / 9, 8 / 9])


def test_largest_remainder_properties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        f = rng.random(rng.integers(1, 40))
        f /= f.sum()
        n = int(rng.integers(0, 5000))
        t = largest_remainder(f, n)
        assert t.sum() == n
        assert np.all(np.abs(t - n * f) < 1.0)
    # hand example: quotas 3.5, 3.3, 3.2 -> 4, 3, 3 ; ties go to the lower shell
    np.testing.assert_array_equal(largest_remainder(np.array([0.35, 0.33, 0.32]), 10), [4, 3, 3])
    np.testing.assert_array_equal(largest_remainder(np.array([0.5, 0.5]), 1), [1, 0])


def test_balance_report_tolerance_rule():
    targets = np.array([0, 50, 1000])
    ok = balance_report(np.array([1, 51, 1010]), targets)
    assert ok["ok"] and ok["max_abs_deviation"] == 10
    bad = balance_report(np.array([2, 50, 1000]), targets)
    assert not bad["ok"] and bad["shells_out_of_tolerance"] == [0]
    bad = balance_report(np.array([0, 50, 1011]), targets)
    assert bad["shells_out_of_tolerance"] == [2]
