"""Planning of `sphere materialize-all` runs (sphere_assets/refresh/materialize.py): one run per
stage, partition ranges that cover exactly the wanted keys, unknown keys rejected, and the quiet
stderr filter dropping only Dagster's DEBUG/INFO lines and beta warnings."""

from __future__ import annotations

import pytest

from sphere_assets.cli import plan_stages
from sphere_assets.definitions import defs
from sphere_assets.refresh import materialize as mz
from sphere_assets.refresh.jobs import CROSS_FAMILY_JOBS, partitions_label


def test_contiguous_runs_cover_exactly_the_wanted_keys():
    keys = ["0", "1", "2", "3"]
    assert mz.contiguous_runs(keys, keys) == [("0", "1", "2", "3")]
    assert mz.contiguous_runs(keys, {"2"}) == [("2",)]
    assert mz.contiguous_runs(keys, {"0", "1", "3"}) == [("0", "1"), ("3",)]
    assert mz.contiguous_runs(keys, {"0", "2"}) == [("0",), ("2",)]
    assert mz.contiguous_runs(keys, set()) == []


def test_every_stage_is_one_run_of_its_cross_family_job():
    stages = plan_stages(defs)
    runs, notes = mz.plan_runs(stages)
    assert notes == []
    assert [r.stage for r in runs] == list(range(1, len(stages) + 1))
    job_names = {j.name for j in defs.resolve_all_job_defs()}
    for run, (pdef, keys) in zip(runs, stages, strict=True):
        assert run.job_name == CROSS_FAMILY_JOBS[partitions_label(pdef)]
        assert run.job_name in job_names
        job = defs.resolve_job_def(run.job_name)
        assert set(run.keys) <= set(job.asset_layer.executable_asset_keys)
        assert list(run.keys) == list(keys)
        if pdef is None:
            assert run.partitions == () and run.tags() == {}
        else:
            all_keys = pdef.get_partition_keys()
            assert run.partitions == tuple(all_keys)
            assert run.tags() == {
                "dagster/asset_partition_range_start": all_keys[0],
                "dagster/asset_partition_range_end": all_keys[-1],
            }


def test_partition_filter_narrows_shard_stages_and_notes_the_rest():
    stages = plan_stages(defs)
    runs, notes = mz.plan_runs(stages, {"1"})
    for run, (pdef, _) in zip(runs, stages, strict=False):
        if partitions_label(pdef) == "shards":
            assert run.partitions == ("1",) and run.tags() == {"dagster/partition": "1"}
    # sh_basis (band limits) has no key "1": it runs all its partitions and says so
    assert any("none of --partitions is a L partition" in n for n in notes)


def test_unknown_partition_key_is_an_error_listing_valid_keys():
    with pytest.raises(mz.UnknownPartitionsError) as err:
        mz.plan_runs(plan_stages(defs), {"1", "nope"})
    msg = str(err.value)
    assert "no partition nope" in msg
    assert "shards: 0,1,2,3" in msg and "L: 16,32,64,128,256" in msg


def test_stderr_filter_drops_debug_and_beta_warnings_only():
    f = mz.StderrFilter()
    lines = [
        "2026-12-02 05:53:32 +0000 - dagster - DEBUG - shards_job - id - 1 - raw_articles - "
        'STEP_WORKER_STARTED - Executing step "raw_articles" in subprocess.\n',
        "/x/automation.py:239: BetaWarning: Function `with_source_code_references` is currently"
        " in beta, and may have breaking changes\n",
        "  assets = dg.with_source_code_references(list(assets))\n",
        "2026-12-02 05:53:33 +0000 - dagster - ERROR - shards_job - id - raw_articles - "
        "STEP_FAILURE - boom\n",
        "Traceback (most recent call last):\n",
        "  File 'x.py', line 1\n",
        "/x/y.py:1: UserWarning: something real\n",
    ]
    kept = [line for line in lines if f.keep(line)]
    assert kept == lines[3:]
    assert f.dropped == 3


def test_quiet_run_config_is_valid_for_the_jobs():
    job = defs.resolve_job_def(CROSS_FAMILY_JOBS["global"])
    from dagster._config import process_config

    for verbose in (False, True):
        assert process_config(
            job.run_config_schema.config_type, mz.quiet_run_config(verbose)
        ).success
    assert mz.quiet_run_config(True) == {}
