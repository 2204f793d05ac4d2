"""Restore: exact on small spans, cycles terminate, unknown bits give an empty result with a
reason, deterministic, report fields; the round-trip law via re-ingestion."""

import numpy as np
import pytest

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import synthetic_patches as sp

EXTRA = [
    [b"x", b"y", b"x", b"y", b"x", b"y"],  # repeated 3-grams: a cycle
    [b"a", b"b", b"a", b"c", b"a", b"d"],  # repeated patch, distinct 3-grams
    [b"p", b"X", b"Y", b"q", b"X", b"Y", b"r"],  # repeated 2-gram, distinct 3-grams
    [b"Hel", b"lo", b" wor", b"ld"],
    [b"solo"],
    [b"A", b"B", b"C", b"A", b"B", b"C"],  # a repeated 3-gram: no trail covers the set
]


@pytest.fixture(scope="module")
def corpus():
    full = sp.bundled_corpus(mode="random", seed=1)
    return sp.from_sequences(
        [full.article_patches(i) for i in range(len(full.article_ids))] + EXTRA, "test"
    )


@pytest.fixture(scope="module")
def table(corpus):
    return ng.index_sequences(corpus.patches, corpus.offsets).table


@pytest.fixture(scope="module")
def index10(table):
    return rs.RestoreIndex.build(table, 10)


def set_determined(span) -> bool:
    """No 2-gram repeats: the true 3-grams then form a simple START→END path, which is the
    only ordering with the span's n-gram set.  (With repeated 2-grams, segments between the
    repeats can be swapped without changing the set; with repeated 3-grams the multiplicity
    is lost — no restore can be exact there.)"""
    grams = ng.reference_keys(span)[2]
    return len(set(grams)) == len(grams)


