"""n-gram keys, vectorised extraction/counting, merging and sequence HLLSets vs a per-occurrence
Python reference (reference_keys + collections.Counter + mmh3)."""

import itertools
from collections import Counter

import mmh3
import numpy as np
import pyarrow as pa
import pytest

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import synthetic_patches as sp

ODD_SEQUENCES = [
    [b"a\x00b", b"_START_", b"x", b"\x01", b"x", b"_END_"],
    [],
    [b"q"],
    [b"a\x00b", b"a\x00b", b"a\x00b"],
    [b"\x01\x02", b"\x00", b"\x01\x01", b"_START_\x00"],
]


def reference_counts(sequences):
    ref = {n: Counter() for n in ng.ORDERS}
    for seq in sequences:
        keys = ng.reference_keys(seq)
        for n in ng.ORDERS:
            ref[n].update(keys[n])
    return ref


def table_counts(table):
    return {
        n: dict(zip(table.keys(n).to_pylist(), table.counts[n - 1].tolist(), strict=True))
        for n in ng.ORDERS
    }


@pytest.fixture(scope="module")
def corpus():
    full = sp.bundled_corpus(mode="content")
    return sp.from_sequences([full.article_patches(i) for i in range(0, 79, 4)], "subset")


def test_reference_keys_by_hand():
    keys = ng.reference_keys([b"He", b"llo"])
    assert keys[1] == [b"He", b"llo"]
    assert keys[2] == [b"_START_\x00He", b"He\x00llo", b"llo\x00_END_"]
    assert keys[3] == [b"_START_\x00He\x00llo", b"He\x00llo\x00_END_"]
    assert ng.reference_keys([]) == {1: [], 2: [], 3: []}
    assert ng.reference_keys([b"x"])[3] == [b"_START_\x00x\x00_END_"]


def test_escaping_is_injective_and_invertible():
    alphabet = [
        b"",
        b"\x00",
        b"\x01",
        b"\x01\x02",
        b"\x00\x01",
        b"a",
        b"_START_",
        b"_END_",
        b"\x01\x03_END_",
    ]
    keys = {}
    for parts in itertools.product(alphabet, repeat=2):
        key = ng.SEP.join(ng.escape_part(x) for x in parts)
        assert key not in keys, (parts, keys.get(key))
        keys[key] = parts
        split = key.split(ng.SEP)
        assert tuple(ng.unescape_part(x) for x in split) == parts
    for patch in alphabet:
        esc = ng.escape_part(patch)
        assert b"\x00" not in esc and esc not in (ng.START, ng.END)


@pytest.mark.parametrize("sequences", [ODD_SEQUENCES, [[b"a"]], [[], []]])
def test_index_counts_and_hashes_match_reference(sequences):
    c = sp.from_sequences(sequences)
    table = ng.index_sequences(c.patches, c.offsets).table
    ref = reference_counts(sequences)
    assert table_counts(table) == {n: dict(ref[n]) for n in ng.ORDERS}
    for n in ng.ORDERS:
        keys = table.keys(n).to_pylist()
        assert table.hashes[n - 1].tolist() == [
            mmh3.hash64(k, seed=0, signed=False)[0] for k in keys
        ]


def test_index_on_corpus_matches_reference_and_occurrence_counts(corpus):
    ix = ng.index_sequences(corpus.patches, corpus.offsets)
    seqs = [corpus.article_patches(i) for i in range(len(corpus.article_ids))]
    ref = reference_counts(seqs)
    assert table_counts(ix.table) == {n: dict(ref[n]) for n in ng.ORDERS}
    lengths = np.diff(corpus.offsets)
    nonempty = lengths[lengths > 0]
    assert [g.shape[0] for g in ix.occurrences.grams] == [
        nonempty.sum(),
        (nonempty + 1).sum(),
        nonempty.sum(),
    ]
    for n in ng.ORDERS:  # inverse maps every occurrence to its row
        inv = ix.inverse(n)
        assert np.array_equal(ix.table.grams[n - 1][inv], ix.occurrences.grams[n - 1])


def test_canonical_table_does_not_depend_on_article_order(corpus):
    seqs = [corpus.article_patches(i) for i in range(len(corpus.article_ids))]
    a = sp.from_sequences(seqs)
    b = sp.from_sequences(seqs[::-1])
    ta = ng.index_sequences(a.patches, a.offsets).table
    tb = ng.index_sequences(b.patches, b.offsets).table
    assert ta.canonical_equal(tb)
    # rows are lexicographic by token ids, tokens ascending by bytes
    toks = ta.tokens.to_pylist()
    assert toks[:2] == [ng.START, ng.END] and toks[2:] == sorted(toks[2:])
    for g in ta.grams:
        assert np.all(np.diff(np.lexsort(g.T[::-1])) == 1)


