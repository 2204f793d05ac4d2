"""Embedding features: the PCA-3 sphere map and the chunked feature pass vs float64 references."""

from __future__ import annotations

import numpy as np

from sphere_assets.lib.sphere.features import embedding_features, fit_sphere_map
from tests.lib.sphere.test_waterfill import clustered


def test_sphere_map_is_pca_of_unit_vectors():
    x, _ = clustered(3000, d=20)
    smap = fit_sphere_map(x, sample_size=1000)
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
    one = fit_sphere_map(np.ones((1, 5), np.float32))
    dup = fit_sphere_map(np.ones((10, 5), np.float32))
    np.testing.assert_allclose(one.components, np.eye(5)[:, :3])
    np.testing.assert_allclose(dup.components, np.eye(5)[:, :3])
    small = fit_sphere_map(np.eye(2, dtype=np.float32))  # D < 3: zero third column
    assert small.components.shape == (2, 3) and np.all(small.components[:, 2] == 0)


def test_embedding_features_against_float64_reference():
    x, _ = clustered(500, d=16)
    x[3] = 0.0  # zero row: concentration 0, direction from -mean only
    x[7] *= 1e21  # float32 squares overflow: must be recomputed exactly
    smap = fit_sphere_map(x)
    norm, conc, unit = embedding_features(x, smap)
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
