r"""Lateral spreading inside shells, and the crowding it removes (pure: numpy + scipy).

Near-identical patches (the same text in different contexts) get near-identical embeddings and
so the same map direction; the rank start puts equal scores in neighbouring ranks, so they also
share a shell. Such a pile-up is one point to anyone reading the map. Spreading moves the
points of a pile apart *inside their shell* (the shell, and so the balance, never changes), down
the gradient of a kernel density estimate of that shell, until no two points of a shell are
closer than the spreading radius or the passes run out.

Density and its gradient (one rule)
    The density of shell s at direction x is the kernel sum
    ``rho_s(x) = sum_j K(angle(x, u_j))`` over the shell's points, with the cone kernel
    ``K(d) = max(0, 1 - d / radius)``. Its gradient at a point u_i is the sum, over the shell's
    points j within ``radius``, of the unit tangent vectors at u_i pointing *towards* u_j, over
    ``radius``. A point moves along ``-grad`` (toward lower density), by
    ``step * radius * |g| / max(|g|, 1)`` where g is the sum of those unit vectors: a point with
    one close neighbour moves ``step * radius`` away from it, a point inside a pile moves at most
    as far, a point with nobody within ``radius`` has zero gradient and does not move ("as far as
    the density field says"). Exact duplicates (zero angle, no tangent direction) are told apart
    by a fixed tangent direction per point (seeded, so the result is deterministic).

Why not the band-limited SH density of the water-filling (``density.py``): at the band limit
of the placement (L = 32) its resolution is about 180 / 32 = 5.6 degrees, ten times coarser than
the 0.5 degree pile-ups to remove; the cone-kernel sum is the same estimator (a kernel density)
at the scale that matters, evaluated exactly over the pairs within ``radius`` (a k-d tree).

Crowding (the figure this step is judged by)
    ``crowding(angle)`` = the share of points whose nearest neighbour *in the same shell* is
    closer than ``angle``; reported for 0.01 and 0.5 degrees. Cell occupancy: the max / mean
    count of HEALPix equal-area cells per shell (nside: the largest power of two with at most as
    many cells as the shell has points), 1.0 would be perfectly even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CROWDING_ANGLES_DEG = (0.01, 0.5)


@dataclass(frozen=True)
class SpreadConfig:
    """Knobs of :func:`spread_within_shells`."""

    radius_deg: float = 0.5  # kernel radius: points closer than this push each other apart
    step: float = 0.5  # largest move per pass, as a fraction of the radius
    # passes at most: 3 passes (at most 0.75 degrees) bring the bundled corpus from 27% of
    # points within 0.5 degrees of a same-shell neighbour to 2%, for 9% of recall@10;
    # more passes trade recall for little (BENCHMARKS.md "sphere map")
    max_passes: int = 3
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.radius_deg < 90.0:
            raise ValueError(f"spreading: radius_deg must be in (0, 90), got {self.radius_deg}")
        if not 0.0 < self.step <= 1.0 or self.max_passes < 0:
            raise ValueError("spreading: need 0 < step <= 1 and max_passes >= 0")


@dataclass
class SpreadResult:
    """Directions after spreading, how far each point moved, and what the passes did."""

    unit: np.ndarray  # float64 [N, 3]
    moved_rad: np.ndarray  # float64 [N]: angle between the start and the final direction
    passes: int
    moved_points: int
    pairs_left: int  # pairs of one shell still closer than the radius


def chord_of(angle_rad: float) -> float:
    """Chord length of an angle on the unit sphere (k-d tree radius)."""
    return 2.0 * np.sin(angle_rad / 2.0)


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle [N] (radians) between unit rows, accurate for small angles (atan2 form)."""
    cross = np.linalg.norm(np.cross(a, b), axis=1)
    return np.arctan2(cross, np.einsum("ij,ij->i", a, b))


def tangent_tiebreak(unit: np.ndarray, seed: int) -> np.ndarray:
    """A fixed unit tangent vector at each direction [N, 3] (seeded), for exact duplicates."""
    g = np.random.default_rng(seed).standard_normal(unit.shape)
    g -= np.einsum("ij,ij->i", g, unit)[:, None] * unit
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)


