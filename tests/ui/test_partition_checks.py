"""Asset checks report per partition, also in a range run.

A range of shards runs in one step (``BackfillPolicy.single_run``) and so does its check. Each
shard's evaluation must be recorded against its own partition in the instance, so a failure in
one shard is not overwritten by the next shard's pass: read back here from the instance's check
execution records (what the UI's check page shows per partition).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.base import PartitionKeyFilter

from sphere_assets.core.checks import partition_check_results, shard_check_spec
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import shard_keys, shard_partitions
from sphere_assets.definitions import FAMILY_CHECKS
from sphere_assets.ingest.io import rows_to_table
from sphere_assets.ingest.raw_articles import raw_articles, raw_articles_ids_unique_and_sharded
from sphere_assets.lib.text.corpus import ArticleRow, shard_of

SHARDS = ["0", "1", "2", "3"]
RANGE = {
    "dagster/asset_partition_range_start": SHARDS[0],
    "dagster/asset_partition_range_end": SHARDS[-1],
}
CHECK = raw_articles_ids_unique_and_sharded
CHECK_KEY = next(iter(CHECK.check_keys))
SHARD_ASSETS = {
    "raw_articles",
    "blt_patches",
    "patch_embeddings",
    "ngram_index",
    "article_hllsets",
    "adjacency",
    "shell_placements",
}


def _home(tmp_path: Path) -> str:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return str(home)


def _latest(instance, partition: str | None):
    records = instance.event_log_storage.get_asset_check_execution_history(
        CHECK_KEY, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    assert records, f"{CHECK_KEY.to_user_string()} partition {partition}: no execution"
    return records[0]


def _metadata(record) -> dict:
    evaluation = record.event.dagster_event.asset_check_evaluation_data
    return {k: v.value for k, v in evaluation.metadata.items()}


def _rows_through_duckdb(root: Path, shard: str) -> int:
    files = str(root / "raw_articles" / f"shard={shard}" / "*.parquet")
    with duckdb.connect() as con:
        return con.execute(f"select count(*) from read_parquet('{files}')").fetchall()[0][0]


def _plant_wrong_shard_row(store, shard: str) -> None:
    """Append an article that hashes to another shard, as a buggy writer would."""
    n = len(shard_keys())
    bad_id = next(f"x{i}" for i in range(1000) if shard_of(f"x{i}", n) != int(shard))
    table = store.read_table("raw_articles", shard)
    bad = rows_to_table([ArticleRow(bad_id, "t", "text", "test", 4, None)])
    with store.partition_writer("raw_articles", shard) as w:
        w.write_table(pa.concat_tables([table, bad.cast(table.schema)]))


def test_every_shard_check_is_partitioned_like_its_asset():
    for check_def in FAMILY_CHECKS:
        for spec in check_def.check_specs:
            if spec.asset_key.to_user_string() in SHARD_ASSETS:
                assert spec.partitions_def is not None, spec.key.to_user_string()


def test_every_check_of_a_partitioned_asset_is_partitioned_like_it():
    """Every family's checks, the catalog's, and the optional Postgres publish's row-count check
    (built here as SPHERE_POSTGRES_URL would add it): one evaluation per partition."""
    from sphere_assets.catalog.postgres_catalog import publish_definitions
    from sphere_assets.definitions import ALL_ASSETS, CATALOG_CHECKS, FAMILY_ASSETS

    pg_assets, pg_checks = publish_definitions(FAMILY_ASSETS, enabled=True)
    partitions = {
        spec.key: spec.partitions_def for a in [*ALL_ASSETS, *pg_assets] for spec in a.specs
    }
    checked = set()
    for check_def in [*FAMILY_CHECKS, *CATALOG_CHECKS, *pg_checks]:
        for spec in check_def.check_specs:
            expected = partitions[spec.asset_key]
            assert spec.partitions_def == expected, spec.key.to_user_string()
            if expected is not None:
                checked.add(spec.key.to_user_string())
    assert {"sh_basis:sh_basis_orthonormal", "postgres_catalog:postgres_catalog_row_counts"} <= (
        checked
    )


def test_range_run_records_each_shards_own_check_result(resources, tmp_path):
    root = Path(resources["warehouse"].root)
    store = resources["warehouse"].store()
    with dg.instance_for_test(temp_dir=_home(tmp_path)) as instance:
        result = dg.materialize(
            [raw_articles, CHECK], instance=instance, resources=resources, tags=RANGE
        )
        assert result.success
        assert [e.partition for e in result.get_asset_check_evaluations()] == SHARDS
        for shard in SHARDS:
            record = _latest(instance, shard)
            assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, shard
            assert _metadata(record)["rows"] == _rows_through_duckdb(root, shard)
            # evaluated against that partition's own materialization
            target = record.event.dagster_event.asset_check_evaluation_data
            mat = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=raw_articles.key, asset_partitions=[shard]),
                limit=1,
            ).records[0]
            assert target.target_materialization_data.storage_id == mat.storage_id

        _plant_wrong_shard_row(store, "2")
        # the check alone over the same range: shard 2 fails, 3 (evaluated after it) passes
        run = dg.materialize(
            [raw_articles, CHECK],
            selection=dg.AssetSelection.checks(CHECK),
            instance=instance,
            resources=resources,
            tags=RANGE,
            raise_on_error=False,
        )
        assert not run.success  # blocking: the failed shard fails the step
        by_shard = {e.partition: e.passed for e in run.get_asset_check_evaluations()}
        assert by_shard == {"0": True, "1": True, "2": False, "3": True}
        for shard in SHARDS:
            record = _latest(instance, shard)
            assert record.run_id == run.run_id
            meta = _metadata(record)
            assert meta["rows"] == _rows_through_duckdb(root, shard), shard
            if shard == "2":
                assert record.status == AssetCheckExecutionRecordStatus.FAILED
                assert meta["rows_in_wrong_shard"] == 1
            else:
                assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, shard
                assert meta["rows_in_wrong_shard"] == 0
        # nothing left planned: every partition of the run was resolved
        assert not instance.event_log_storage.get_asset_check_execution_history(
            CHECK_KEY, limit=10, status={AssetCheckExecutionRecordStatus.PLANNED}
        )


def test_check_run_without_partition_checks_every_shard_on_disk(resources, tmp_path):
    store = resources["warehouse"].store()
    with dg.instance_for_test(temp_dir=_home(tmp_path)) as instance:
        assert dg.materialize(
            [raw_articles, CHECK], instance=instance, resources=resources, tags=RANGE
        ).success
        _plant_wrong_shard_row(store, "1")
        run = dg.materialize(
            [raw_articles, CHECK],
            selection=dg.AssetSelection.checks(CHECK),
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not run.success
        evaluations = {e.partition: e for e in run.get_asset_check_evaluations()}
        assert {k: e.passed for k, e in evaluations.items() if k} == {
            "0": True,
            "1": False,
            "2": True,
            "3": True,
        }
        summary = evaluations[None]
        assert not summary.passed
        assert summary.metadata["failed_partitions"].value == "1"
        assert _latest(instance, None).status == AssetCheckExecutionRecordStatus.FAILED
        assert _latest(instance, "1").status == AssetCheckExecutionRecordStatus.FAILED
        assert not instance.event_log_storage.get_asset_check_execution_history(
            CHECK_KEY, limit=10, status={AssetCheckExecutionRecordStatus.PLANNED}
        )


def test_check_without_partition_and_nothing_on_disk_fails(resources, tmp_path):
    with dg.instance_for_test(temp_dir=_home(tmp_path)) as instance:
        run = dg.materialize(
            [raw_articles, CHECK],
            selection=dg.AssetSelection.checks(CHECK),
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        (evaluation,) = run.get_asset_check_evaluations()
        assert evaluation.partition is None and not evaluation.passed
        assert evaluation.metadata["partitions"].value == "no partitions on disk"


@dg.asset(
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[shard_check_spec("even_rows", asset="probe", description="rows are even")],
)
def probe(context):
    """An asset that evaluates its own check in its step, one result per shard."""
    rows = {key: 2 * int(key) + (key == "1") for key in context.partition_keys}
    yield partition_results(context, {key: {"rows": n} for key, n in rows.items()})
    yield from partition_check_results(
        context,
        {
            key: dg.AssetCheckResult(passed=n % 2 == 0, metadata={"rows": n})
            for key, n in rows.items()
        },
    )


def test_a_check_evaluated_in_its_assets_step_is_recorded_per_shard(tmp_path):
    key = dg.AssetCheckKey(probe.key, "even_rows")
    with dg.instance_for_test(temp_dir=_home(tmp_path)) as instance:
        result = dg.materialize([probe], instance=instance, tags=RANGE)
        assert result.success  # not blocking: a failed shard is recorded, the step goes on
        for shard in SHARDS:
            (record,) = instance.event_log_storage.get_asset_check_execution_history(
                key, limit=5, partition_filter=PartitionKeyFilter(key=shard)
            )
            expected = "FAILED" if shard == "1" else "SUCCEEDED"
            assert record.status.value == expected, shard
            evaluation = record.event.dagster_event.asset_check_evaluation_data
            assert evaluation.metadata["rows"].value == 2 * int(shard) + (shard == "1")
            mat = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=probe.key, asset_partitions=[shard]), limit=1
            ).records[0]
            assert evaluation.target_materialization_data.storage_id == mat.storage_id
