"""Context counts (patch n-grams of order 3..N) and their use in restore.

References are independent of the module: a Counter over padded windows hashed with plain
``mmh3`` calls, hand-computed backoff scores, and a span whose n-gram set admits two orderings
that only the longer context tells apart."""

import math
from collections import Counter

import mmh3
import numpy as np
import pytest

from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import synthetic_patches as sp


def piece(token: bytes | str) -> bytes:
    """Token piece hash as 8 little-endian bytes, straight from mmh3 (no module code)."""
    key = {"S": b"_START_", "E": b"_END_"}.get(token, token)
    return mmh3.hash64(key, seed=0, signed=False)[0].to_bytes(8, "little")


def reference_counts(sequences, max_order):
    counts = Counter()
    for seq in sequences:
        if not seq:
            continue
        padded = ["S", *seq, "E"]
        for n in range(3, max_order + 1):
            for i in range(len(padded) - n + 1):
                key = b"".join(piece(t) for t in padded[i : i + n])
                counts[mmh3.hash64(key, seed=0, signed=False)[0]] += 1
    hashes = np.array(sorted(counts), dtype=np.uint64)
    return hashes, np.array([counts[int(h)] for h in hashes], dtype=np.int64)


def counts_of(sequences, max_order=cm.DEFAULT_MAX_ORDER):
    corpus = sp.from_sequences(sequences, "test")
    return cm.count_patch_contexts(corpus.patches, corpus.offsets, max_order)


SEQS = [
    [b"a", b"b", b"c", b"d"],
    [b"a", b"b", b"c", b"e"],
    [b"x", b"b", b"c", b"d", b"a", b"b"],
    [],
    [b"solo"],
    [b"_START_", b"q\x00", b"\x01"],  # needs escaping: still distinct from the sentinel
]


@pytest.mark.parametrize("max_order", [4, 6, 9])
def test_counts_equal_brute_force(max_order):
    got = counts_of(SEQS, max_order)
    # pieces are the escaped patches (as inside 2-/3-gram keys): a patch spelled _START_ is
    # keyed by its escape, never as the sentinel
    want_hashes, want_counts = reference_counts(
        [[ng.escape_part(t) for t in s] for s in SEQS], max_order
    )
    assert got.max_order == max_order
    np.testing.assert_array_equal(got.hashes, want_hashes)
    np.testing.assert_array_equal(got.counts, want_counts)


def test_escaping_matches_the_ngram_keys():
    assert ng.escape_part(b"_START_") != b"_START_"
    assert ng.escape_part(b"q\x00") == b"q\x01\x02"


def test_shard_merge_equals_whole_and_is_order_free():
    whole = counts_of(SEQS)
    parts = [counts_of(SEQS[:2]), counts_of(SEQS[2:4]), counts_of(SEQS[4:])]
    assert cm.merge(parts).equal(whole)
    assert cm.merge(parts[::-1]).equal(whole)
    assert cm.merge([cm.merge(parts[:2]), parts[2]]).equal(whole)
    with pytest.raises(ValueError, match="different max orders"):
        cm.merge([counts_of(SEQS, 4), counts_of(SEQS, 5)])


def test_tensor_round_trip_and_bad_tensors():
    c = counts_of(SEQS)
    back = cm.ContextCounts.from_tensors(c.tensors(), c.tensor_metadata())
    assert back.equal(c)
    meta = c.tensor_metadata()
    with pytest.raises(ValueError, match="format"):
        cm.ContextCounts.from_tensors(c.tensors(), {**meta, "format": "other"})
    with pytest.raises(ValueError, match="ascending"):
        cm.ContextCounts.from_tensors({"hashes": c.hashes[::-1], "counts": c.counts}, meta)
    with pytest.raises(ValueError, match="positive"):
        cm.ContextCounts.from_tensors({"hashes": c.hashes, "counts": c.counts * 0}, meta)


@pytest.mark.parametrize("bad", [1, 3, 17, -1, 4.0])
def test_max_order_is_validated(bad):
    with pytest.raises(ValueError, match="max_order"):
        cm.check_max_order(bad)


def test_off_counts_nothing():
    assert counts_of(SEQS, 0).size == 0


def test_scorer_backoff_by_hand():
    seqs = [[b"a", b"b", b"c", b"d"], [b"a", b"b", b"c", b"e"], [b"x", b"b", b"c", b"d"]]
    table = ng.index_sequences(*_flat(seqs)).table
    scorer = cm.ContextScorer(counts_of(seqs, 5), table.tokens)
    tid = {t: i for i, t in enumerate(table.tokens.to_pylist())}
    a, b, c, d, e, x = (tid[t] for t in (b"a", b"b", b"c", b"d", b"e", b"x"))
    start = ng.START_ID
    # order 5 seen: (S a b c d) once, (S a b c) twice
    assert scorer.step((start, a, b, c), d, -9.0) == pytest.approx(math.log(1 / 2))
    # order 5 unseen (history never seen), order 4 (a b c d): 1 of (a b c) = 2, one backoff
    assert scorer.step((x, a, b, c), d, -9.0) == pytest.approx(math.log(1 / 2) + math.log(0.4))
    # (b c d) after x: order 5 (S x b c d) seen 1 of 1
    assert scorer.step((start, x, b, c), d, -9.0) == pytest.approx(0.0)
    # nothing of order >= 4 seen: the 3-gram weight, backed off twice
    assert scorer.step((start, x, b, c), e, -9.0) == pytest.approx(-9.0 + 2 * math.log(0.4))
    # short history (the first step of a path): only the 3-gram weight is usable
    assert scorer.step((start, a), b, -1.5) == pytest.approx(-1.5 + 2 * math.log(0.4))
    assert scorer.count((a, b, c)) == 2 and scorer.count((b, c, d)) == 2