def density_gradient(unit: np.ndarray, pairs: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """g_i = sum over pairs (i, j) of the unit tangent at u_i pointing to u_j  [N, 3].

    ``pairs`` [P, 2] (each unordered pair once). -g points toward lower cone-kernel density.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    to_j = unit[j] - np.einsum("ij,ij->i", unit[j], unit[i])[:, None] * unit[i]
    to_i = unit[i] - np.einsum("ij,ij->i", unit[i], unit[j])[:, None] * unit[j]
    nj, ni = np.linalg.norm(to_j, axis=1), np.linalg.norm(to_i, axis=1)
    dup = (nj < 1e-12) | (ni < 1e-12)
    # duplicates: i is pushed along -tiebreak_i... as if j sat on i's +tiebreak side, and j
    # the other way; antisymmetric, so a pile of duplicates opens up in distinct directions
    to_j[dup] = tiebreak[i[dup]] - tiebreak[j[dup]]
    to_i[dup] = -to_j[dup]
    nj[dup] = np.linalg.norm(to_j[dup], axis=1)
    ni[dup] = nj[dup]
    g = np.zeros_like(unit)
    np.add.at(g, i, to_j / np.maximum(nj, 1e-300)[:, None])
    np.add.at(g, j, to_i / np.maximum(ni, 1e-300)[:, None])
    return g


def close_pairs(unit: np.ndarray, angle_rad: float) -> np.ndarray:
    """Index pairs [P, 2] (i < j) of unit rows closer than ``angle_rad``."""
    from scipy.spatial import cKDTree

    if unit.shape[0] < 2:
        return np.zeros((0, 2), np.int64)
    return cKDTree(unit).query_pairs(chord_of(angle_rad), output_type="ndarray")


def spread_shell(unit: np.ndarray, config: SpreadConfig, seed: int) -> tuple[np.ndarray, int, int]:
    """Spread one shell's directions [n, 3]: (new directions, passes run, pairs left)."""
    radius = np.deg2rad(config.radius_deg)
    u = np.array(unit, dtype=np.float64)
    tiebreak = tangent_tiebreak(u, seed)
    passes = 0
    pairs = close_pairs(u, radius)
    while pairs.shape[0] and passes < config.max_passes:
        g = density_gradient(u, pairs, tiebreak)
        movers = np.unique(pairs)  # only points with a neighbour inside the radius move
        norm = np.linalg.norm(g[movers], axis=1, keepdims=True)
        v = u[movers] - g[movers] * (config.step * radius / np.maximum(norm, 1.0))
        u[movers] = v / np.linalg.norm(v, axis=1, keepdims=True)
        passes += 1
        pairs = close_pairs(u, radius)
    return u, passes, int(pairs.shape[0])


def spread_within_shells(unit: np.ndarray, shell: np.ndarray, config: SpreadConfig) -> SpreadResult:
    """Spread the points of every shell (module docstring). ``unit`` [N, 3], ``shell`` [N]."""
    u0 = np.asarray(unit, dtype=np.float64)
    shell = np.asarray(shell)
    out = u0.copy()
    passes = pairs_left = 0
    order = np.argsort(shell, kind="stable")
    bounds = np.flatnonzero(np.diff(shell[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size < 2:
            continue
        new, p, left = spread_shell(u0[rows], config, config.seed + int(shell[rows[0]]))
        out[rows] = new
        passes, pairs_left = max(passes, p), pairs_left + left
    moved = angle_between(u0, out) if u0.shape[0] else np.zeros(0)
    return SpreadResult(out, moved, passes, int((moved > 0).sum()), pairs_left)


def nearest_in_shell(unit: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Angle (radians) [N] from each point to its nearest neighbour in the same shell (inf when
    alone in its shell)."""
    from scipy.spatial import cKDTree

    unit = np.asarray(unit, dtype=np.float64)
    shell = np.asarray(shell)
    out = np.full(unit.shape[0], np.inf)
    order = np.argsort(shell, kind="stable")
    bounds = np.flatnonzero(np.diff(shell[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size < 2:
            continue
        _, nn = cKDTree(unit[rows]).query(unit[rows], k=2)
        out[rows] = angle_between(unit[rows], unit[rows][nn[:, 1]])
    return out


def crowding(unit: np.ndarray, shell: np.ndarray, angles_deg=CROWDING_ANGLES_DEG) -> dict:
    """Share of points whose nearest same-shell neighbour is closer than each angle:
    ``{"crowding_0.01deg": f, "crowding_0.5deg": f}`` (0.0 for no points)."""
    nearest = nearest_in_shell(unit, shell)
    n = max(nearest.size, 1)
    return {f"crowding_{a:g}deg": float((nearest < np.deg2rad(a)).sum() / n) for a in angles_deg}


def cell_occupancy(unit: np.ndarray, shell: np.ndarray) -> dict:
    """Max / mean occupancy of HEALPix equal-area cells per shell (healpy, nested order):
    ``{"occupancy_max_over_mean_median": ..., "occupancy_max_over_mean_max": ...}`` over the
    shells with at least 12 points (nside per shell: module docstring)."""
    import healpy

    unit = np.asarray(unit, dtype=np.float64)
    shell = np.asarray(shell)
    ratios = []
    for s in np.unique(shell):
        rows = np.flatnonzero(shell == s)
        if rows.size < 12:
            continue
        nside = 1 << int(np.floor(np.log2(np.sqrt(rows.size / 12.0))))
        pix = healpy.vec2pix(nside, *unit[rows].T, nest=True)
        counts = np.bincount(pix, minlength=12 * nside * nside)
        ratios.append(counts.max() / counts.mean())
    if not ratios:
        return {"occupancy_max_over_mean_median": 0.0, "occupancy_max_over_mean_max": 0.0}
    return {
        "occupancy_max_over_mean_median": float(np.median(ratios)),
        "occupancy_max_over_mean_max": float(np.max(ratios)),
    }
