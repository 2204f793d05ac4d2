"""The out-of-core global merges (issue 19): byte-identical to the whole-in-memory merge they
replace, row groups cut where pq.write_table cuts them, and streamed checks that still catch a
corrupt shard and name it."""

from __future__ import annotations

import shutil

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.ngrams import io
from sphere_assets.ngrams import merge_io as mio
from sphere_assets.ngrams.adjacency_merged import adjacency_merged, adjacency_merged_equals_whole
from sphere_assets.ngrams.contract import (
    ADJACENCY,
    ADJACENCY_MERGED,
    CONTEXT_STEM,
    CSR_STEM,
    NGRAM_INDEX,
    NGRAM_VOCABULARY,
)
from sphere_assets.ngrams.ngram_vocabulary import (
    ngram_vocabulary,
    ngram_vocabulary_merge_consistent,
)
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.store import PARQUET_OPTIONS, Warehouse
from sphere_resources.warehouse import WarehouseResource
from tests.ngrams.materialize import SPAN, P


def _files(store: Warehouse, asset: str) -> dict[str, bytes]:
    pdir = store.partition_dir(asset, None)
    return {p.name: p.read_bytes() for p in sorted(pdir.iterdir())}


def test_streamed_merges_write_the_bytes_of_the_in_memory_merges(materialized, tmp_path):
    """Reference: the whole-in-memory merge the assets used before (every shard read at once,
    lib merge, one write), written into another warehouse: same files, byte for byte."""
    root, _ = materialized
    store = Warehouse(root)
    ref = Warehouse(tmp_path / "reference")
    shards = store.partitions(NGRAM_INDEX.name)
    rows = io.index_rows(io.read_index_table(store, shards), P)
    io.write_vocabulary(ref, rows, io.lookup_tensors(rows, P), P, shards)
    assert _files(ref, NGRAM_VOCABULARY.name) == _files(store, NGRAM_VOCABULARY.name)
    parts = [io.load_adjacency(store, ADJACENCY, key) for key in shards]
    contexts = [io.load_context(store, ADJACENCY, key) for key in shards]
    graph = adj.merge(parts, HllSetResource(p=P).alpha)
    io.write_adjacency(ref, ADJACENCY_MERGED, None, graph, cm.merge(contexts))
    assert _files(ref, ADJACENCY_MERGED.name) == _files(store, ADJACENCY_MERGED.name)


def test_row_groups_match_a_whole_table_write(tmp_path):
    """Over 2^20 rows in three layers: the streamed write cuts the same row groups, with the
    same chunk boundaries inside, as pq.write_table of the concatenated table."""
    rng = np.random.default_rng(0)
    layers = []
    for n, rows in ((1, 700_000), (2, 900_000), (3, 600_000)):
        keys = rng.integers(0, 1 << 40, rows).astype(np.uint64)
        layers.append(
            pa.table(
                {
                    "n": pa.array(np.full(rows, n, np.int8)),
                    "key": pa.array([b"k%d" % k for k in keys.tolist()], pa.binary()),
                    "count": pa.array(rng.integers(1, 9, rows)),
                }
            )
        )
    whole = pa.concat_tables(layers)
    options = dict(PARQUET_OPTIONS, use_dictionary=["n"])
    pq.write_table(whole, tmp_path / "whole.parquet", **options)
    with pq.ParquetWriter(tmp_path / "streamed.parquet", whole.schema, **options) as writer:
        groups = mio.RowGroupStream(writer, segment="n")
        for batch in whole.to_batches(max_chunksize=70_001):
            groups.write(pa.Table.from_batches([batch]))
        groups.close(whole.schema.empty_table())
    meta = pq.ParquetFile(tmp_path / "whole.parquet").metadata
    assert meta.num_row_groups == 3  # 2.2M rows: the test crosses row-group boundaries
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "streamed.parquet").read_bytes()


@pytest.fixture
def copied(materialized, tmp_path):
    """A private copy of the materialized warehouse (the tests corrupt it)."""
    root, _ = materialized
    shutil.copytree(root, tmp_path / "warehouse")
    return Warehouse(tmp_path / "warehouse")


