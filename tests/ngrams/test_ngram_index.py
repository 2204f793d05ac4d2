"""ngram_index materialized from synthetic blt_patches: files on disk, a patch_index gap is
rejected, re-materializing the shard assets is byte-identical."""

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.ngrams import io
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.contracts import ContractError
from sphere_resources.store import Warehouse
from tests.ngrams.materialize import SHARD_ASSETS, patch_rows


def test_shard_files(materialized):
    root, _ = materialized
    shard = shard_partitions.get_partition_keys()[0]
    assert sorted(p.name for p in (root / "ngram_index" / f"shard={shard}").iterdir()) == [
        "_manifest.json",
        "part-0.parquet",
    ]


def test_rematerialization_is_byte_identical(hll_resources):
    """ngram_index, article_hllsets and adjacency of a shard, materialized twice."""
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
        io.read_patch_sequences(store, key)
    assert "blt_patches" in str(err.value) and f"'{key}'" in str(err.value)
    assert "patch_index" in str(err.value) and "pydoc:x" in str(err.value)
    res = dg.materialize(
        [ngram_index],
        partition_key=key,
        resources={**resources, "hll": HllSetResource()},
        raise_on_error=False,
    )
    assert not res.success
