"""Semantic retrieval (lib/sphere/semantic.py) against brute-force cosine (numpy argsort)."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_assets.lib.sphere import cones
from sphere_assets.lib.sphere import semantic as se


def clustered(n: int, dim: int, seed: int, clusters: int = 40, spread: float = 0.4):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = c[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return se.unit_rows(x)


def truth(q, x, k):
    s = q @ x.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k], np.sort(s, axis=1)[:, ::-1][:, :k]


def test_exact_top_k_equals_argsort_over_chunks(monkeypatch):
    x = clustered(3000, 24, 0)
    q = clustered(20, 24, 1)
    monkeypatch.setattr(se, "CHUNK_ROWS", 700)  # several chunks merged
    rows, cos = se.top_k_cosine(q, x, 10)
    want_rows, want_cos = truth(q, x, 10)
    np.testing.assert_allclose(cos, want_cos, rtol=1e-5)
    assert se.recall_at_k(rows, want_rows) == 1.0
    assert np.all(np.diff(cos, axis=1) <= 0)
    r, c = se.top_k_cosine(q[:1], x[:3], 10)
    assert r.shape == (1, 3)


def test_rerank_and_merge_are_exact():
    x = clustered(2000, 16, 2)
    q = x[5] + 0.01
    q = se.unit_rows(q)[0]
    subset = np.arange(0, 2000, 3)
    rows, cos = se.rerank(q, x, subset, 7)
    s = x[subset] @ q
    np.testing.assert_array_equal(rows, subset[np.argsort(-s, kind="stable")[:7]])
    # two "shards" merged = global top-k
    a, b = x[:1200], x[1200:]
    ra, ca = se.top_k_cosine(q[None], a, 10)
    rb, cb = se.top_k_cosine(q[None], b, 10)
    merged = se.merge_top_k([(0, ra[0], ca[0]), (1, rb[0], cb[0])], 10)
    got = [r if sh == 0 else r + 1200 for sh, r, _ in merged]
    want, _ = truth(q[None], x, 10)
    assert set(got) == set(want[0].tolist())
    assert [c for *_, c in merged] == sorted([c for *_, c in merged], reverse=True)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_recall_and_serialisation(kind):
    x = clustered(20_000, 32, 3)
    q = se.unit_rows(x[::200] + 0.05 * np.random.default_rng(4).standard_normal((100, 32)))
    index = se.build_ann(x, se.AnnParams(kind=kind))
    found, cos = se.ann_search(index, q, 10)
    want, want_cos = truth(q, x, 10)
    assert se.recall_at_k(found, want) >= 0.95
    # IVF-Flat / HNSW-Flat scores are the exact inner products of the rows they return
    np.testing.assert_allclose(cos, np.einsum("md,mkd->mk", q, x[found]), atol=1e-5)
    again = se.deserialize_ann(se.serialize_ann(index))
    np.testing.assert_array_equal(se.ann_search(again, q, 10)[0], found)


def test_ivf_with_every_list_probed_is_exact():
    x = clustered(5000, 16, 5)
    q = x[:30]
    index = se.build_ann(x, se.AnnParams(kind="ivf", nlist=32))
    se.set_search_params(index, nprobe=32)
    found, _ = se.ann_search(index, q, 10)
    assert se.recall_at_k(found, truth(q, x, 10)[0]) == 1.0
    with pytest.raises(ValueError, match="ANN kind"):
        se.build_ann(x, se.AnnParams(kind="lsh"))


def test_cone_candidate_search_widens_and_reranks():
    x = clustered(8000, 16, 6)
    rng = np.random.default_rng(7)
    # a "map": the first 3 coordinates of the unit rows (PCA-like), normalised
    unit = cones.unit_vectors(x[:, :3].astype(np.float64))
    index = cones.build_cone_index(unit, np.zeros(8000, np.int32))
    q = x[123]
    rows, cos, cand = se.cone_candidate_search(q, unit[123], index, x, 10, want=500)
    assert cand.rows.size >= 500 and rows[0] == 123
    inside = np.sort(cones.brute_force_cone(unit, np.zeros(8000), unit[123], cand.aperture))
    np.testing.assert_array_equal(np.sort(cand.rows), inside)
    want_rows, _ = se.rerank(q, x, inside, 10)
    np.testing.assert_array_equal(rows, want_rows)
    # the whole sphere: the exact answer
    rows, _, cand = se.cone_candidate_search(q, rng.standard_normal(3), index, x, 10, want=8000)
    assert cand.rows.size == 8000
    assert se.recall_at_k(rows[None], truth(q[None], x, 10)[0]) == 1.0


def test_article_aggregation_hand_made():
    ids = ["a", "b", "a", "c", "b", "b", "d"]
    cos = [0.90, 0.95, 0.93, 0.80, 0.70, 0.60, 0.95]
    out = se.aggregate_articles(ids, cos, 3)
    # b and d tie on 0.95: b has 3 hits, d one; a's best is 0.93 (its 2 hits)
    assert [(a.article_id, a.score, a.hits, a.best) for a in out] == [
        ("b", 0.95, 3, 1),
        ("d", 0.95, 1, 6),
        ("a", 0.93, 2, 2),
    ]
    assert se.aggregate_articles([], [], 5) == []
    assert [a.article_id for a in se.aggregate_articles(["x", "y"], [0.5, 0.5], 2)] == ["x", "y"]


def test_cone_candidates_shrink_on_a_crowded_map():
    """All points within ~2 degrees of one place: the uniform-density first guess holds them
    all, so the cone is halved until it holds between want and 4 want."""
    rng = np.random.default_rng(9)
    d0 = np.array([0.3, 0.4, np.sqrt(0.75)])
    unit = cones.unit_vectors(d0 + 0.02 * rng.standard_normal((20_000, 3)))
    index = cones.build_cone_index(unit, np.zeros(20_000, np.int32))

    def rows_at(a):
        return cones.cone_query(index, d0, a)[0].rows

    cand = se.widen_cone(rows_at, 20_000, 500)
    assert 500 <= cand.rows.size <= 4 * 500 and cand.steps >= 3
    np.testing.assert_array_equal(
        np.sort(cand.rows), cones.brute_force_cone(unit, np.zeros(20_000), d0, cand.aperture)
    )
    # too few everywhere: the whole sphere
    assert se.widen_cone(rows_at, 20_000, 50_000).rows.size == 20_000


def test_ivf_build_is_deterministic():
    """Same rows + seed = the same index file, whatever the thread count."""
    import faiss

    x = clustered(6000, 16, 10)
    first = se.serialize_ann(se.build_ann(x, se.AnnParams()))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        assert se.serialize_ann(se.build_ann(x, se.AnnParams())) == first
    finally:
        faiss.omp_set_num_threads(before)
    assert se.serialize_ann(se.build_ann(x, se.AnnParams(seed=1))) != first
