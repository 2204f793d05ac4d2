"""Jobs: per-family jobs with retries, pools, the executor, range backfills through the CLI, and
reliability of a run whose step process is SIGKILLed mid-write (op retry, run retry).

Tests that walk ``defs`` hold every asset registered in sphere_assets/definitions.py — including
families added later — to the same rules.
"""

import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import pytest

from sphere_assets.cli import plan_stages
from sphere_assets.core.partitions import shard_partitions
from sphere_assets.definitions import ALL_ASSETS, defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.refresh import jobs
from sphere_resources.contracts import CONTRACTS
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource
from tests.defs_graph import ASSET_KEYS, GRAPH
from tests.defs_graph import spec_of as _spec


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_heavy_jax_and_torch_steps_are_in_the_heavy_pool():
    assert jobs.heavy_assets_without_pool(ALL_ASSETS) == [], (
        "add pool='heavy' to these asset decorators (sphere_assets/core/pools.py HEAVY_POOL)"
    )


def test_family_jobs_cover_every_asset_with_retries_and_one_partitions_definition():
    covered = set()
    for job in defs.jobs:
        resolved = defs.resolve_job_def(job.name)  # fails if partitions definitions were mixed
        assert resolved.tags["dagster/max_retries"] == "2", job.name
        assert resolved.tags["dagster/retry_strategy"] == "FROM_FAILURE", job.name
        assert resolved.tags["family"], job.name
        assert resolved.op_retry_policy == jobs.OP_RETRY_POLICY, job.name
        keys = resolved.asset_layer.selected_asset_keys
        pdefs = {jobs.partitions_label(GRAPH.get(k).partitions_def) for k in keys}
        assert len(pdefs) == 1, (job.name, pdefs)
        if job.name not in ("shards_job", "global_job", "band_limits_job"):
            covered |= keys
    assert covered == set(ASSET_KEYS)
    assert defs.resolve_job_def("shards_job").asset_layer.selected_asset_keys == {
        k for k in ASSET_KEYS if GRAPH.get(k).partitions_def == shard_partitions
    }
    # the whole graph stays runnable stage by stage (sphere materialize-all)
    staged = [k for _, keys in plan_stages(defs) for k in keys]
    assert sorted(staged, key=lambda k: k.to_user_string()) == ASSET_KEYS


def test_job_descriptions_name_unpartitioned_assets_so():
    for job in defs.jobs:
        keys = defs.resolve_job_def(job.name).asset_layer.selected_asset_keys
        description = job.description
        assert "global partitions" not in description, (job.name, description)
        if all(GRAPH.get(k).partitions_def is None for k in keys):
            assert "unpartitioned" in description, (job.name, description)
        else:
            assert "unpartitioned" not in description, (job.name, description)
    assert defs.get_job_def("global_job").description == (
        "Every unpartitioned asset of the code location."
    )


def test_executor_follows_sphere_executor(monkeypatch):
    monkeypatch.delenv("SPHERE_EXECUTOR", raising=False)
    assert jobs.executor_from_env() is None
    monkeypatch.setenv("SPHERE_EXECUTOR", "celery")
    assert jobs.executor_from_env().name == "celery"
    monkeypatch.setenv("SPHERE_EXECUTOR", "bogus")
    with pytest.raises(ValueError, match="SPHERE_EXECUTOR"):
        jobs.executor_from_env()


# ------------------------------------------------------------------------------------------------
# Range backfills
# ------------------------------------------------------------------------------------------------

PARTITIONED = [k for k in ASSET_KEYS if GRAPH.get(k).partitions_def is not None]


@pytest.mark.parametrize("key", PARTITIONED, ids=lambda k: k.to_user_string())
def test_partitioned_assets_have_a_single_run_backfill_policy(key):
    """`dagster asset materialize --partition-range a...b` requires it for every selected asset."""
    policy = GRAPH.get(key).backfill_policy
    assert policy is not None and policy.max_partitions_per_run is None, (
        f"{key.to_user_string()}: add backfill_policy=dg.BackfillPolicy.single_run() and write "
        "every key of context.partition_keys"
    )


# Assets whose default config is sized for real runs get a small budget here: this test is about
# partition ranges through the CLI, not model quality (the values follow tests/patching/test_blt_patches.py).
SMALL_OP_CONFIG = {
    "entropy_model": {
        "dim": 32,
        "n_layers": 1,
        "n_heads": 2,
        "window": 16,
        "seq_len": 64,
        "batch_size": 16,
        "steps": 60,
        "lr": 1e-2,
        "warmup_steps": 6,
        "sample_bytes": 150_000,
        "holdout_fraction": 0.1,
        "max_eval_bytes": 20_000,
        "num_threads": 1,
    },
}


