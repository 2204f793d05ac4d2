"""Each partition's materialization carries its own metadata after a range run.

Shard assets run a partition range in one run (``BackfillPolicy.single_run``). Every partition
must still record its own row count, path and statistics (not the run's totals): checked here
against the partition's own Parquet file, counted through DuckDB, and read back from the
instance's event log as the UI shows it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sphere_assets.definitions import ALL_ASSETS, FAMILY_CHECKS
from sphere_assets.harmonics.sh_basis import sh_basis
from sphere_assets.ingest.raw_articles import raw_articles
from sphere_assets.ngrams.adjacency import adjacency
from sphere_assets.ngrams.article_hllsets import article_hllsets
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.entropy_model import entropy_model
from sphere_assets.patching.patch_embeddings import patch_embeddings
from sphere_assets.placements.shell_placements import shell_placements
from sphere_assets.placements.sphere_map import sphere_map
from tests.patching.materialize import MODEL_CONFIG

pytestmark = pytest.mark.slow  # a whole-pipeline range run: left out of `make test-fast`

SHARDS = ["0", "1", "2", "3"]
RANGE = {
    "dagster/asset_partition_range_start": SHARDS[0],
    "dagster/asset_partition_range_end": SHARDS[-1],
}
RANGE_ASSETS = [
    blt_patches,
    patch_embeddings,
    ngram_index,
    article_hllsets,
    adjacency,
    shell_placements,
]


def _materialize(resources, instance, selection, **kwargs):
    result = dg.materialize(
        [*ALL_ASSETS, *FAMILY_CHECKS],
        selection=selection,
        instance=instance,
        resources=resources,
        raise_on_error=True,
        **kwargs,
    )
    assert result.success
    return result


def _latest_metadata(instance, asset, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset.key.to_user_string()} partition {partition}: no materialization"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _rows_through_duckdb(root: Path, asset, partition: str) -> int:
    files = str(root / asset.key.to_user_string() / f"shard={partition}" / "*.parquet")
    with duckdb.connect() as con:  # its own connection: the default one is shared process-wide
        return con.execute(f"select count(*) from read_parquet('{files}')").fetchall()[0][0]


def test_range_runs_record_each_partitions_own_metadata(resources):
    instance = dg.DagsterInstance.ephemeral()
    root = Path(resources["warehouse"].root)
    _materialize(resources, instance, [raw_articles], tags=RANGE)
    _materialize(
        resources,
        instance,
        [entropy_model],
        run_config=dg.RunConfig(ops={"entropy_model": MODEL_CONFIG}),
    )
    _materialize(resources, instance, [sh_basis], partition_key="32")
    run = _materialize(resources, instance, RANGE_ASSETS[:-1], tags=RANGE)
    # the global map between the shard stages, as materialize-all orders them
    _materialize(
        resources, instance, [sphere_map],
        run_config=dg.RunConfig(ops={"sphere_map": {"config": {"sample_size": 2000, "steps": 60}}}),
    )  # fmt: skip
    _materialize(resources, instance, RANGE_ASSETS[-1:], tags=RANGE)

    for asset in [*RANGE_ASSETS, raw_articles]:
        counts = {}
        for shard in SHARDS:
            meta = _latest_metadata(instance, asset, shard)
            name = f"{asset.key.to_user_string()} shard {shard}"
            counts[shard] = _rows_through_duckdb(root, asset, shard)
            assert meta["dagster/row_count"] == counts[shard], name
            assert meta["path"].endswith(f"shard={shard}"), (name, meta["path"])
        # the shards really differ, so equal counts cannot come from a shared run total
        assert len(set(counts.values())) > 1, (asset.key.to_user_string(), counts)

    for shard in SHARDS:
        meta = _latest_metadata(instance, blt_patches, shard)
        assert meta["patches"] == meta["dagster/row_count"]
        assert meta["partitions_in_run"] == ",".join(SHARDS)
        articles = _rows_through_duckdb(root, raw_articles, shard)
        assert meta["articles"] == articles
        placed = _latest_metadata(instance, shell_placements, shard)
        assert (
            placed["dagster/row_count"]
            == _latest_metadata(instance, patch_embeddings, shard)["patches"]
        )
    assert {m.partition for m in run.asset_materializations_for_node("blt_patches")} == set(SHARDS)
