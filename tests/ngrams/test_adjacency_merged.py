"""adjacency_merged materialized from synthetic blt_patches: the global checks (restore quality
included), equality with the whole-corpus graph and context counts, DuckDB node totals, and
restore through the warehouse loaders."""

import duckdb

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import synthetic_patches as sp
from sphere_assets.ngrams import io
from sphere_assets.ngrams.contract import ADJACENCY_MERGED
from sphere_resources.store import Warehouse
from tests.ngrams.materialize import SPAN, expected_token_id


def test_global_checks_pass(materialized):
    _, result = materialized
    checks = {ev.check_name: ev for ev in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "ngram_vocabulary_merge_consistent",
        "adjacency_merged_equals_whole",
        "restore_quality",
    }
    assert all(ev.passed for ev in checks.values()), {k: v.metadata for k, v in checks.items()}
    assert checks["restore_quality"].metadata["exact_at_1"].value >= 0.95


def test_merged_graph_and_context_equal_the_whole_corpus(materialized, corpus):
    root, _ = materialized
    seqs = [corpus[a] for a in sorted(corpus)]
    whole = sp.from_sequences(seqs)
    expected = ng.index_sequences(whole.patches, whole.offsets).table
    merged = io.load_adjacency(Warehouse(root), ADJACENCY_MERGED, None)
    assert merged.equal(adj.build(expected))
    # shard context counts merged == counting the whole corpus at once; a 6-gram spot check
    merged_context = io.load_context(Warehouse(root), ADJACENCY_MERGED, None)
    assert merged_context.equal(cm.count_patch_contexts(whole.patches, whole.offsets))
    assert merged_context.max_order == cm.DEFAULT_MAX_ORDER
    scorer = cm.ContextScorer(merged_context, expected.tokens)
    first = [ng.START_ID] + [expected_token_id(expected, x) for x in seqs[0][:5]]
    brute = sum(
        1
        for seq in seqs
        for i in range(len(seq) + 2 - 5)
        if ([b"_START_"] + seq + [b"_END_"])[i : i + 6] == [b"_START_"] + seqs[0][:5]
    )
    assert scorer.count(tuple(first)) == brute >= 1

    # DuckDB over the Hive layout: the merged node table counts every 2-gram occurrence
    con = duckdb.connect()
    by_vocab = con.sql(
        f"select n, sum(count) from read_parquet('{root}/ngram_vocabulary/*.parquet') group by n order by n"
    ).fetchall()
    nodes = con.sql(
        f"select count(*), sum(count) from read_parquet('{root}/adjacency_merged/*.parquet')"
    ).fetchall()
    assert nodes == [(merged.n_nodes, by_vocab[1][1])]


def test_restore_a_stored_span_through_the_loaders(materialized, corpus):
    root, _ = materialized
    store = Warehouse(root)
    index = io.load_restore_index(store)
    article_id = sorted(corpus)[1]
    h, _ = io.load_stored_span(store, article_id, 0)
    assert index.context is not None and index.context.max_order == cm.DEFAULT_MAX_ORDER
    out = rs.restore(h, index, length=SPAN)
    assert out.ok and out.candidates[0].patches == corpus[article_id][:SPAN]
    assert out.report.length == SPAN and out.report.context_order == cm.DEFAULT_MAX_ORDER


def test_restore_index_p_other_than_stored(materialized, corpus):
    root, _ = materialized
    store = Warehouse(root)
    index = io.load_restore_index(store, 12)
    seq = corpus[sorted(corpus)[0]][:32]
    out = rs.restore(ng.hllset_of_patches(seq, 12), index)
    assert out.candidates[0].patches == seq