@pytest.mark.slow
def test_cli_partition_range_materializes_every_partitioned_asset(tmp_path, monkeypatch):
    """Every stage of the graph through `dagster asset materialize` — partitioned stages with
    `--partition-range <first>...<second>` — then exactly those partitions exist on disk.

    The dagster CLI runs in this process (click) with in-process execution, so no interpreter
    start-up per stage; tests/ingest/test_raw_articles.py runs the same command as a subprocess."""
    from click.testing import CliRunner
    from dagster._cli import cli

    (tmp_path / "dh").mkdir()
    (tmp_path / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    wh = tmp_path / "wh"
    run_config = {
        "execution": {"config": {"in_process": {}}},
        "resources": {
            "warehouse": {"config": {"root": str(wh)}},
            "catalog": {"config": {"path": str(tmp_path / "cat.duckdb")}},
            "corpus": {"config": {"kind": "bundled"}},
        },
        "ops": {k: {"config": v} for k, v in SMALL_OP_CONFIG.items() if GRAPH.has(dg.AssetKey(k))},
    }
    expected = {}
    for pdef, keys in plan_stages(defs):
        names = ",".join(k.to_user_string() for k in keys)
        argv = ["asset", "materialize", "-m", "sphere_assets.definitions", "--select", names]
        if pdef is not None:
            first, second = pdef.get_partition_keys()[:2]
            argv += ["--partition-range", f"{first}...{second}"]
            expected.update({k.path[-1]: {first, second} for k in keys})
        # only the resources these assets use may be configured
        used = set()
        for k in keys:
            used |= set(_spec(k)[0].required_resource_keys)
        cfg = {
            **run_config,
            "resources": {r: c for r, c in run_config["resources"].items() if r in used},
            "ops": {o: c for o, c in run_config["ops"].items() if dg.AssetKey(o) in keys},
        }
        t0 = time.perf_counter()
        result = CliRunner().invoke(cli, [*argv, "--config-json", json.dumps(cfg)])
        print(f"stage {names}: {time.perf_counter() - t0:.1f}s")
        assert result.exit_code == 0, (names, result.output[-3000:], result.exception)
    store = WarehouseResource(root=str(wh)).store()
    for name, parts in expected.items():
        if name in CONTRACTS:
            assert set(store.partitions(name)) == parts, name
    assert len(dg.DagsterInstance.get().get_runs()) == len(plan_stages(defs))


# ------------------------------------------------------------------------------------------------
# Reliability
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_partial_partition_and_retry_completes(
    tmp_path, monkeypatch, resources
):
    from tests.refresh import orchestration_jobs as oj

    n_rows = 10000  # > 2048 rows per shard, so Parquet batches reach staging before the kill
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "rows.jsonl").write_text(
        "\n".join(json.dumps({"id": f"k{i}", "text": f"row {i} " * 3}) for i in range(n_rows))
        + "\n"
    )
    wh = tmp_path / "wh"
    # partition 0 exists from an earlier run (other content)
    old = tmp_path / "old"
    old.mkdir()
    (old / "o.txt").write_text("the previous version of the corpus")
    resources["warehouse"] = WarehouseResource(root=str(wh))
    resources["corpus"] = CorpusSourceResource(kind="files", path_glob=str(old / "*"))
    assert dg.materialize([ingest.raw_articles], partition_key="0", resources=resources).success
    before = _digests(wh / "raw_articles")

    monkeypatch.setenv(oj.KILL_WAREHOUSE_ENV, str(wh))
    monkeypatch.setenv(oj.KILL_GLOB_ENV, str(corpus / "*"))
    monkeypatch.setenv(oj.KILL_MARKER_ENV, str(tmp_path / "killed"))
    monkeypatch.setenv(oj.KILL_AFTER_ENV, str(n_rows - 100))
    (tmp_path / "dh").mkdir()

    ref = tmp_path / "ref"
    resources["warehouse"] = WarehouseResource(root=str(ref))
    resources["corpus"] = CorpusSourceResource(kind="files", path_glob=str(corpus / "*"))
    assert dg.materialize([ingest.raw_articles], partition_key="0", resources=resources).success
    expected = _digests(ref / "raw_articles")

    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        # 1. without op retries: the run fails, the old partition is untouched
        recon = dg.reconstructable(oj.kill_job_without_op_retry)
        with dg.execute_job(recon, instance=instance, tags={"dagster/partition": "0"}) as r1:
            assert not r1.success
            run_id = r1.run_id
        assert (tmp_path / "killed").exists()  # the step process really died by SIGKILL
        staging = WarehouseResource(root=str(wh)).store().staging_root
        staged = list(staging.rglob("*.parquet"))
        assert staged and any(p.stat().st_size > 0 for p in staged), "kill was not mid-write"
        assert _digests(wh / "raw_articles") == before  # old partition intact, nothing partial
        # the run-retry daemon re-executes from failure (the job's dagster/max_retries tag)
        assert instance.get_run_by_id(run_id).tags["dagster/max_retries"] == "2"
        with dg.execute_job(
            recon,
            instance=instance,
            tags={"dagster/partition": "0"},  # the daemon copies the parent run's tags
            reexecution_options=dg.ReexecutionOptions.from_failure(run_id, instance),
        ) as r2:
            assert r2.success
        assert _digests(wh / "raw_articles") == expected

        # 2. with the jobs' op retry policy the crashed step is retried inside the same run
        (tmp_path / "killed").unlink()
        recon = dg.reconstructable(oj.kill_job)
        with dg.execute_job(recon, instance=instance, tags={"dagster/partition": "0"}) as r3:
            assert r3.success
            types = [e.event_type_value for e in r3.all_events]
        assert (tmp_path / "killed").exists()
        assert "STEP_UP_FOR_RETRY" in types and "STEP_RESTARTED" in types
        assert _digests(wh / "raw_articles") == expected
    # each rewrite of the partition removed the staging its killed predecessor left behind
    assert not list(staging.rglob("*.parquet"))
    assert WarehouseResource(root=str(wh)).store().clean_staging() == 0