def _flat(seqs):
    corpus = sp.from_sequences(seqs, "test")
    return corpus.patches, corpus.offsets


# Two articles share the 2-gram (" ", "the"): inside SPAN the segments after its two
# occurrences can be swapped without changing any 1/2/3-gram — the HLLSet and the 3-gram
# scores cannot tell the orderings apart; the 4+-grams of the corpus can.
SPAN = [b"<", b" ", b"the", b"cat", b"sat", b" ", b"the", b"dog", b"ran", b" ", b"the", b">"]
SWAPPED = [b"<", b" ", b"the", b"dog", b"ran", b" ", b"the", b"cat", b"sat", b" ", b"the", b">"]


@pytest.mark.parametrize("truth", [SPAN, SWAPPED], ids=["cat-first", "dog-first"])
def test_context_resolves_a_segment_swap(truth):
    assert ng.hllset_of_patches(SPAN, 12) == ng.hllset_of_patches(SWAPPED, 12)
    corpus = sp.from_sequences([truth, [b"the", b"end"]], "test")
    table = ng.index_sequences(corpus.patches, corpus.offsets).table
    counts = cm.count_patch_contexts(corpus.patches, corpus.offsets)
    plain = rs.RestoreIndex.build(table, 12)
    ranked = rs.RestoreIndex.build(table, 12, context=counts)
    h = ng.hllset_of_patches(truth, 12)
    # 3-gram weights alone: both corpora give the same top-1 (wrong for one of them)
    top_plain = rs.restore(h, plain, k=5, length=len(truth)).candidates[0]
    assert top_plain.edge_coverage == 1.0 and top_plain.patches == SPAN
    with_context = rs.restore(h, ranked, k=5, length=len(truth))
    assert with_context.candidates[0].patches == truth
    assert with_context.report.context_order == cm.DEFAULT_MAX_ORDER
    # use_context=False gives the plain ranking back
    off = rs.restore(h, ranked, k=5, length=len(truth), use_context=False)
    assert off.candidates[0].patches == SPAN and off.report.context_order == 0
    # the two orderings' plain scores are equal: the same edges in another order
    paths = [rs.path_score(*_edges_of(table, ordering)) for ordering in (SPAN, SWAPPED)]
    assert paths[0] == pytest.approx(paths[1])


def _edges_of(table, ordering):
    """(edges, weights, path) of an ordering over its own distinct 3-grams, 3-gram weights."""
    tid = {t: i for i, t in enumerate(table.tokens.to_pylist())}
    ids = [ng.START_ID] + [tid[t] for t in ordering] + [ng.END_ID]
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    distinct = sorted(set(grams))
    graph = rs.RestoreIndex.build(table, 12)
    rows = {tuple(r): i for i, r in enumerate(table.grams[2].tolist())}
    weights = np.array([graph.weight3[rows[g]] for g in distinct])
    edges = np.array(distinct, dtype=np.int32)
    return edges, weights, [distinct.index(g) for g in grams]


def test_length_recovers_repeated_three_grams():
    span = [b"A", b"B", b"C", b"A", b"B", b"C", b"A", b"B", b"C", b"D"]
    corpus = sp.from_sequences([span, [b"C", b"A", b"x"]], "test")
    table = ng.index_sequences(corpus.patches, corpus.offsets).table
    index = rs.RestoreIndex.build(
        table, 10, context=cm.count_patch_contexts(corpus.patches, corpus.offsets)
    )
    h = ng.hllset_of_patches(span, 10)
    trails = rs.restore(h, index, k=5)  # each 3-gram at most once: the repeats are lost
    assert span not in [c.patches for c in trails.candidates]
    exact = rs.restore(h, index, k=5, length=len(span), verify=True)
    assert exact.candidates[0].patches == span and exact.candidates[0].roundtrip
    assert all(len(c.patches) == len(span) for c in exact.candidates)
    assert exact.report.length == len(span) and exact.report.max_edge_uses == 0
    assert not exact.report.length_fallback
    # a length no ordering has: the length-free search answers, and the report says so
    fallback = rs.restore(h, index, k=5, length=2)
    assert fallback.report.length_fallback and fallback.ok
    assert [c.patches for c in fallback.candidates] == [c.patches for c in trails.candidates]


@pytest.mark.parametrize("length", [0, -3, 2.5])
def test_bad_length_is_rejected(length):
    corpus = sp.from_sequences([SPAN], "test")
    table = ng.index_sequences(corpus.patches, corpus.offsets).table
    index = rs.RestoreIndex.build(table, 10)
    with pytest.raises(ValueError, match="length"):
        rs.restore(ng.hllset_of_patches(SPAN, 10), index, length=length)


def test_unlimited_edge_uses_needs_a_length():
    edges = np.array([[ng.START_ID, 2, ng.END_ID]], dtype=np.int32)
    with pytest.raises(ValueError, match="max_edge_uses"):
        rs.beam_search(edges, np.zeros(1), 3, max_edge_uses=0)
