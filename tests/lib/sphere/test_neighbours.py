"""Nearest neighbours: approximate kNN lists vs brute force, neighbourhood recall vs a brute-force
reference, and the PCA map against random angles."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_assets.lib.sphere import neighbours
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.sphere.features import evenly_spaced
from tests.lib.sphere.test_thrml_langevin import clustered as clustered_rows
from tests.lib.sphere.test_thrml_langevin import unit
from tests.lib.sphere.test_waterfill import CFG, clustered


def brute_knn(u, k):
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_top_k_is_the_k_largest_in_decreasing_order():
    sims = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(neighbours.top_k(sims, 2), [[1, 3], [0, 2]])
    assert {tuple(sorted(r)) for r in neighbours.top_k(sims, 2, ordered=False)} == {(1, 3), (0, 2)}
    assert neighbours.top_k(sims, 9).shape == (2, 4)  # k capped at the column count


def test_knn_small_is_exact_and_large_is_good():
    u = unit(clustered_rows(60))
    idx, sim = neighbours.approx_knn(u, 5, block=32)
    ref = brute_knn(u, 5)
    assert all(set(a) == set(b) for a, b in zip(idx, ref, strict=True))
    np.testing.assert_allclose(sim, np.take_along_axis(u @ u.T, idx, axis=1), atol=1e-5)

    u = unit(clustered_rows(2000, d=16, k=40, spread=0.05))
    idx, sim = neighbours.approx_knn(u, 8, tables=4, block=32)
    assert idx.shape == (2000, 8) and idx.dtype == np.int32
    assert not np.any(idx == np.arange(2000)[:, None])  # never itself
    assert all(len(set(r)) == 8 for r in idx)  # no duplicates
    np.testing.assert_allclose(sim, np.einsum("id,ikd->ik", u, u[idx]), atol=1e-5)
    ref = brute_knn(u, 8)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(idx, ref, strict=True)])
    assert recall > 0.5
    assert neighbours.approx_knn(u[:1], 5)[0].shape == (1, 0)


def test_neighbourhood_recall_against_brute_force():
    x, _ = clustered(400, d=12)
    rng = np.random.default_rng(5)
    unit = rng.standard_normal((400, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    got = neighbours.neighbourhood_recall(x, unit, k=10, n_queries=50)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = evenly_spaced(400, 50)
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
    assert neighbours.neighbourhood_recall(dup, np.tile([[0.0, 0.0, 1.0]], (50, 1))) == 1.0
    # a map that is the embedding itself (3-D data) preserves every neighbourhood
    y = rng.standard_normal((300, 3))
    assert neighbours.neighbourhood_recall(y, y / np.linalg.norm(y, axis=1, keepdims=True)) == 1.0


@pytest.mark.slow  # a full placement of 1500 points
def test_pca_map_preserves_more_neighbours_than_random_angles():
    x, _ = clustered(1500, d=24, k=12, spread=0.1)
    p = wf.place(x, config=CFG)
    pca = neighbours.neighbourhood_recall(x, p.start_unit)
    placed = neighbours.neighbourhood_recall(x, p.unit)
    rnd = neighbours.neighbourhood_recall(x, neighbours.random_unit(1500))
    assert pca > 3 * rnd
    assert placed >= 0.9 * pca