@pytest.mark.parametrize("canonical", [True, False])
def test_wide_three_gram_codes_give_the_same_table(corpus, monkeypatch, canonical):
    """Corpora with >= 2^21 distinct patches code 3-grams as rank(a, b)*T + c; force that path."""
    seqs = [corpus.article_patches(i) for i in range(len(corpus.article_ids))] + ODD_SEQUENCES
    c = sp.from_sequences(seqs)
    expected = ng.index_sequences(c.patches, c.offsets, canonical=canonical)
    monkeypatch.setattr(ng, "_NARROW_TOKENS", 2)
    wide = ng.index_sequences(c.patches, c.offsets, canonical=canonical)
    assert table_counts(wide.table) == table_counts(expected.table)
    if canonical:
        assert wide.table.canonical_equal(expected.table)
    inv = wide.inverse(3)
    assert np.array_equal(wide.table.grams[2][inv], wide.occurrences.grams[2])


def test_first_occurrence_mode_has_same_content(corpus):
    ix = ng.index_sequences(corpus.patches, corpus.offsets, canonical=False)
    ref = reference_counts([corpus.article_patches(i) for i in range(len(corpus.article_ids))])
    assert table_counts(ix.table) == {n: dict(ref[n]) for n in ng.ORDERS}


def test_merge_equals_whole_and_is_associative(corpus):
    seqs = [corpus.article_patches(i) for i in range(len(corpus.article_ids))] + ODD_SEQUENCES
    whole = sp.from_sequences(seqs)
    expected = ng.index_sequences(whole.patches, whole.offsets).table
    shards = [sp.from_sequences(seqs[i::3]) for i in range(3)]
    tables = [ng.index_sequences(s.patches, s.offsets).table for s in shards]
    assert ng.merge_tables(tables).canonical_equal(expected)
    assert ng.merge_tables([ng.merge_tables(tables[:2]), tables[2]]).canonical_equal(expected)
    assert ng.merge_tables([tables[2], ng.merge_tables(tables[1::-1])]).canonical_equal(expected)
    assert ng.merge_tables([]).canonical_equal(ng.empty_table())


def test_table_from_stored_keys_round_trips():
    c = sp.from_sequences(ODD_SEQUENCES)
    table = ng.index_sequences(c.patches, c.offsets).table
    orders = np.concatenate([np.full(table.size(n), n) for n in ng.ORDERS])
    keys = pa.concat_arrays([table.keys(n) for n in ng.ORDERS])
    counts = np.concatenate(table.counts)
    assert ng.table_from_keys(orders, keys, counts).canonical_equal(table)
    # duplicated rows (as from two shards) add up
    doubled = ng.table_from_keys(
        np.concatenate([orders, orders]),
        pa.concat_arrays([keys, keys]),
        np.concatenate([counts, counts]),
    )
    assert all(np.array_equal(a, 2 * b) for a, b in zip(doubled.counts, table.counts, strict=True))
    with pytest.raises(ValueError, match="parts"):
        ng.table_from_keys(np.array([3]), pa.array([b"a\x00b"], pa.binary()), np.array([1]))


def test_sequence_hllsets_match_hashing_reference_keys():
    p = 8
    c = sp.from_sequences(ODD_SEQUENCES)
    ix = ng.index_sequences(c.patches, c.offsets)
    sets = ng.sequence_hllsets(ix, len(ODD_SEQUENCES), p)
    for i, seq in enumerate(ODD_SEQUENCES):
        keys = ng.reference_keys(seq)
        expected = hs.HLLSet.from_hashes(
            [np.array([hs.hash64(k) for k in keys[n]], dtype=np.uint64) for n in ng.ORDERS], p
        )
        assert hs.HLLSet(p, sets[i]) == expected
        if seq:
            assert ng.hllset_of_patches(seq, p) == expected
    assert not sets[1].any()  # the empty sequence


def test_span_offsets_tile_each_sequence():
    offsets = ng.sequence_offsets([5, 0, 3, 8])
    bounds, owner, index = ng.span_offsets(offsets, 3)
    assert bounds.tolist() == [0, 3, 5, 8, 11, 14, 16]
    assert owner.tolist() == [0, 0, 2, 3, 3, 3]
    assert index.tolist() == [0, 1, 0, 0, 1, 2]
    with pytest.raises(ValueError):
        ng.span_offsets(offsets, 0)


def test_bad_offsets_are_rejected():
    with pytest.raises(ValueError, match="offsets"):
        ng.index_sequences([b"a", b"b"], np.array([0, 1]))
    with pytest.raises(ValueError, match="null"):
        ng.index_sequences(pa.array([b"a", None], pa.binary()), np.array([0, 2]))