def spans(corpus, length, count, seed):
    """``count`` random spans whose ordering their n-gram set determines."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(corpus.offsets)
    ok = np.flatnonzero(lengths >= length)
    out = []
    while len(out) < count:
        a = int(ok[rng.integers(ok.size)])
        start = int(rng.integers(0, lengths[a] - length + 1))
        span = corpus.article_patches(a)[start : start + length]
        if set_determined(span):
            out.append(span)
    return out


@pytest.mark.parametrize("length", [2, 8, 32, 64])
def test_restore_is_exact_on_small_spans(corpus, index10, length):
    for span in spans(corpus, length, 6, seed=length):
        h = ng.hllset_of_patches(span, 10)
        result = rs.restore(h, index10, k=3, verify=True)
        assert result.ok, result.reason
        top = result.candidates[0]
        assert top.patches == span
        assert top.text == b"".join(span).decode("utf-8", errors="replace")
        assert top.roundtrip is True
        assert top.edge_coverage == 1.0 and top.n_edges == length
        assert 0 < top.confidence <= 1.0
        r = result.report
        assert r.coverage == 1.0 and r.n_validated_edges >= length and r.reason is None
        assert r.n_candidates_total >= sum(r.n_set_bits) - r.n_set_bits[0] * 0
        assert r.latency_ms > 0


def test_whole_articles_and_single_patch(index10):
    for seq in ([b"Hel", b"lo", b" wor", b"ld"], [b"solo"]):
        result = rs.restore(ng.hllset_of_patches(seq, 10), index10)
        assert result.ok and result.candidates[0].patches == seq


def test_repeated_patches_and_two_grams_are_restored_exactly(index10):
    for seq in (EXTRA[1], EXTRA[2]):
        result = rs.restore(ng.hllset_of_patches(seq, 10), index10, verify=True)
        assert result.candidates[0].patches == seq
        assert result.candidates[0].roundtrip


def test_cycle_terminates_and_round_trips(index10):
    seq = EXTRA[0]  # x y x y x y: 3-grams (x,y,x) and (y,x,y) repeat
    h = ng.hllset_of_patches(seq, 10)
    result = rs.restore(h, index10, k=5, verify=True)
    assert result.ok
    top = result.candidates[0]
    # a set cannot say how often a 3-gram occurred: the restored trail uses each once
    assert top.roundtrip is True
    assert set(ng.reference_keys(top.patches)[3]) == set(ng.reference_keys(seq)[3])
    assert result.report.depth <= result.report.n_validated_edges + 1


def test_repeated_three_gram_needs_edge_reuse(index10):
    seq = EXTRA[5]  # (A,B,C) occurs twice; the set cannot say so
    h = ng.hllset_of_patches(seq, 10)
    trails = rs.restore(h, index10, verify=True, covering_walk=False)
    assert trails.ok and trails.candidates[0].roundtrip is False  # no trail covers the set
    assert trails.candidates[0].edge_coverage < 1.0
    twice = rs.restore(h, index10, verify=True, max_edge_uses=2, covering_walk=False)
    assert twice.candidates[0].patches == seq and twice.candidates[0].roundtrip
    assert twice.report.max_edge_uses == 2
    walk = rs.restore(h, index10, verify=True)  # default: trails + the covering walk
    assert walk.candidates[0].patches == seq and walk.candidates[0].roundtrip
    with pytest.raises(ValueError, match="max_edge_uses"):
        rs.restore(h, index10, max_edge_uses=0)


def test_covering_walk_by_hand():
    # tokens: 0 START, 1 END, 2 a, 3 b, 4 c — "a b c a b c" has 3-gram (a, b, c) twice
    edges = np.array([[0, 2, 3], [2, 3, 4], [3, 4, 2], [4, 2, 3], [3, 4, 1]], np.int32)
    weights = np.zeros(5)
    (walk,) = rs.covering_walks(edges, weights, 5)
    score, distinct, path = walk
    assert path == [0, 1, 2, 3, 1, 4] and distinct == 5
    # an edge into a dead end (node (b, c) reaches no END) is on no START→END route: dropped
    dead = np.array([[0, 2, 3], [2, 3, 1], [2, 3, 4]], np.int32)
    assert rs.covering_walks(dead, np.zeros(3), 5) == [(0.0, 2, [0, 1])]


def test_bits_of_no_known_token_give_empty_result_with_reason(index10):
    p = 10
    known = set(index10.bits[0].tolist())
    unknown = np.array([b for b in range(32 << p) if b not in known][:40])
    layer = hs.words_from_bits(unknown, p)
    h = hs.HLLSet(p, np.stack([layer, layer, layer]))
    result = rs.restore(h, index10)
    assert not result.ok and result.candidates == []
    assert "1-gram" in result.reason
    assert result.report.n_candidates[0] == 0


def test_empty_hllset_and_precision_mismatch(index10):
    result = rs.restore(hs.HLLSet.empty(10), index10)
    assert not result.ok and "empty" in result.reason
    with pytest.raises(ValueError, match="P=12"):
        rs.restore(hs.HLLSet.empty(12), index10)


def test_patches_without_their_three_grams_give_reason(index10, table):
    # layer 1 holds known patches, layers 2 and 3 are empty: nothing can be validated
    p = 10
    words1 = hs.words_from_bits(index10.bits[0][:50], p)
    zero = np.zeros_like(words1)
    result = rs.restore(hs.HLLSet(p, np.stack([words1, zero, zero])), index10)
    assert not result.ok and "cross-validation" in result.reason


def test_unseen_text_does_not_crash(index10):
    # known patches in an order the corpus never had: some 3-grams are unknown
    seq = [b"Hel", b"lo", b"solo", b"x", b"ld"]
    result = rs.restore(ng.hllset_of_patches(seq, 10), index10, verify=True)
    assert result.report.reason is None or isinstance(result.report.reason, str)
    for cand in result.candidates:
        assert 0.0 <= cand.edge_coverage <= 1.0


def test_restore_is_deterministic_and_index_from_shards_gives_same_results(corpus, table, index10):
    seqs = [corpus.article_patches(i) for i in range(len(corpus.article_ids))]
    shards = [sp.from_sequences(seqs[i::3]) for i in range(3)]
    tables = [ng.index_sequences(s.patches, s.offsets).table for s in shards]
    merged = ng.merge_tables(tables)
    adjacency = adj.merge([adj.build(t) for t in tables])
    index = rs.RestoreIndex.build(merged, 10, adjacency)
    assert np.allclose(index.weight3, index10.weight3)
    for span in spans(corpus, 24, 4, seed=7):
        h = ng.hllset_of_patches(span, 10)
        a = rs.restore(h, index10, k=4)
        b = rs.restore(h, index, k=4)
        c = rs.restore(h, index10, k=4)
        for x, y in ((a, b), (a, c)):
            assert [r.patches for r in x.candidates] == [r.patches for r in y.candidates]
            assert [r.score for r in x.candidates] == [r.score for r in y.candidates]


def test_bit_lookup_csr():
    bits = np.array([5, 3, 5, 0, 3, 5])
    indptr, rows = rs.bit_lookup(bits, 4)
    assert indptr.shape == (32 * 16 + 1,)
    assert rs.rows_for_bits(indptr, rows, np.array([5])).tolist() == [0, 2, 5]
    assert rs.rows_for_bits(indptr, rows, np.array([3, 0, 7])).tolist() == [1, 4, 3]
