"""ngram_index / ngram_vocabulary / article_hllsets / adjacency / adjacency_merged materialized
into a temporary warehouse from synthetic blt_patches: files on disk, DuckDB, checks, restore."""

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import synthetic_patches as sp
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.ngrams import assets as assets
from sphere_assets.ngrams import restore_cli
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.contract import BLT_PATCHES_SCHEMA
from sphere_resources.contracts import ContractError
from sphere_resources.store import Warehouse, read_safetensors

P = 10
SPAN = 64
SHARD_ASSETS = [
    assets.ngram_index,
    assets.article_hllsets,
    assets.adjacency,
    assets.ngram_index_consistent,
    assets.article_hllsets_consistent,
    assets.adjacency_csr_valid,
]
GLOBAL_ASSETS = [
    assets.ngram_vocabulary,
    assets.adjacency_merged,
    assets.ngram_vocabulary_merge_consistent,
    assets.adjacency_merged_equals_whole,
    assets.restore_quality,
]


def patch_rows(article_id: str, patches: list[bytes]) -> pa.Table:
    n = len(patches)
    lengths = np.array([len(x) for x in patches], np.int64)
    zeros = np.zeros(n, np.float32)
    return pa.table(
        {
            "article_id": pa.array([article_id] * n, pa.string()),
            "patch_index": pa.array(np.arange(n, dtype=np.int32)),
            "byte_start": pa.array(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)),
            "byte_len": pa.array(lengths.astype(np.int32)),
            "patch": pa.array(patches, pa.binary()),
            "text": pa.array([x.decode("utf-8", "replace") for x in patches], pa.string()),
            "mean_entropy": pa.array(zeros),
            "max_entropy": pa.array(zeros),
            "first_entropy": pa.array(zeros),
        },
        schema=BLT_PATCHES_SCHEMA,
    )


@pytest.fixture
def corpus():
    full = sp.bundled_corpus(mode="random", seed=3)
    keep = list(range(0, len(full.article_ids), 3))
    return {full.article_ids[i]: full.article_patches(i) for i in keep}


@pytest.fixture
def hll_resources(resources, corpus):
    """The shared resources + hll, with blt_patches shards written into the warehouse."""
    store = Warehouse(resources["warehouse"].root)
    keys = shard_partitions.get_partition_keys()
    by_shard = {k: [] for k in keys}
    for article_id, patches in sorted(corpus.items()):
        by_shard[str(shard_of(article_id, len(keys)))].append(patch_rows(article_id, patches))
    for key, tables in by_shard.items():
        with store.partition_writer("blt_patches", key) as writer:
            writer.write_table(
                pa.concat_tables(tables) if tables else BLT_PATCHES_SCHEMA.empty_table()
            )
    return {**resources, "hll": HllSetResource(p=P, span_patches=SPAN)}


def materialize_all(res):
    for key in shard_partitions.get_partition_keys():
        result = dg.materialize(SHARD_ASSETS, partition_key=key, resources=res)
        assert result.success
        for ev in result.get_asset_check_evaluations():
            assert ev.passed, (key, ev.check_name, ev.metadata)
    result = dg.materialize(GLOBAL_ASSETS, resources=res)
    assert result.success
    return result


