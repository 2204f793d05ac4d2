"""The fitted sphere map: PCA-3 against numpy's SVD, bit-identical rows whatever the batch,
neighbourhoods kept better than PCA-3, out-of-sample rows, bad input, drift."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_assets.lib.sphere import sphere_map as sm
from sphere_assets.lib.sphere.neighbours import neighbourhood_recall

FAST = sm.SphereMapConfig(sample_size=4000, steps=150)


def clustered(n: int, dim: int = 16, clusters: int = 20, groups: int = 300, seed: int = 0):
    """Like patch embeddings: broad clusters holding tight groups of near-duplicates (the same
    text in other contexts), with a varying norm. The group layout is fixed (seed 0); ``seed``
    draws the rows."""
    layout = np.random.default_rng(0)
    centres = layout.standard_normal((clusters, dim))
    group_centres = centres[layout.integers(0, clusters, groups)]
    group_centres += 0.35 * layout.standard_normal((groups, dim))
    rng = np.random.default_rng(seed)
    x = group_centres[rng.integers(0, groups, n)] + 0.04 * rng.standard_normal((n, dim))
    return (x * np.exp(0.3 * rng.standard_normal(n))[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    x = clustered(3000)
    return x, sm.fit_sphere_map_model(x, None, FAST)


def test_pca3_is_the_top_three_principal_axes_of_the_unit_rows():
    x = clustered(2000, seed=1)
    model = sm.fit_sphere_map_model(x, None, sm.SphereMapConfig(method="pca3"))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = u - u.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    want = centred @ vt[:3].T
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = sm.map_directions(model, x)
    # principal axes are defined up to sign: compare axis by axis with the sign aligned
    signs = np.sign((got * want).sum(axis=0))
    np.testing.assert_allclose(got, want * signs, atol=2e-5)


def test_rows_are_bit_identical_whatever_the_batch(fitted):
    x, model = fitted
    alone = sm.map_directions(model, x[:700])
    for offset in (1, 3, 17, 64, 1000):
        batch = np.concatenate([clustered(offset, seed=offset + 5), x[:700]])
        np.testing.assert_array_equal(sm.map_directions(model, batch)[offset:], alone)
    # a row by itself, and the same rows across the float32 conversion chunk boundary
    np.testing.assert_array_equal(sm.map_directions(model, x[5:6])[0], alone[5])
    big = np.concatenate([np.zeros((sm.APPLY_CHUNK - 3, x.shape[1]), np.float32), x[:700]])
    np.testing.assert_array_equal(sm.map_directions(model, big)[-700:], alone)


def test_neighbour_map_keeps_neighbourhoods_better_than_pca3_out_of_sample(fitted):
    x, model = fitted
    unseen = clustered(3000, seed=7)  # rows the fit never saw, same distribution
    pca = sm.fit_sphere_map_model(x, None, sm.SphereMapConfig(method="pca3"))
    got = neighbourhood_recall(unseen, sm.map_directions(model, unseen), 10, 500)
    base = neighbourhood_recall(unseen, sm.map_directions(pca, unseen), 10, 500)
    assert got > base + 0.08, (got, base)  # seen: 0.80 vs 0.66
    unit = sm.map_directions(model, unseen)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-12)


@pytest.mark.slow  # a second full fit
def test_fit_is_deterministic(fitted):
    x, model = fitted
    again = sm.fit_sphere_map_model(x, None, FAST)
    for name, arr in model.tensors().items():
        np.testing.assert_array_equal(arr, again.tensors()[name], err_msg=name)


def test_score_uses_the_fit_sample_centres(fitted):
    x, model = fitted
    f = sm.map_scores(model, x)
    # the sample's own scores: both terms centred by the sample -> mean 0
    assert abs(f["score"].mean()) < 1e-9
    # another shard is scored with the same centres, not its own: a brighter shard scores higher
    brighter = sm.map_scores(model, 2 * x)
    np.testing.assert_allclose(
        brighter["score"] - f["score"], np.log(2) / model.score_centre[1], rtol=1e-6
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_rejects_nonfinite_rows_and_empty_input(bad):
    x = clustered(100)
    x[7, 3] = bad
    with pytest.raises(ValueError, match=r"NaN/inf.*rows 7"):
        sm.fit_sphere_map_model(x, None, FAST)
    with pytest.raises(ValueError, match="empty"):
        sm.fit_sphere_map_model(np.zeros((0, 16), np.float32), None, FAST)


def test_dimension_mismatch_names_the_fix(fitted):
    _, model = fitted
    with pytest.raises(ValueError, match="refit the map"):
        sm.map_directions(model, np.zeros((3, 8), np.float32))


def test_drift_is_small_for_the_same_distribution_and_large_for_another(fitted):
    x, model = fitted
    same = sm.drift(model, sm.map_directions(model, clustered(3000, seed=11)))
    rng = np.random.default_rng(3)
    other_rows = rng.standard_normal((3000, 16)).astype(np.float32)  # not the fit's distribution
    other = sm.drift(model, sm.map_directions(model, other_rows))
    assert same < 0.2 < other
    assert 0.0 <= same <= 1.0 and 0.0 <= other <= 1.0


def test_corpus_sample_rows_cover_every_shard_evenly():
    picks = sm.corpus_sample_rows([1000, 10, 3000, 0], 400)
    assert [p.size for p in picks] == [100, 1, 299, 0] or sum(p.size for p in picks) == 400
    assert all(p.min() >= 0 and p.max() < n for p, n in zip(picks, [1000, 10, 3000], strict=False))
    whole = np.concatenate([picks[0], picks[1] + 1000, picks[2] + 1010])
    np.testing.assert_array_equal(whole, ((np.arange(400) + 0.5) * 4010 / 400).astype(int))
