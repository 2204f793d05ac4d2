r"""Shells, capacities, integer targets and the balance rule (pure numpy).

Radii square-root spaced between r_min and r_max, capacity fractions ``~ r_s^kappa``, integer
targets by the largest-remainder (Hamilton) rule, balance ``|count_s - n_s| <= max(tol_min,
tol_frac * n_s)`` (sphere_assets/placements/README.md, "Shells, capacities, targets").
"""

from __future__ import annotations

import numpy as np


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
