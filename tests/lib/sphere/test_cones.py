"""Cone queries (lib/sphere/cones.py) against brute force over every point and healpy."""

from __future__ import annotations

import math

import healpy as hp
import numpy as np
import pytest

from sphere_assets.lib.sphere import cones


def cloud(n: int, seed: int, n_shells: int = 40):
    """Clustered unit vectors (float32 xyz on radii 1..2, as stored) and shells."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, 3))
    v = centres[rng.integers(0, 12, n)] + 0.35 * rng.standard_normal((n, 3))
    v = np.vstack([v, rng.standard_normal((n // 4, 3))])  # and some uniform background
    r = rng.uniform(1.0, 2.0, v.shape[0])
    xyz = (v / np.linalg.norm(v, axis=1, keepdims=True) * r[:, None]).astype(np.float32)
    return cones.unit_vectors(xyz), rng.integers(0, n_shells, v.shape[0])


@pytest.fixture(scope="module")
def points():
    unit, shell = cloud(20_000, 0)
    return unit, shell, cones.build_cone_index(unit, shell, band_width=8)


def test_index_layout_is_csr_over_healpix_cell_and_band(points):
    unit, shell, index = points
    n = unit.shape[0]
    assert index.nside == cones.auto_nside(n) and index.n_bands == int(shell.max()) // 8 + 1
    assert index.offsets[0] == 0 and index.offsets[-1] == n
    assert np.all(np.diff(index.offsets) >= 0)
    np.testing.assert_array_equal(np.sort(index.row), np.arange(n))
    np.testing.assert_array_equal(index.unit, unit[index.row])
    np.testing.assert_array_equal(index.shell, shell[index.row])
    cell = hp.vec2pix(index.nside, *unit[index.row].T)
    np.testing.assert_array_equal(index.cell(), cell)
    key = cell * index.n_bands + shell[index.row] // 8
    assert np.all(np.diff(key) >= 0)


def test_random_cones_equal_brute_force(points):
    unit, shell, index = points
    rng = np.random.default_rng(1)
    for i in range(300):
        d = rng.standard_normal(3)
        alphas = np.deg2rad(rng.uniform(1.0, 30.0, 3))
        band = None if i % 3 == 0 else tuple(sorted(rng.integers(0, 45, 2).tolist()))
        for m, a in zip(cones.cone_query(index, d, alphas, band), alphas, strict=True):
            want = cones.brute_force_cone(unit, shell, d, a, band)
            np.testing.assert_array_equal(np.sort(m.rows), want)
            np.testing.assert_array_equal(np.diff(m.positions) > 0, True)
            assert m.candidates >= m.rows.size


def test_poles_and_phi_wrap_around():
    rng = np.random.default_rng(2)
    # points hugging the poles and both sides of phi = 0
    th = np.concatenate(
        [
            rng.uniform(0, 0.05, 500),
            rng.uniform(math.pi - 0.05, math.pi, 500),
            rng.uniform(0.5, 2.5, 2000),
        ]
    )
    ph = np.concatenate(
        [rng.uniform(0, 2 * math.pi, 1000), np.mod(rng.normal(0.0, 0.03, 2000), 2 * math.pi)]
    )
    unit = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], 1)
    unit = cones.unit_vectors(unit.astype(np.float32))
    shell = rng.integers(0, 8, unit.shape[0])
    index = cones.build_cone_index(unit, shell, nside=32, band_width=4)
    tests = [(0.0, 0.0), (math.pi, 0.0), (1.5, 0.0), (1.5, 2 * math.pi - 1e-4), (1.0, 1e-4)]
    for theta, phi in tests:
        d = cones.direction(theta, phi)
        for a in (1.0, 2.0, 5.0, 20.0):
            (m,) = cones.cone_query(index, d, math.radians(a))
            want = cones.brute_force_cone(unit, shell, d, math.radians(a))
            np.testing.assert_array_equal(np.sort(m.rows), want)
    # a cone at phi just below 2 pi catches points on both sides of the seam
    (m,) = cones.cone_query(index, cones.direction(1.5, 2 * math.pi - 1e-4), math.radians(3))
    phis = np.mod(np.arctan2(unit[m.rows, 1], unit[m.rows, 0]), 2 * math.pi)
    assert (phis < 0.1).any() and (phis > 2 * math.pi - 0.1).any()


def test_aperture_zero_and_180(points):
    unit, shell, index = points
    (m,) = cones.cone_query(index, unit[17], 0.0)
    assert 17 in m.rows.tolist()
    np.testing.assert_array_equal(np.sort(m.rows), cones.brute_force_cone(unit, shell, unit[17], 0))
    assert np.all(m.dot >= 1.0)
    (m,) = cones.cone_query(index, np.array([0.3, -0.2, 0.9]), math.pi)
    np.testing.assert_array_equal(np.sort(m.rows), np.arange(unit.shape[0]))
    (m,) = cones.cone_query(index, np.array([0.3, -0.2, 0.9]), math.pi, shells=(3, 5))
    np.testing.assert_array_equal(np.sort(m.rows), np.flatnonzero((shell >= 3) & (shell <= 5)))


def test_empty_bands_and_bad_input(points):
    unit, shell, index = points
    d = np.array([1.0, 0.0, 0.0])
    assert cones.cone_query(index, d, 0.5, shells=(500, 600))[0].rows.size == 0
    assert cones.cone_query(index, d, 0.5, shells=(9, 3))[0].rows.size == 0
    assert cones.cone_query(index, d, [])[:] == []
    with pytest.raises(ValueError, match="zero vector"):
        cones.cone_query(index, np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="aperture"):
        cones.cone_query(index, d, -0.1)
    empty = cones.build_cone_index(np.zeros((0, 3)), np.zeros(0, np.int32))
    assert cones.cone_query(empty, d, 1.0)[0].rows.size == 0


def test_pixel_centres_match_healpy_query_disc():
    """Cones over the centres of every HEALPix pixel are healpy's non-inclusive query_disc
    (the pixels whose centre lies inside the disc), an independent implementation."""
    nside = 64
    unit = np.stack(hp.pix2vec(nside, np.arange(12 * nside * nside)), axis=1)
    shell = np.zeros(unit.shape[0], np.int32)
    index = cones.build_cone_index(unit, shell, nside=8)
    rng = np.random.default_rng(5)
    for _ in range(100):
        d = cones.unit_vectors(rng.standard_normal((1, 3)))[0]
        a = math.radians(rng.uniform(1.0, 30.0))
        (m,) = cones.cone_query(index, d, a)
        np.testing.assert_array_equal(np.sort(m.rows), np.sort(hp.query_disc(nside, d, a)))


def test_auto_nside_and_aperture_for_count():
    assert cones.auto_nside(0) == 1 and cones.auto_nside(1_000_000) == 128
    assert 12 * cones.auto_nside(96_000) ** 2 * 16 >= 96_000
    with pytest.raises(ValueError, match="power of two"):
        cones.build_cone_index(np.eye(3), np.zeros(3, np.int32), nside=3)
    a = cones.aperture_for_count(1_000_000, 2000)
    assert (1 - math.cos(a)) / 2 == pytest.approx(0.002)
    assert cones.aperture_for_count(10, 20) == math.pi
    assert cones.shell_counts(np.array([3, 3, 7])) == {3: 2, 7: 1}
