"""nightly_shard_refresh: one run per missing or stale shard partition, idempotent run keys."""

import datetime

import dagster as dg

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.refresh import schedules
from sphere_resources.warehouse import WarehouseResource
from tests.defs_graph import N
from tests.refresh.synthetic_graph import SYN_DEFS, syn_child, syn_global, syn_grandchild, syn_root
from tests.refresh.synthetic_graph import mat as _mat


def test_nightly_schedule_requests_one_run_per_stale_partition_with_stable_run_keys(tmp_path):
    assert schedules.nightly_shard_refresh.default_status == dg.DefaultScheduleStatus.STOPPED
    repo = SYN_DEFS.get_repository_def()
    when = datetime.datetime(2026, 11, 24, 2, 0, tzinfo=datetime.UTC)
    wh = WarehouseResource(root=str(tmp_path / "wh"))
    with dg.instance_for_test() as instance:
        _mat(instance, syn_global)
        for k in shard_keys():
            for a in (syn_root, syn_child, syn_grandchild):
                _mat(instance, a, k)

        def evaluate():
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=when, repository_def=repo
            ) as ctx:  # the context opens the instance; closing it restores Dagster's globals
                return schedules.shard_refresh_requests(ctx, wh, "nightly")

        assert isinstance(evaluate(), dg.SkipReason)
        _mat(instance, syn_root, "2")
        _mat(instance, syn_grandchild, "3")
        first = evaluate()
        assert [r.partition_key for r in first] == ["2"]
        assert first[0].asset_selection == [syn_child.key, syn_grandchild.key]
        assert first[0].run_key.startswith("nightly/2026-11-24/shard=2/")
        again = evaluate()
        assert [r.run_key for r in again] == [r.run_key for r in first]  # idempotent re-tick


def test_nightly_schedule_on_the_real_definitions_targets_missing_shards(tmp_path, resources):
    repo = defs.get_repository_def()
    when = datetime.datetime(2026, 11, 24, 2, 0, tzinfo=datetime.UTC)
    with dg.instance_for_test() as instance:

        def evaluate():
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=when, repository_def=repo
            ) as ctx:
                return schedules.shard_refresh_requests(ctx, resources["warehouse"], "nightly")

        reqs = evaluate()
        assert sorted(r.partition_key for r in reqs) == shard_keys()
        assert len({r.run_key for r in reqs}) == N
        for r in reqs:
            assert ingest.raw_articles.key in r.asset_selection
            # the selection must be executable as one run of shards_job
            defs.resolve_job_def("shards_job").get_subset(asset_selection=set(r.asset_selection))
        for k in shard_keys()[:2]:
            assert dg.materialize(
                [ingest.raw_articles], partition_key=k, resources=resources, instance=instance
            ).success
        reqs = evaluate()
        raw = [r.partition_key for r in reqs if ingest.raw_articles.key in r.asset_selection]
        assert raw == shard_keys()[2:]
        # files deleted behind Dagster's back count as missing too
        import shutil

        shutil.rmtree(resources["warehouse"].partition_dir("raw_articles", "0"))
        reqs = evaluate()
        raw = [r.partition_key for r in reqs if ingest.raw_articles.key in r.asset_selection]
        assert raw == ["0", *shard_keys()[2:]]
