"""ngram_vocabulary materialized from synthetic blt_patches: files, the bit lookup, equality with
the whole-corpus index, DuckDB sums over the Hive layout, the merge over the shards on disk."""

import dagster as dg
import duckdb
import pyarrow.parquet as pq

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import synthetic_patches as sp
from sphere_assets.ngrams import io
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.ngrams.ngram_vocabulary import ngram_vocabulary
from sphere_resources.store import read_safetensors
from tests.ngrams.materialize import P


def test_files_and_lookup(materialized):
    root, result = materialized
    checks = {ev.check_name: ev for ev in result.get_asset_check_evaluations()}
    assert checks["ngram_vocabulary_merge_consistent"].passed
    assert sorted(p.name for p in (root / "ngram_vocabulary").iterdir()) == [
        "_manifest.json",
        "lookup.safetensors",
        "part-0.parquet",
    ]
    lookup, meta = read_safetensors(root / "ngram_vocabulary" / "lookup.safetensors")
    assert meta["p"] == str(P) and meta["asset"] == "ngram_vocabulary"
    assert lookup["indptr_1"].shape == (32 * 2**P + 1,)


def test_vocabulary_equals_the_whole_corpus_index(materialized, corpus):
    root, _ = materialized
    seqs = [corpus[a] for a in sorted(corpus)]
    whole = sp.from_sequences(seqs)
    expected = ng.index_sequences(whole.patches, whole.offsets).table
    vocab = pq.read_table(root / "ngram_vocabulary" / "part-0.parquet")
    assert io.table_from_rows(vocab).canonical_equal(expected)
    assert vocab.column("hash").to_pylist()[:5] == [
        hs.hash64(k) for k in vocab.column("key").to_pylist()[:5]
    ]


def test_duckdb_shard_sums_equal_vocabulary_sums(materialized, corpus):
    root, _ = materialized
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


def test_global_merge_covers_the_shards_on_disk(hll_resources):
    keys = shard_partitions.get_partition_keys()
    res = dg.materialize([ngram_vocabulary], resources=hll_resources, raise_on_error=False)
    assert not res.success  # nothing to merge yet
    assert dg.materialize([ngram_index], partition_key=keys[0], resources=hll_resources).success
    res = dg.materialize([ngram_vocabulary], resources=hll_resources)
    (mat,) = res.asset_materializations_for_node("ngram_vocabulary")
    assert mat.metadata["shards"].value == keys[0]
    assert mat.metadata["missing_shards"].value == (",".join(keys[1:]) or "-")