def test_materialize_files_duckdb_checks_and_restore(hll_resources, corpus):
    result = materialize_all(hll_resources)
    checks = {ev.check_name: ev for ev in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "ngram_vocabulary_merge_consistent",
        "adjacency_merged_equals_whole",
        "restore_quality",
    }
    assert all(ev.passed for ev in checks.values()), {k: v.metadata for k, v in checks.items()}
    assert checks["restore_quality"].metadata["exact_at_1"].value >= 0.95

    root = Path(hll_resources["warehouse"].root)
    shard = shard_partitions.get_partition_keys()[0]
    assert sorted(p.name for p in (root / "ngram_index" / f"shard={shard}").iterdir()) == [
        "part-0.parquet"
    ]
    assert sorted(p.name for p in (root / "adjacency" / f"shard={shard}").iterdir()) == [
        "context.safetensors",
        "csr.safetensors",
        "part-0.parquet",
    ]
    assert sorted(p.name for p in (root / "ngram_vocabulary").iterdir()) == [
        "lookup.safetensors",
        "part-0.parquet",
    ]
    lookup, meta = read_safetensors(root / "ngram_vocabulary" / "lookup.safetensors")
    assert meta["p"] == str(P) and meta["asset"] == "ngram_vocabulary"
    assert lookup["indptr_1"].shape == (32 * 2**P + 1,)

    # the vocabulary equals the whole-corpus index built in memory
    seqs = [corpus[a] for a in sorted(corpus)]
    whole = sp.from_sequences(seqs)
    expected = ng.index_sequences(whole.patches, whole.offsets).table
    vocab = pq.read_table(root / "ngram_vocabulary" / "part-0.parquet")
    assert assets.table_from_rows(vocab).canonical_equal(expected)
    assert vocab.column("hash").to_pylist()[:5] == [
        hs.hash64(k) for k in vocab.column("key").to_pylist()[:5]
    ]
    merged = assets.load_adjacency(Warehouse(root), "adjacency_merged", None)
    assert merged.equal(adj.build(expected))
    # shard context counts merged == counting the whole corpus at once; a 6-gram spot check
    merged_context = assets.load_context(Warehouse(root), "adjacency_merged", None)
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

    # DuckDB over the Hive layout: shard sums equal vocabulary sums; spans per article
    con = duckdb.connect()
    by_shard = con.sql(
        f"select n, sum(count) from read_parquet('{root}/ngram_index/*/*.parquet', "
        "hive_partitioning=true) group by n order by n"
    ).fetchall()
    by_vocab = con.sql(
        f"select n, sum(count) from read_parquet('{root}/ngram_vocabulary/*.parquet') group by n order by n"
    ).fetchall()
    assert by_shard == by_vocab
    n_patches = sum(len(x) for x in corpus.values())
    assert by_vocab[0][1] == n_patches and by_vocab[1][1] == n_patches + len(corpus)
    rows = con.sql(
        f"select article_id, count(*) filter (where span_index >= 0) as spans, "
        f"max(patch_count) filter (where span_index < 0) as patches, min(shard) as shard "
        f"from read_parquet('{root}/article_hllsets/*/*.parquet', hive_partitioning=true) "
        "group by article_id order by article_id"
    ).fetchall()
    assert [r[0] for r in rows] == sorted(corpus)
    for article_id, spans, patches, shard_key in rows:
        assert patches == len(corpus[article_id])
        assert spans == -(-patches // SPAN)
        assert str(shard_key) == str(
            shard_of(article_id, len(shard_partitions.get_partition_keys()))
        )
    nodes = con.sql(
        f"select count(*), sum(count) from read_parquet('{root}/adjacency_merged/*.parquet')"
    ).fetchall()
    assert nodes == [(merged.n_nodes, by_vocab[1][1])]

    # restore a stored span HLLSet through the loaders and through the CLI
    store = Warehouse(root)
    index = assets.load_restore_index(store)
    article_id = sorted(corpus)[1]
    h = assets.load_hllset(store, article_id, 0)
    assert h == ng.hllset_of_patches(corpus[article_id][:SPAN], P)
    assert assets.load_stored_span(store, article_id, 0) == (h, SPAN)
    assert index.context is not None and index.context.max_order == cm.DEFAULT_MAX_ORDER
    out = rs.restore(h, index, length=SPAN)
    assert out.ok and out.candidates[0].patches == corpus[article_id][:SPAN]
    assert out.report.length == SPAN and out.report.context_order == cm.DEFAULT_MAX_ORDER
    assert (
        restore_cli_main(
            ["restore", "--article", article_id, "--span", "0", "--warehouse", str(root)]
        )
        == 0
    )
    raw = root.parent / "set.bin"
    raw.write_bytes(b"".join(h.layer_bytes()))
    assert (
        restore_cli_main(
            ["restore", "--file", str(raw), "--length", str(SPAN), "--warehouse", str(root)]
        )
        == 0
    )
    assert (
        restore_cli_main(["restore", "--file", str(raw), "--warehouse", str(root), "--json"]) == 0
    )
    assert restore_cli.hllset_from_file(str(raw)) == h


def expected_token_id(table, patch: bytes) -> int:
    return table.tokens.to_pylist().index(patch)


def restore_cli_main(argv):
    from sphere_assets.cli import main

    return main(argv)


def test_rematerialization_is_byte_identical(hll_resources):
    root = Path(hll_resources["warehouse"].root)
    key = shard_partitions.get_partition_keys()[0]
    assert dg.materialize(SHARD_ASSETS[:3], partition_key=key, resources=hll_resources).success
    parts = [root / a / f"shard={key}" for a in ("ngram_index", "article_hllsets", "adjacency")]
    first = {(p.name, f.name): f.read_bytes() for p in parts for f in p.iterdir()}
    assert dg.materialize(SHARD_ASSETS[:3], partition_key=key, resources=hll_resources).success
    assert {(p.name, f.name): f.read_bytes() for p in parts for f in p.iterdir()} == first


def test_gap_in_patch_index_is_rejected_with_asset_partition_and_field(resources):
    store = Warehouse(resources["warehouse"].root)
    key = shard_partitions.get_partition_keys()[0]
    table = patch_rows("pydoc:x", [b"a", b"b", b"c"])
    table = table.set_column(1, "patch_index", pa.array(np.array([0, 1, 3], np.int32)))
    with store.partition_writer("blt_patches", key) as writer:
        writer.write_table(table)
    with pytest.raises(ContractError) as err:
        assets.read_patch_sequences(store, key)
    assert "blt_patches" in str(err.value) and f"'{key}'" in str(err.value)
    assert "patch_index" in str(err.value) and "pydoc:x" in str(err.value)
    res = dg.materialize(
        [assets.ngram_index],
        partition_key=key,
        resources={**resources, "hll": HllSetResource()},
        raise_on_error=False,
    )
    assert not res.success


def test_global_merge_covers_the_shards_on_disk(hll_resources):
    keys = shard_partitions.get_partition_keys()
    res = dg.materialize([assets.ngram_vocabulary], resources=hll_resources, raise_on_error=False)
    assert not res.success  # nothing to merge yet
    assert dg.materialize(
        [assets.ngram_index], partition_key=keys[0], resources=hll_resources
    ).success
    res = dg.materialize([assets.ngram_vocabulary], resources=hll_resources)
    (mat,) = res.asset_materializations_for_node("ngram_vocabulary")
    assert mat.metadata["shards"].value == keys[0]
    assert mat.metadata["missing_shards"].value == (",".join(keys[1:]) or "-")


def test_hllset_rows_without_spans_and_batching(corpus, monkeypatch):
    ids = sorted(corpus)[:5]
    c = sp.from_sequences([corpus[a] for a in ids])
    rows = assets.hllset_rows(ids, c.patches, c.offsets, P, 0)
    assert rows.column("span_index").to_pylist() == [-1] * 5
    assert rows.column("patch_count").to_pylist() == [len(corpus[a]) for a in ids]
    h = hs.HLLSet.from_layer_bytes([rows.column(f"layer{i}")[2].as_py() for i in (1, 2, 3)], P)
    assert h == ng.hllset_of_patches(corpus[ids[2]], P)
    cards = [rows.column(f"card{i}")[2].as_py() for i in (1, 2, 3)]
    assert np.allclose(cards, h.cardinality())
    # a tiny memory budget splits the articles into many batches, each within budget
    monkeypatch.setattr(assets, "HLLSET_BATCH_BYTES", 3 * 4 * (1 << P) * 3)
    batches = assets.article_batches(c.offsets, P, SPAN)
    assert batches[0][0] == 0 and batches[-1][1] == 5
    assert all(a < b for a, b in batches) and len(batches) > 1
    assert all(b1[1] == b2[0] for b1, b2 in zip(batches, batches[1:], strict=False))


def test_restore_index_p_other_than_stored(hll_resources, corpus):
    materialize_all(hll_resources)
    store = Warehouse(hll_resources["warehouse"].root)
    index = assets.load_restore_index(store, 12)
    seq = corpus[sorted(corpus)[0]][:32]
    out = rs.restore(ng.hllset_of_patches(seq, 12), index)
    assert out.candidates[0].patches == seq
