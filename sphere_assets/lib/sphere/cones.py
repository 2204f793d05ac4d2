r"""Exact cone queries over points on the sphere: a HEALPix cell index with CSR offsets.

Pure numpy + healpy (imported inside the functions that use it: ``import healpy`` also loads
matplotlib and astropy, about 1 s).

The cone
    A point with unit vector ``u`` (float64, the stored x, y, z normalised) is inside the cone
    of direction ``d`` (unit, float64) and aperture (half-opening angle) ``alpha`` iff

        ``u_x d_x + u_y d_y + u_z d_z >= cos(alpha)``     (evaluated element-wise in float64)

    or ``alpha >= pi`` (the whole sphere). Boundary ties (the dot product equal to
    ``cos(alpha)`` after rounding) are inside. ``alpha = 0`` keeps the points whose rounded dot
    product is >= 1, i.e. (numerically) the direction itself. The brute-force reference
    (:func:`brute_force_cone`) evaluates the same expression on every point, so index and
    brute force agree exactly, point by point. The angle reported for a point is
    ``arccos(clip(dot, -1, 1))``.

The index (:func:`build_cone_index`)
    Equal-area HEALPix cells (RING scheme, ``nside`` a power of two, ``12 nside^2`` cells) per
    *shell band* (``band = shell // band_width``). The points are sorted by ``key = cell *
    n_bands + band`` (ties: by shell, then by input row), and ``offsets[key] .. offsets[key + 1]``
    are the positions of that (cell, band) in the sorted order (CSR). Cell-major keys make the
    points of one cell in any contiguous range of bands one contiguous slice: a query reads one
    range per candidate cell, with or without a shell band. The index keeps the sorted unit
    vectors, shells and input rows.

A query (:func:`cone_query`)
    ``healpy.query_disc(nside, d, alpha + PAD, inclusive=True)`` gives every cell that overlaps
    the cone (and a few more; ``PAD`` = 1e-9 rad guards against rounding at the cell edges);
    the bands overlapping the shell range ``[s0, s1]`` select one key range per cell; the candidate
    points of those ranges get the exact test above (and ``s0 <= shell <= s1``). Several
    apertures in one call share the candidates of the largest one (multi-scale). Cells are
    data-independent: per-shard indexes with the same ``nside`` merge by concatenation, with no
    refit (the cell list of a query is computed once per ``nside``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD = 1e-9  # radians added to the query_disc radius (the exact filter removes the extra points)
POINTS_PER_CELL = 16  # auto nside: about this many points per cell (all bands together)
MAX_NSIDE = 8192


@dataclass(frozen=True)
class ConeIndex:
    """HEALPix cell index of N points (see module docstring); arrays in index order."""

    nside: int
    band_width: int
    n_bands: int
    offsets: np.ndarray  # int64 [npix * n_bands + 1], key = cell * n_bands + band
    unit: np.ndarray  # float64 [N, 3] unit vectors, index order
    shell: np.ndarray  # int32 [N], index order
    row: np.ndarray  # int64 [N] input row of each index position

    @property
    def npix(self) -> int:
        return 12 * self.nside * self.nside

    @property
    def size(self) -> int:
        return int(self.row.size)

    def cell(self) -> np.ndarray:
        """HEALPix cell (RING) of each index position, from the CSR offsets."""
        keys = np.repeat(np.arange(self.offsets.size - 1, dtype=np.int64), np.diff(self.offsets))
        return keys // self.n_bands


@dataclass(frozen=True)
class ConeMatch:
    """The points inside one cone: index positions (increasing), their input rows and dots."""

    aperture: float  # radians
    positions: np.ndarray  # int64 positions in the index order
    rows: np.ndarray  # int64 input rows
    dot: np.ndarray  # float64 cos(angle to the direction)
    candidates: int  # points the exact test looked at

    def angles(self) -> np.ndarray:
        return np.arccos(np.clip(self.dot, -1.0, 1.0))


def unit_vectors(xyz: np.ndarray) -> np.ndarray:
    """Rows of ``xyz`` [N, 3] as float64 unit vectors (a zero row stays zero and is in no cone
    of aperture < 180 degrees)."""
    v = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    n = np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])
    return v / np.where(n > 0, n, 1.0)[:, None]


def direction(theta: float, phi: float) -> np.ndarray:
    """Unit vector of colatitude ``theta`` and longitude ``phi`` (radians)."""
    st = math.sin(theta)
    return np.array([st * math.cos(phi), st * math.sin(phi), math.cos(theta)], dtype=np.float64)


def angles_of(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta in [0, pi], phi in [0, 2 pi)) of unit vectors."""
    u = np.asarray(unit, dtype=np.float64).reshape(-1, 3)
    theta = np.arccos(np.clip(u[:, 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2 * math.pi)
    return theta, phi


def check_direction(d: np.ndarray) -> np.ndarray:
    """``d`` as a float64 unit 3-vector; ValueError for a wrong shape, NaN or zero vector."""
    v = np.asarray(d, dtype=np.float64).reshape(-1)
    if v.size != 3 or not np.isfinite(v).all():
        raise ValueError(f"a cone direction is 3 finite numbers, got {np.asarray(d).tolist()}")
    n = math.sqrt(float(v @ v))
    if n == 0:
        raise ValueError("a cone direction must not be the zero vector")
    return v / n


def check_aperture(alpha: float) -> float:
    a = float(alpha)
    if not math.isfinite(a) or a < 0:
        raise ValueError(f"aperture must be a finite angle >= 0, got {alpha!r}")
    return a


def inside(dot: np.ndarray, aperture: float) -> np.ndarray:
    """The cone predicate on precomputed dot products (see module docstring)."""
    if aperture >= math.pi:
        return np.ones(np.shape(dot), dtype=bool)
    return dot >= math.cos(aperture)


def dots(unit: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``u . d`` per row, element-wise in float64 (the same rounding for any subset of rows)."""
    return unit[:, 0] * d[0] + unit[:, 1] * d[1] + unit[:, 2] * d[2]


def auto_nside(n_points: int, per_cell: int = POINTS_PER_CELL) -> int:
    """The smallest power of two with ``12 nside^2 >= n_points / per_cell`` (at least 1)."""
    nside = 1
    while 12 * nside * nside * per_cell < n_points and nside < MAX_NSIDE:
        nside *= 2
    return nside


def check_nside(nside: int) -> int:
    if nside < 1 or nside > MAX_NSIDE or nside & (nside - 1):
        raise ValueError(f"nside must be a power of two in [1, {MAX_NSIDE}], got {nside}")
    return int(nside)


def build_cone_index(
    unit: np.ndarray, shell: np.ndarray, nside: int = 0, band_width: int = 16
) -> ConeIndex:
    """The cell index of points ``unit`` [N, 3] (float64 unit vectors) on shells ``shell`` [N]
    (``nside`` 0 = :func:`auto_nside`)."""
    import healpy as hp

    u = np.asarray(unit, dtype=np.float64).reshape(-1, 3)
    s = np.asarray(shell).astype(np.int32, copy=False)
    if s.shape != (u.shape[0],):
        raise ValueError(f"{u.shape[0]} unit vectors but {s.size} shells")
    if s.size and s.min() < 0:
        raise ValueError(f"shell indices must be >= 0, got {int(s.min())}")
    if band_width < 1:
        raise ValueError(f"band_width must be >= 1, got {band_width}")
    nside = check_nside(nside or auto_nside(u.shape[0]))
    npix = 12 * nside * nside
    n_bands = int(s.max()) // band_width + 1 if s.size else 1
    if u.shape[0]:
        cell = hp.vec2pix(nside, u[:, 0], u[:, 1], u[:, 2], nest=False).astype(np.int64)
    else:
        cell = np.zeros(0, np.int64)
    key = cell * n_bands + (s // band_width).astype(np.int64)
    order = np.lexsort((np.arange(u.shape[0]), s, key))
    counts = np.bincount(key, minlength=n_bands * npix)
    offsets = np.zeros(n_bands * npix + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ConeIndex(
        nside=nside,
        band_width=int(band_width),
        n_bands=n_bands,
        offsets=offsets,
        unit=np.ascontiguousarray(u[order]),
        shell=np.ascontiguousarray(s[order]),
        row=order.astype(np.int64),
    )


def candidate_cells(nside: int, d: np.ndarray, aperture: float) -> np.ndarray | None:
    """Cells (RING) overlapping the cone, sorted; None = every cell (aperture near 180)."""
    import healpy as hp

    radius = aperture + PAD
    if radius >= math.pi:
        return None
    return np.sort(hp.query_disc(nside, d, radius, inclusive=True)).astype(np.int64)


def band_range(index: ConeIndex, shells: tuple[int, int] | None) -> tuple[int, int]:
    """Bands [b0, b1) overlapping the shell range (inclusive ``(s0, s1)``; None = all)."""
    if shells is None:
        return 0, index.n_bands
    s0, s1 = shells
    if s1 < s0 or s1 < 0:
        return 0, 0
    b0 = max(int(s0), 0) // index.band_width
    b1 = min(int(s1) // index.band_width + 1, index.n_bands)
    return b0, max(b0, b1)


def gather_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], ends[i])`` (vectorised)."""
    lens = ends - starts
    keep = lens > 0
    starts, lens = starts[keep], lens[keep]
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.cumsum(lens) - lens  # position of each range's first element in the output
    return np.repeat(starts - first, lens) + np.arange(total, dtype=np.int64)


def candidates(
    index: ConeIndex,
    d: np.ndarray,
    aperture: float,
    shells: tuple[int, int] | None = None,
    cells: np.ndarray | None = None,
    all_cells: bool = False,
) -> np.ndarray:
    """Index positions of the points of the cells overlapping the cone, in the bands of the
    shell range (``cells``: a precomputed :func:`candidate_cells` result for this nside)."""
    if cells is None and not all_cells:
        cells = candidate_cells(index.nside, d, aperture)
    b0, b1 = band_range(index, shells)
    if b1 <= b0:
        return np.zeros(0, np.int64)
    nb = index.n_bands
    if cells is None:  # the whole sphere
        if b0 == 0 and b1 == nb:
            return np.arange(index.size, dtype=np.int64)
        cells = np.arange(index.npix, dtype=np.int64)
    return gather_ranges(index.offsets[cells * nb + b0], index.offsets[cells * nb + b1])


def cone_query(
    index: ConeIndex,
    d: np.ndarray,
    apertures: float | Sequence[float],
    shells: tuple[int, int] | None = None,
    cells: np.ndarray | None = None,
) -> list[ConeMatch]:
    """Every point inside each cone (direction ``d``, each aperture in radians), optionally
    only on shells ``s0 <= shell <= s1``; one :class:`ConeMatch` per aperture, in the order
    given. The candidates are gathered once for the largest aperture (``cells``: its
    precomputed :func:`candidate_cells`, e.g. shared by shard indexes of one nside)."""
    d = check_direction(d)
    alphas = [check_aperture(a) for a in np.atleast_1d(np.asarray(apertures, dtype=np.float64))]
    if not alphas:
        return []
    widest = max(alphas)
    all_cells = widest + PAD >= math.pi
    pos = candidates(index, d, widest, shells, cells=cells, all_cells=all_cells)
    dot = dots(index.unit[pos], d)
    if shells is not None:
        sh = index.shell[pos]
        keep = (sh >= shells[0]) & (sh <= shells[1])
        pos, dot = pos[keep], dot[keep]
    out = []
    for a in alphas:
        m = inside(dot, a)
        out.append(ConeMatch(a, pos[m], index.row[pos[m]], dot[m], int(pos.size)))
    return out


def brute_force_cone(
    unit: np.ndarray,
    shell: np.ndarray,
    d: np.ndarray,
    aperture: float,
    shells: tuple[int, int] | None = None,
) -> np.ndarray:
    """Rows (increasing) of every point inside the cone, by testing all of them: the reference
    of :func:`cone_query` (same predicate, same float64 expression)."""
    d = check_direction(d)
    m = inside(dots(np.asarray(unit, dtype=np.float64), d), check_aperture(aperture))
    if shells is not None:
        s = np.asarray(shell)
        m &= (s >= shells[0]) & (s <= shells[1])
    return np.flatnonzero(m)


def shell_counts(shells: np.ndarray, n_shells: int | None = None) -> dict[int, int]:
    """{shell: points} of a result (shells with no point left out)."""
    s = np.asarray(shells, dtype=np.int64)
    if s.size == 0:
        return {}
    counts = np.bincount(s, minlength=n_shells or 0)
    return {int(i): int(c) for i, c in enumerate(counts) if c}


def aperture_for_count(n_points: int, want: int) -> float:
    """The aperture whose cone holds ``want`` of ``n_points`` uniformly spread points
    (the cap area fraction (1 - cos a) / 2 = want / n)."""
    if n_points <= 0 or want >= n_points:
        return math.pi
    frac = max(want, 1) / n_points
    return math.acos(max(-1.0, 1.0 - 2.0 * frac))
