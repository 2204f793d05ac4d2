"""Order keys and the batched k-way merge against the in-memory references (canonical order of
index_sequences, merge_tables, np.unique, count_contexts)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import sorted_merge as sm

# patches that stress the key encoding: separators, escapes, sentinel spellings, prefixes
ALPHABET = [b"a", b"b", b"ab", b"\x00", b"\x01", b"a\x00", b"\x01\x02", b"\xff", b"_START_"]
ALPHABET += [b"_END_", b"_START", b"_", b"\x00\x00"]


def random_table(rng: random.Random, sequences: int) -> ng.NgramTable:
    seqs = [[rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))] for _ in range(sequences)]
    flat = [p for s in seqs for p in s]
    return ng.index_sequences(flat, ng.sequence_offsets([len(s) for s in seqs])).table


def keyed_rows(table: ng.NgramTable) -> pa.Table:
    parts = []
    for n in ng.ORDERS:
        keys = table.keys(n)
        parts.append(
            pa.table(
                {
                    "n": pa.array(np.full(len(keys), n, np.int8)),
                    "key": keys,
                    "count": pa.array(table.counts[n - 1]),
                }
            )
        )
    rows = pa.concat_tables(parts)
    return rows.append_column(
        sm.ORDER_KEY, sm.layered_order_keys(rows["n"].to_numpy(), rows["key"])
    )


@pytest.mark.parametrize("seed", range(6))
def test_order_keys_sort_like_the_canonical_order(seed):
    table = random_table(random.Random(seed), 25)
    keys = keyed_rows(table).column(sm.ORDER_KEY).to_pylist()
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))  # strictly, across orders


@pytest.mark.parametrize("seed", range(6))
def test_kway_merge_equals_merge_tables(seed):
    rng = random.Random(100 + seed)
    tables = [random_table(rng, rng.randint(0, 12)) for _ in range(4)]
    batch = rng.randint(1, 5)
    streams = [
        [t.slice(i, batch) for i in range(0, t.num_rows, batch)]
        for t in (keyed_rows(x) for x in tables)
    ]
    merged = pa.concat_tables(list(sm.merge_sorted(streams, sm.ORDER_KEY)))
    starts = sm.group_starts(merged.column(sm.ORDER_KEY))
    expected = ng.merge_tables(tables)
    want = pa.concat_arrays([expected.keys(n) for n in ng.ORDERS])
    assert merged.column("key").take(pa.array(starts)).combine_chunks().equals(want)
    assert np.array_equal(
        sm.sum_groups(merged.column("count").to_numpy(), starts), np.concatenate(expected.counts)
    )


def test_a_stream_out_of_order_is_named():
    rows = keyed_rows(random_table(random.Random(7), 10))
    shuffled = rows.take(pa.array([1, 0, *range(2, rows.num_rows)]))
    with pytest.raises(sm.StreamOrderError, match="stream 1"):
        list(sm.merge_sorted([[rows], [shuffled]], sm.ORDER_KEY))


def test_rechunk_keeps_rows_and_cuts_equal_sizes():
    tables = [
        pa.table({"x": pa.array(range(a, b), pa.int64())})
        for a, b in ((0, 3), (3, 3), (3, 11), (11, 12))
    ]
    out = list(sm.rechunk(tables, 5))
    assert [t.num_rows for t in out] == [5, 5, 2]
    assert pa.concat_tables(out).column("x").to_pylist() == list(range(12))


def test_merge_sorted_counts_equals_unique_sums():
    rng = np.random.default_rng(1)
    a = np.unique(rng.integers(0, 50, 30).astype(np.uint64))
    b = np.unique(rng.integers(0, 50, 30).astype(np.uint64))
    ca, cb = rng.integers(1, 5, a.size), rng.integers(1, 5, b.size)
    ref_keys, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ref_counts = np.bincount(inverse, weights=np.concatenate([ca, cb]))
    shuffled = rng.permutation(b.size)  # unsorted input: the sorting path
    for args in ((a, ca, b, cb), (b, cb, a, ca), (a, ca, b[shuffled], cb[shuffled])):
        keys, counts = sm.merge_sorted_counts(*args)
        assert keys.dtype == np.uint64 and counts.dtype == np.int64
        assert np.array_equal(keys, ref_keys) and np.array_equal(counts, ref_counts)
    empty = np.zeros(0, np.uint64)
    keys, counts = sm.merge_sorted_counts(empty, np.zeros(0, np.int64), a, ca)
    assert np.array_equal(keys, a) and np.array_equal(counts, ca)


@pytest.mark.parametrize("max_order", [4, 6, 9])
def test_window_total_is_what_count_contexts_counts(max_order):
    rng = random.Random(max_order)
    seqs = [[rng.choice(ALPHABET) for _ in range(rng.randint(1, 12))] for _ in range(20)]
    counted = cm.count_patch_contexts(
        [p for s in seqs for p in s], ng.sequence_offsets([len(s) for s in seqs]), max_order
    )
    assert cm.window_total(np.array([len(s) for s in seqs]), max_order) == counted.counts.sum()


def test_csr_array_problems_agree_with_csr_problems():
    table = random_table(random.Random(3), 30)
    graph = adj.build(table)
    args = (graph.indptr, graph.indices, graph.counts, graph.weights, graph.node_counts, 0.5)
    assert adj.csr_array_problems(*args) == [] == adj.csr_problems(graph)
    bad = graph.weights.copy()
    bad[0] -= 1e-9
    problems = adj.csr_array_problems(*args[:3], bad, *args[4:])
    assert any("weights are not" in p for p in problems)
