"""Shared helpers of the ngrams tests: synthetic blt_patches rows, the asset lists, materialize
everything (the fixtures built from them are in ``conftest.py``)."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.ngrams.adjacency import adjacency, adjacency_csr_valid
from sphere_assets.ngrams.adjacency_merged import (
    adjacency_merged,
    adjacency_merged_equals_whole,
    restore_quality,
)
from sphere_assets.ngrams.article_hllsets import article_hllsets, article_hllsets_consistent
from sphere_assets.ngrams.ngram_index import ngram_index, ngram_index_consistent
from sphere_assets.ngrams.ngram_vocabulary import (
    ngram_vocabulary,
    ngram_vocabulary_merge_consistent,
)
from sphere_assets.patching.contract import BLT_PATCHES, BLT_PATCHES_SCHEMA
from sphere_resources.store import Warehouse

P = 10
SPAN = 64
SHARD_ASSETS = [
    ngram_index,
    article_hllsets,
    adjacency,
    ngram_index_consistent,
    article_hllsets_consistent,
    adjacency_csr_valid,
]
GLOBAL_ASSETS = [
    ngram_vocabulary,
    adjacency_merged,
    ngram_vocabulary_merge_consistent,
    adjacency_merged_equals_whole,
    restore_quality,
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


def write_patch_shards(store: Warehouse, corpus: dict[str, list[bytes]]) -> None:
    """blt_patches shards of ``corpus`` (article id -> patches), every configured shard."""
    keys = shard_partitions.get_partition_keys()
    by_shard = {k: [] for k in keys}
    for article_id, patches in sorted(corpus.items()):
        by_shard[str(shard_of(article_id, len(keys)))].append(patch_rows(article_id, patches))
    for key, tables in by_shard.items():
        with store.partition_writer(BLT_PATCHES.name, key) as writer:
            writer.write_table(
                pa.concat_tables(tables) if tables else BLT_PATCHES_SCHEMA.empty_table()
            )


def materialize_all(res):
    for key in shard_partitions.get_partition_keys():
        result = dg.materialize(SHARD_ASSETS, partition_key=key, resources=res)
        assert result.success
        for ev in result.get_asset_check_evaluations():
            assert ev.passed, (key, ev.check_name, ev.metadata)
    result = dg.materialize(GLOBAL_ASSETS, resources=res)
    assert result.success
    return result


def expected_token_id(table, patch: bytes) -> int:
    return table.tokens.to_pylist().index(patch)


def restore_cli_main(argv):
    from sphere_assets.cli import main

    return main(argv)
