"""Adjacency (2-gram nodes, 3-gram edges) vs a hand-worked example and a dict-of-counts
reference; shard + merge equals the whole-corpus build."""

import math
from collections import Counter

import numpy as np
import pytest

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import synthetic_patches as sp

S, E = ng.START, ng.END


def build(sequences, alpha=adj.DEFAULT_ALPHA):
    c = sp.from_sequences(sequences)
    return adj.build(ng.index_sequences(c.patches, c.offsets).table, alpha)


def as_dicts(a: adj.Adjacency):
    """{(left, right): F2}, {(left, mid, right): (F3, weight)} with sentinels spelled out."""
    toks = a.tokens.to_pylist()
    name = lambda i: "<S>" if i == ng.START_ID else "<E>" if i == ng.END_ID else toks[i]  # noqa: E731
    nodes = {
        (name(l), name(r)): int(c)
        for (l, r), c in zip(a.nodes.tolist(), a.node_counts, strict=True)
    }
    edges = {}
    for src in range(a.n_nodes):
        for e in range(a.indptr[src], a.indptr[src + 1]):
            l, m = a.nodes[src]
            r = a.nodes[a.indices[e]][1]
            assert a.nodes[a.indices[e]][0] == m  # edge (a,b) → (b,c)
            edges[(name(l), name(m), name(r))] = (int(a.counts[e]), float(a.weights[e]))
    return nodes, edges


def test_hand_worked_example():
    # "a b c" and "a b d" and "a b c": node (a,b) seen 3 times, continues with c twice, d once
    a = build([[b"a", b"b", b"c"], [b"a", b"b", b"d"], [b"a", b"b", b"c"]], alpha=0.5)
    nodes, edges = as_dicts(a)
    assert nodes == {
        ("<S>", b"a"): 3,
        (b"a", b"b"): 3,
        (b"b", b"c"): 2,
        (b"b", b"d"): 1,
        (b"c", "<E>"): 2,
        (b"d", "<E>"): 1,
    }
    assert set(edges) == {
        ("<S>", b"a", b"b"),
        (b"a", b"b", b"c"),
        (b"a", b"b", b"d"),
        (b"b", b"c", "<E>"),
        (b"b", b"d", "<E>"),
    }
    f3, w = edges[(b"a", b"b", b"c")]
    assert f3 == 2 and w == pytest.approx(math.log((2 + 0.5) / (3 + 0.5 * 2)))
    f3, w = edges[(b"a", b"b", b"d")]
    assert f3 == 1 and w == pytest.approx(math.log((1 + 0.5) / (3 + 0.5 * 2)))
    f3, w = edges[("<S>", b"a", b"b")]
    assert f3 == 3 and w == pytest.approx(math.log((3 + 0.5) / (3 + 0.5 * 1)))  # = 0
    assert a.outdeg.tolist() == [1, 2, 1, 1, 0, 0]
    # CSR invariants
    assert a.indptr[0] == 0 and a.indptr[-1] == a.n_edges
    assert a.indptr.dtype == np.int64 and a.weights.dtype == np.float64


def test_counts_match_reference_and_weights_are_normalised():
    full = sp.bundled_corpus(mode="content")
    seqs = [full.article_patches(i) for i in range(0, 79, 5)]
    a = build(seqs)
    f2, f3 = Counter(), Counter()
    for seq in seqs:
        parts = [S] + seq + [E]
        f2.update(zip(parts, parts[1:], strict=False))
        f3.update(zip(parts, parts[1:], parts[2:], strict=False))
    nodes, edges = as_dicts(a)
    spell = lambda x: "<S>" if x is S else "<E>" if x is E else x  # noqa: E731
    assert nodes == {tuple(spell(x) for x in k): v for k, v in f2.items()}
    assert {k: v[0] for k, v in edges.items()} == {
        tuple(spell(x) for x in k): v for k, v in f3.items()
    }
    # smoothed transition probabilities of every node with out-edges sum to 1
    probs = np.exp(a.weights)
    has_out = a.outdeg > 0
    sums = np.add.reduceat(probs, a.indptr[:-1][has_out])
    assert np.allclose(sums, 1.0)
    assert np.all(a.weights <= 0)
    # a node (y, END) never has out-edges, (START, x) never in-edges
    ends = a.nodes[:, 1] == ng.END_ID
    assert np.all(a.outdeg[ends] == 0)
    assert not np.isin(np.flatnonzero(a.nodes[:, 0] == ng.START_ID), a.indices).any()


def test_shard_merge_equals_whole_corpus_build():
    full = sp.bundled_corpus(mode="content")
    seqs = [full.article_patches(i) for i in range(0, 79, 2)] + [[b"\x00"], [b"_START_", b"x"]]
    whole = build(seqs)
    shards = [build(seqs[i::4]) for i in range(4)]
    assert adj.merge(shards).equal(whole)
    assert adj.merge([adj.merge(shards[:2]), adj.merge(shards[2:])]).equal(whole)  # associative
    assert adj.merge(shards[::-1]).equal(whole)  # commutative
    assert adj.merge([whole]).equal(whole)


def test_merge_rejects_mixed_alpha_and_empty_input():
    with pytest.raises(ValueError, match="alpha"):
        adj.merge([build([[b"a"]], 0.5), build([[b"b"]], 1.0)])
    with pytest.raises(ValueError):
        adj.merge([])
    with pytest.raises(ValueError, match="alpha"):
        build([[b"a"]], 0.0)


def test_node_table_and_csr_round_trip():
    a = build([[b"a", b"_START_", b"b\x00"], [b"a", b"b\x00"], [b"z"]])
    table = a.node_table()
    assert table.column_names == [
        "node_id",
        "key",
        "hash",
        "left",
        "right",
        "left_is_start",
        "right_is_end",
        "count",
        "outdeg",
    ]
    keys = table.column("key").to_pylist()
    assert keys[0].startswith(b"_START_\x00")
    assert ng.escape_part(b"_START_") in b"".join(keys)  # the patch, not the sentinel
    back = adj.from_stored(table, a.indptr, a.indices, a.counts, a.weights, a.alpha)
    assert back.equal(a)
    recomputed = adj.from_stored(table, a.indptr, a.indices, a.counts, None, a.alpha)
    assert np.allclose(recomputed.weights, a.weights)


def test_unseen_weight():
    assert adj.unseen_weight(0, 0) == pytest.approx(0.0)
    assert adj.unseen_weight(3, 2, 0.5) == pytest.approx(math.log(0.5 / (3 + 0.5 * 3)))