def run_check(store: Warehouse, asset, check) -> dg.AssetCheckEvaluation:
    res = {
        "warehouse": WarehouseResource(root=str(store.root)),
        "hll": HllSetResource(p=P, span_patches=SPAN),
    }
    result = dg.materialize(
        [asset, check],
        resources=res,
        selection=dg.AssetSelection.checks(check),
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def rewrite_rows(store: Warehouse, asset, shard, change, tensors: dict | None = None) -> None:
    """Write a partition again with ``change``d rows; its tensor files come along (replaced
    by ``tensors``: stem -> arrays, where given)."""
    table = store.read_table(asset.name, shard)
    stems = [
        s for s in (CSR_STEM, CONTEXT_STEM) if store.has_file(asset.name, shard, f"{s}.safetensors")
    ]
    kept = {s: store.read_tensors(asset.name, shard, s) for s in stems}
    with store.partition_writer(asset.name, shard) as writer:
        writer.write_table(change(table))
        for stem, (arrays, meta) in kept.items():
            writer.write_tensors(stem, (tensors or {}).get(stem, arrays), _own(meta))


def _own(meta: dict) -> dict:
    """Stored tensor metadata less what the writer adds itself."""
    return {k: v for k, v in meta.items() if k not in ("asset", "partition")}


def bump_count(table: pa.Table, row: int = 5) -> pa.Table:
    counts = table.column("count").to_numpy().copy()
    counts[row] += 1
    return table.set_column(table.schema.get_field_index("count"), "count", pa.array(counts))


def test_vocabulary_check_names_a_shard_with_a_wrong_count(copied):
    shard = copied.partitions(NGRAM_INDEX.name)[1]
    rewrite_rows(copied, NGRAM_INDEX, shard, bump_count)
    ev = run_check(copied, ngram_vocabulary, ngram_vocabulary_merge_consistent)
    assert not ev.passed
    text = ev.metadata["first_problems"].value
    assert f"ngram_index shard {shard}: field count" in text
    assert "in the merge of the shards" in text  # and the stored merge no longer matches


def test_vocabulary_check_names_a_shard_with_a_wrong_key(copied):
    shard = copied.partitions(NGRAM_INDEX.name)[2]

    def change_key(table: pa.Table) -> pa.Table:
        keys = table.column("key").to_pylist()
        last = len(keys) - 1  # a 3-gram: its last part changed, still sorted after the others
        keys[last] = keys[last] + b"~"
        return table.set_column(1, "key", pa.array(keys, pa.binary()))

    rewrite_rows(copied, NGRAM_INDEX, shard, change_key)
    ev = run_check(copied, ngram_vocabulary, ngram_vocabulary_merge_consistent)
    assert not ev.passed
    assert f"ngram_index shard {shard}: field hash" in ev.metadata["first_problems"].value


def test_vocabulary_check_passes_on_the_materialized_warehouse(copied):
    ev = run_check(copied, ngram_vocabulary, ngram_vocabulary_merge_consistent)
    assert ev.passed, ev.metadata
    assert ev.metadata["rows"].value == copied.read_table(NGRAM_VOCABULARY.name, None).num_rows


def test_adjacency_check_names_a_shard_with_wrong_context_counts(copied):
    shard = copied.partitions(ADJACENCY.name)[0]
    arrays, _ = copied.read_tensors(ADJACENCY.name, shard, CONTEXT_STEM)
    counts = arrays["counts"].copy()
    counts[3] += 1
    context = {"hashes": arrays["hashes"], "counts": counts}
    rewrite_rows(copied, ADJACENCY, shard, lambda t: t, {CONTEXT_STEM: context})
    ev = run_check(copied, adjacency_merged, adjacency_merged_equals_whole)
    assert not ev.passed
    text = ev.metadata["first_problems"].value
    assert f"adjacency shard {shard}: field {CONTEXT_STEM}.counts" in text
    assert "not the sums over the shards" in text


def test_adjacency_check_catches_a_wrong_merged_node_count(copied):
    rewrite_rows(copied, ADJACENCY_MERGED, None, bump_count)
    ev = run_check(copied, adjacency_merged, adjacency_merged_equals_whole)
    assert not ev.passed
    assert "node table: field count differs" in ev.metadata["first_problems"].value


def test_adjacency_check_passes_and_says_what_it_sampled(copied):
    ev = run_check(copied, adjacency_merged, adjacency_merged_equals_whole)
    assert ev.passed, ev.metadata
    assert ev.metadata["sampled_edges"].value > 0
    assert ev.metadata["sampled_articles"].value > 0
    assert "seed" in ev.metadata["sample"].value
