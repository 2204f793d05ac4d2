r"""Lateral spreading inside shells, and the crowding it removes (pure: numpy + scipy).

Near-identical patches (the same text in different contexts) get near-identical embeddings and
so the same map direction; the rank start puts equal scores in neighbouring ranks, so they also
share a shell. Such a pile-up is one point to anyone reading the map. Spreading moves the
points of a pile apart *inside their shell* (the shell, and so the balance, never changes) until
no two points of a shell are closer than the spreading radius or the passes run out. Two
methods (``SpreadConfig.method``):

``separate`` (the placement's, ``PLACEMENT_SPREAD``): least-move separation
    Every pair (i, j) of one shell closer than the radius (plus 0.5%) asks to be pushed apart
    along their great circle by its overlap with ``r`` (the radius plus 1%), ``(r - d_ij) / 2``
    each, i away from j. A pass moves every such point by the sum of its pushes over
    ``sqrt(#pairs)`` (a pile of n points is not blown up n-fold), at most ``r / 2``, then looks
    for pairs again; it stops when none is left or after ``max_passes``. This is gradient
    descent on the overlap energy ``sum_pairs (r - d_ij)^2 / 4`` of the shell, i.e. down the
    density of the squared-cone kernel ``(1 - d / r)^2``: a point moves toward lower density,
    only as far as the overlap asks (a pair 0.4 degrees apart moves 0.05 degrees each, not a
    fixed step), and a point with nobody within ``r`` does not move.

    Why least-move: union recall@10 is decided at the scale of the map's neighbourhoods
    (median angle to the 10th angular neighbour 0.2-0.5 degrees on the stdlib corpus), so
    every degree moved costs recall. The fixed-step ``gradient`` method moved every crowded
    point ``step * radius`` per pass however small its overlap (3 passes: up to 0.75
    degrees). Least-move, run to convergence, measured against it on the maps of
    ``bench/sphere_map.py`` (union recall@10 map -> placed, crowding within 0.5 degrees after):
    bundled corpus -6.6% / 0.9% (gradient -10.1% / 3.3%), synthetic 1M -4.6% / 0.25%
    (-9.8% / 0.5%), Python stdlib -29.4% / 4.6% (-36.5% / 9.6%). Tried and dropped on the
    stdlib corpus (all <= 10% crowding): greedy placement on a hex lattice of spacing ``r``
    around each point, first come stays (-32.4%, aligned across shards and shells by
    construction); smoothing the pushes onto every point of the shard within 0.5-1 degrees,
    so a pile's surroundings in other shells move with it (-30.2 to -30.7%); over-relaxation
    (-32.5%). The stdlib loss is structural: 17% of its points have a same-shell twin within
    0.01 degrees and those twins are each other's cosine neighbours (2.2 of a twin's 4.4
    hits are in its own shell), so any shell-respecting separation to 0.5 degrees loses them
    while the neighbourhoods are finer than that; leaving the twins alone gives back recall
    only by leaving crowding above the goal (-21% at 13% crowding, -10% at 24%).

    Exact duplicates (zero angle, no tangent direction) are told apart by a fixed tangent
    direction per point (seeded, so the result is deterministic).

``gradient`` (the default of ``SpreadConfig``: the map's layout, ``sphere_map.py``)
    The kernel sum ``rho_s(x) = sum_j K(angle(x, u_j))`` over the shell's points with the cone
    kernel ``K(d) = max(0, 1 - d / radius)``. Its gradient at u_i is the sum, over the shell's
    points j within ``radius``, of the unit tangent vectors at u_i pointing *towards* u_j, over
    ``radius``. A point moves along ``-grad`` by ``step * radius * |g| / max(|g|, 1)`` where g
    is the sum of those unit vectors: a point with one close neighbour moves ``step * radius``
    away from it, a point inside a pile moves at most as far, a point with nobody within
    ``radius`` does not move.

Why not the band-limited SH density of the water-filling (``density.py``): at the band limit
of the placement (L = 32) its resolution is about 180 / 32 = 5.6 degrees, ten times coarser than
the 0.5 degree pile-ups to remove; the kernel sums are density estimates at the scale that
matters, evaluated exactly over the pairs within the radius (a k-d tree per pass: O(N log N)).

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
METHODS = ("gradient", "separate")
# separation pushes a pair to 1% past the radius and looks for pairs within 0.5% past it: a
# pushed pair is done in one pass (not asked again for the rounding of its last move), and
# float32 storage cannot bring it back under the radius
SEPARATION_MARGIN = 1.01
PAIR_MARGIN = 1.005
SHELL_GAP = 10.0  # 4th k-d tree coordinate per shell: farther apart than any chord (2)


@dataclass(frozen=True)
class SpreadConfig:
    """Knobs of :func:`spread_within_shells` (methods: module docstring)."""

    radius_deg: float = 0.5  # points of one shell closer than this push each other apart
    step: float = 0.5  # gradient: largest move per pass, as a fraction of the radius
    # passes at most (gradient: 3 passes move at most 0.75 degrees, the map's layout sets its
    # own; separate: PLACEMENT_SPREAD)
    max_passes: int = 3
    seed: int = 0
    method: str = "gradient"

    def __post_init__(self):
        if not 0.0 < self.radius_deg < 90.0:
            raise ValueError(f"spreading: radius_deg must be in (0, 90), got {self.radius_deg}")
        if not 0.0 < self.step <= 1.0 or self.max_passes < 0:
            raise ValueError("spreading: need 0 < step <= 1 and max_passes >= 0")
        if self.method not in METHODS:
            raise ValueError(f"spreading: method must be one of {METHODS}, got {self.method!r}")


# the placement's spreading: least-move separation until no pair is left; 16 passes at most
# bring the stdlib corpus (the most crowded measured: 42% within 0.5 degrees) to 4.6%, where
# 10 leave 9.3%; the bundled corpus and the synthetic set converge within them
PLACEMENT_SPREAD = SpreadConfig(method="separate", max_passes=16)


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


def keyed_rows(unit: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """[N, 4] k-d tree points: the direction, then the shell ``SHELL_GAP`` apart per shell, so
    one tree over all shells finds only pairs of one shell."""
    return np.concatenate([unit, SHELL_GAP * shell[:, None].astype(np.float64)], axis=1)


def sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    """Pairs [P, 2] (i < j) in (i, j) order: the sums over them do not depend on tree order."""
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def pairs_after_moves(unit, shell, ever, tree0, chord: float) -> np.ndarray:
    """Pairs of one shell closer than ``chord`` among the current rows, given that only rows
    ``ever`` in a pair have moved: the rows never in a pair keep their start (``tree0``) and
    no two of them are close (else they would have been a pair), so every pair holds a moved
    row: pairs among the moved rows plus pairs of a moved row and an unmoved one."""
    from scipy.spatial import cKDTree

    moved = np.flatnonzero(ever)
    tree = cKDTree(keyed_rows(unit[moved], shell[moved]))
    inner = moved[tree.query_pairs(chord, output_type="ndarray")]  # moved is sorted: i < j kept
    cross = tree.sparse_distance_matrix(tree0, chord, output_type="ndarray")
    a, b = moved[cross["i"]], cross["j"].astype(np.int64)
    keep = ~ever[b]
    a, b = a[keep], b[keep]
    outer = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    return sorted_pairs(np.concatenate([inner.reshape(-1, 2), outer]))


def separation_pass(
    unit: np.ndarray, pairs: np.ndarray, r: float, tiebreak: np.ndarray
) -> np.ndarray:
    """One least-move pass (module docstring): new unit rows [N, 3]; rows in no pair keep
    their bits."""
    i, j = pairs[:, 0], pairs[:, 1]
    to_j = unit[j] - np.einsum("ij,ij->i", unit[j], unit[i])[:, None] * unit[i]
    dup = np.linalg.norm(to_j, axis=1) < 1e-12
    # duplicates: no direction between them; i goes along -(t_i - t_j), j the other way
    to_j[dup] = tiebreak[i[dup]] - tiebreak[j[dup]]
    to_j /= np.maximum(np.linalg.norm(to_j, axis=1, keepdims=True), 1e-300)
    push = ((r - angle_between(unit[i], unit[j])) / 2.0)[:, None] * to_j
    n = unit.shape[0]
    move = np.stack(
        [np.bincount(j, push[:, k], n) - np.bincount(i, push[:, k], n) for k in range(3)], axis=1
    )
    count = np.bincount(pairs.ravel(), minlength=n)
    movers = np.flatnonzero(count)
    step = move[movers] / np.sqrt(count[movers])[:, None]
    norm = np.linalg.norm(step, axis=1, keepdims=True)
    step *= np.minimum(1.0, (r / 2.0) / np.maximum(norm, 1e-300))  # at most r / 2 a pass
    out = unit.copy()
    v = unit[movers] + step
    out[movers] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def separate_within_shells(unit: np.ndarray, shell: np.ndarray, config: SpreadConfig):
    """Least-move separation of every shell's points (module docstring): (unit, passes, pairs
    left). A pass after the first searches pairs around the rows that have moved only."""
    from scipy.spatial import cKDTree

    radius = np.deg2rad(config.radius_deg)
    r, chord = radius * SEPARATION_MARGIN, chord_of(radius * PAIR_MARGIN)
    u = np.array(unit, dtype=np.float64)
    if u.shape[0] < 2:
        return u, 0, 0
    tiebreak = tangent_tiebreak(u, config.seed)
    tree0 = cKDTree(keyed_rows(u, shell))
    pairs = sorted_pairs(tree0.query_pairs(chord, output_type="ndarray").reshape(-1, 2))
    ever = np.zeros(u.shape[0], bool)
    passes = 0
    while pairs.shape[0] and passes < config.max_passes:
        ever[pairs.ravel()] = True
        u = separation_pass(u, pairs, r, tiebreak)
        passes += 1
        pairs = pairs_after_moves(u, shell, ever, tree0, chord)
    return u, passes, int(pairs.shape[0])


def spread_within_shells(unit: np.ndarray, shell: np.ndarray, config: SpreadConfig) -> SpreadResult:
    """Spread the points of every shell (module docstring). ``unit`` [N, 3], ``shell`` [N]."""
    u0 = np.asarray(unit, dtype=np.float64)
    shell = np.asarray(shell)
    if config.method == "separate":
        out, passes, pairs_left = separate_within_shells(u0, shell, config)
        moved = angle_between(u0, out) if u0.shape[0] else np.zeros(0)
        return SpreadResult(out, moved, passes, int((moved > 0).sum()), pairs_left)
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
