"""Orchestration: UI metadata, jobs/pools/retries, CLI range backfills, automation, the nightly
schedule, the incoming-files sensor, and reliability (SIGKILL mid-write, blocking checks).

Tests that walk ``defs`` hold every asset registered in sphere_assets/definitions.py — including
families added later — to the same rules.
"""

import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from sphere_assets.cli import plan_stages
from sphere_assets.core.partitions import shard_keys, shard_partitions
from sphere_assets.definitions import ALL_ASSETS, defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.refresh import jobs, schedules, sensors
from sphere_assets.refresh.automation import apply_orchestration, automated_keys
from sphere_assets.refresh.freshness import MaterializationIndex, plan_partition
from sphere_assets.refresh.incoming import loads_state
from sphere_resources.contracts import CONTRACTS
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource

REPO = Path(__file__).resolve().parent.parent
N = len(shard_keys())
GRAPH = defs.resolve_asset_graph()
ASSET_KEYS = sorted(
    (k for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).is_materializable),
    key=lambda k: k.to_user_string(),
)


def _spec(key):
    for a in ALL_ASSETS:
        if isinstance(a, dg.AssetsDefinition) and key in a.keys:
            return a, a.specs_by_key[key]
    raise KeyError(key)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------
# UI catalog: every asset documented
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ASSET_KEYS, ids=lambda k: k.to_user_string())
def test_every_asset_is_documented_for_the_ui(key):
    _, spec = _spec(key)
    name = key.to_user_string()
    assert spec.description and len(spec.description) > 20, f"{name}: description"
    assert spec.group_name and spec.group_name != "default", f"{name}: group"
    assert spec.kinds, f"{name}: kinds"
    assert spec.tags.get("family"), f"{name}: tag 'family'"
    assert spec.owners, f"{name}: owners"
    schema = spec.metadata.get("dagster/column_schema")
    schema = getattr(schema, "schema", schema)  # TableSchemaMetadataValue or TableSchema
    assert isinstance(schema, dg.TableSchema) and schema.columns, f"{name}: column schema"
    contract = CONTRACTS.get(key.path[-1])
    if contract is not None and contract.schema is not None:
        assert [c.name for c in schema.columns][: len(contract.schema)] == contract.schema.names


def test_heavy_jax_and_torch_steps_are_in_the_heavy_pool():
    assert jobs.heavy_assets_without_pool(ALL_ASSETS) == [], (
        "add pool='heavy' to these asset decorators (sphere_assets/jobs.py HEAVY_POOL)"
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
# partition ranges through the CLI, not model quality (the values follow test_patching_assets).
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


def test_cli_partition_range_materializes_every_partitioned_asset(tmp_path, monkeypatch):
    """Every stage of the graph through `dagster asset materialize` — partitioned stages with
    `--partition-range <first>...<second>` — then exactly those partitions exist on disk.

    The dagster CLI runs in this process (click) with in-process execution, so no interpreter
    start-up per stage; tests/test_ingest_assets.py runs the same command as a subprocess."""
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
# Declarative automation
# ------------------------------------------------------------------------------------------------


def _expected_closure(changed: dg.AssetKey, partition: str) -> set[tuple]:
    """(asset, partition) pairs that must be rebuilt after one shard of ``changed`` changed:
    a shard child of a changed shard follows that shard; whatever is below a changed global
    (or differently partitioned) asset is rebuilt whole; a global asset has partition None."""
    out: dict[dg.AssetKey, set] = {changed: {partition}}
    for key in GRAPH.toposorted_asset_keys:
        if key == changed or not GRAPH.get(key).is_materializable:
            continue
        pdef = GRAPH.get(key).partitions_def
        want: set = set()
        for parent in GRAPH.get(key).parent_keys:
            if parent not in out:
                continue
            if pdef is None:
                want.add(None)
            elif GRAPH.get(parent).partitions_def == pdef:
                want |= out[parent]
            else:
                want |= set(pdef.get_partition_keys())
        if want:
            out[key] = want
    del out[changed]
    return {(k, p) for k, ps in out.items() for p in ps}


def test_automation_follows_the_changed_shard_and_merges_once():
    """Tick by tick, with every requested partition materialized before the next tick: one
    changed shard rebuilds exactly its downstream closure, and nothing — in particular no global
    merge — is requested twice."""
    assert automated_keys(ALL_ASSETS) == {k for k in ASSET_KEYS if GRAPH.get(k).parent_keys}
    with dg.instance_for_test() as instance:

        def materialize(pairs):
            order = {k: i for i, k in enumerate(GRAPH.toposorted_asset_keys)}
            for key, pk in sorted(pairs, key=lambda kp: (order[kp[0]], str(kp[1]))):
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=pk))

        everything = set()
        for key in ASSET_KEYS:
            pdef = GRAPH.get(key).partitions_def
            everything |= {(key, pk) for pk in (pdef.get_partition_keys() if pdef else [None])}
        materialize(everything)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert tick.total_requested == 0  # everything present and nothing changed

        root, changed = dg.AssetKey("raw_articles"), shard_keys()[-1]
        materialize({(root, changed)})
        requested: list[tuple] = []
        for _ in range(12):
            tick = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=tick.cursor
            )
            if tick.total_requested == 0:
                break
            pairs = set()
            for r in tick.results:
                if r.true_subset.size:
                    if GRAPH.get(r.key).partitions_def is None:
                        pairs.add((r.key, None))
                    else:
                        pairs |= {
                            (r.key, pk) for pk in r.true_subset.expensively_compute_partition_keys()
                        }
            requested += sorted(pairs, key=str)
            materialize(pairs)
        else:
            pytest.fail("automation did not settle")
        assert root not in {k for k, _ in requested}  # roots: sensor / schedule, not automation
        assert len(requested) == len(set(requested)), "requested twice: " + str(
            sorted({p for p in requested if requested.count(p) > 1}, key=str)
        )
        assert set(requested) == _expected_closure(root, changed)


# ------------------------------------------------------------------------------------------------
# Nightly schedule and freshness planning (a small synthetic graph, so staleness is exercised
# whatever families exist today)
# ------------------------------------------------------------------------------------------------


@dg.asset(partitions_def=shard_partitions)
def syn_root() -> None: ...


@dg.asset
def syn_global() -> None: ...


@dg.asset(partitions_def=shard_partitions, deps=[syn_root, syn_global])
def syn_child() -> None: ...


@dg.asset(partitions_def=shard_partitions, deps=[syn_child])
def syn_grandchild() -> None: ...


SYN_DEFS = dg.Definitions(
    assets=[syn_root, syn_global, syn_child, syn_grandchild],
    jobs=[dg.define_asset_job("shards_job", selection=[syn_root, syn_child, syn_grandchild])],
)


def _mat(instance, asset, partition=None):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset.key, partition=partition))


def _plan(instance, partition):
    graph = SYN_DEFS.resolve_asset_graph()
    plan = plan_partition(MaterializationIndex(instance), graph, partition)
    return {k.path[-1]: r for k, r in plan.selected.items()}, {
        k.path[-1]: r for k, r in plan.blocked.items()
    }


def test_freshness_plan_missing_stale_and_blocked():
    with dg.instance_for_test() as instance:
        selected, blocked = _plan(instance, "0")
        assert selected == {"syn_root": "missing"}
        assert set(blocked) == {"syn_child", "syn_grandchild"}  # syn_global never materialized
        _mat(instance, syn_global)
        for k in shard_keys():
            _mat(instance, syn_root, k)
            _mat(instance, syn_child, k)
            _mat(instance, syn_grandchild, k)
        assert _plan(instance, "0") == ({}, {})
        _mat(instance, syn_root, "1")  # shard 1 upstream changed
        selected, _ = _plan(instance, "1")
        assert list(selected) == ["syn_child", "syn_grandchild"]
        assert selected["syn_child"].startswith("stale: upstream syn_root[1]")
        assert _plan(instance, "0") == ({}, {})
        _mat(instance, syn_global)  # a global parent changed: every shard is stale
        for k in shard_keys():
            assert list(_plan(instance, k)[0]) == ["syn_child", "syn_grandchild"]


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


# ------------------------------------------------------------------------------------------------
# Incoming-files sensor
# ------------------------------------------------------------------------------------------------


def _sensor_eval(instance, cursor):
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"corpus": CorpusSourceResource(kind="files", path_glob="")},
    ) as ctx:
        return sensors.incoming_files_sensor(ctx)


def _requests(result) -> dict[str, dg.RunRequest]:
    return {r.partition_key: r for r in (result.run_requests or [])}


def test_incoming_sensor_triggers_only_affected_shards_and_is_idempotent(
    tmp_path, monkeypatch, resources
):
    inc = tmp_path / "incoming"
    inc.mkdir()
    monkeypatch.delenv("SPHERE_INCOMING_DIR", raising=False)
    with dg.instance_for_test() as instance:
        skipped = _sensor_eval(instance, None)
        assert "SPHERE_INCOMING_DIR is not set" in skipped.skip_reason.skip_message
        monkeypatch.setenv("SPHERE_INCOMING_DIR", str(inc))
        (inc / "sub").mkdir()
        (inc / "a.txt").write_text("alpha article")
        (inc / "sub" / "b.md").write_text("# beta\nbeta article")
        (inc / "rows.jsonl").write_text(
            "\n".join(json.dumps({"id": i, "text": f"row {i}"}) for i in ("r1", "r2")) + "\n"
        )
        (inc / ".c.txt.partial").write_text("half written")  # dot-files are invisible
        first = _sensor_eval(instance, None)
        want = {shard_of(x, N) for x in ("a.txt", "sub/b.md", "r1", "r2")}
        reqs = _requests(first)
        assert set(reqs) == {str(s) for s in want}
        for pk, r in reqs.items():
            assert r.asset_selection[0] == ingest.raw_articles.key
            assert r.run_config["resources"]["corpus"]["config"] == {
                "kind": "files",
                "path_glob": str(inc / "**" / "*"),
            }
            assert r.run_key.startswith(f"incoming/g1/shard={pk}/")
        state = json.loads(first.cursor)
        mtime_ns, size, sha, shards = state["files"]["a.txt"]
        assert size == len("alpha article") and len(sha) == 64 and shards == [shard_of("a.txt", N)]
        assert ".c.txt.partial" not in state["files"]
        # same tick evaluated again from the same cursor: the same run keys (Dagster dedupes)
        assert [r.run_key for r in _requests(_sensor_eval(instance, None)).values()] == [
            r.run_key for r in reqs.values()
        ]
        # nothing changed; a touch (new mtime, same bytes) is not a change either
        assert _sensor_eval(instance, first.cursor).skip_reason is not None
        os.utime(inc / "a.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
        touched = _sensor_eval(instance, first.cursor)
        assert touched.skip_reason is not None and not touched.run_requests
        cursor = touched.cursor
        # change one text file: exactly its shard
        (inc / "a.txt").write_text("alpha article, second edition")
        changed = _sensor_eval(instance, cursor)
        assert set(_requests(changed)) == {str(shard_of("a.txt", N))}
        assert loads_state(changed.cursor, N).generation == 2
        # rewrite the jsonl: r1 removed, r3 added -> shards of r1, r2 and r3
        (inc / "rows.jsonl").write_text(
            "\n".join(json.dumps({"id": i, "text": f"row {i}"}) for i in ("r2", "r3")) + "\n"
        )
        rewritten = _sensor_eval(instance, changed.cursor)
        assert set(_requests(rewritten)) == {str(shard_of(i, N)) for i in ("r1", "r2", "r3")}
        # delete a file: its old shard
        (inc / "sub" / "b.md").unlink()
        deleted = _sensor_eval(instance, rewritten.cursor)
        assert set(_requests(deleted)) == {str(shard_of("sub/b.md", N))}

        # the requested run really ingests the new state into that shard
        req = _requests(changed)[str(shard_of("a.txt", N))]
        cfg = req.run_config["resources"]["corpus"]["config"]
        resources["corpus"] = CorpusSourceResource(**cfg)
        assert dg.materialize(
            [ingest.raw_articles], partition_key=req.partition_key, resources=resources
        ).success
        table = pq.read_table(
            Path(resources["warehouse"].partition_dir("raw_articles", req.partition_key))
            / "part-0.parquet"
        )
        rows = {r["article_id"]: r["text"] for r in table.to_pylist()}
        assert rows["a.txt"] == "alpha article, second edition"


# ------------------------------------------------------------------------------------------------
# Reliability
# ------------------------------------------------------------------------------------------------


def test_sigkill_mid_write_leaves_no_partial_partition_and_retry_completes(
    tmp_path, monkeypatch, resources
):
    from tests import orchestration_jobs as oj

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
        staged = list((wh / ".staging").rglob("*.parquet"))
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
    assert WarehouseResource(root=str(wh)).store().clean_staging() >= 2


@dg.asset(
    partitions_def=shard_partitions,
    deps=[ingest.raw_articles],
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def downstream_probe(context: dg.AssetExecutionContext) -> None:
    context.log.info("ran")


def test_failing_blocking_check_blocks_downstream(resources):
    check = ingest.raw_articles_ids_unique_and_sharded
    assert any(spec.blocking for spec in check.check_specs)
    store = resources["warehouse"].store()
    from sphere_assets.ingest.io import rows_to_table

    # plant a row in the wrong shard, as a buggy writer would
    bad_id = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", N) != 1)
    with store.partition_writer("raw_articles", "1") as w:
        from sphere_assets.lib.text.corpus import ArticleRow

        w.write_table(rows_to_table([ArticleRow(bad_id, "t", "text", "test", 4, None)]))
    res = dg.materialize(
        [ingest.raw_articles, check, downstream_probe],
        partition_key="0",
        resources=resources,
        raise_on_error=False,
    )
    assert not res.success
    evals = res.get_asset_check_evaluations()
    assert [e.passed for e in evals] == [False]
    assert res.asset_materializations_for_node("raw_articles")
    assert not res.asset_materializations_for_node("downstream_probe")
    # once the data is fixed, the same run goes through
    import shutil

    shutil.rmtree(resources["warehouse"].partition_dir("raw_articles", "1"))
    res = dg.materialize(
        [ingest.raw_articles, check, downstream_probe], partition_key="0", resources=resources
    )
    assert res.success and res.asset_materializations_for_node("downstream_probe")


def test_apply_orchestration_keeps_an_assets_own_condition():
    own = dg.AutomationCondition.on_cron("0 * * * *")

    @dg.asset(deps=[ingest.raw_articles], automation_condition=own)
    def custom() -> None: ...

    @dg.asset(deps=[ingest.raw_articles])
    def plain() -> None: ...

    mapped = {a.key.path[-1]: a for a in apply_orchestration([custom, plain, ingest.raw_articles])}
    assert mapped["custom"].specs_by_key[custom.key].automation_condition == own
    assert mapped["plain"].specs_by_key[plain.key].automation_condition is not None
    raw = mapped["raw_articles"].specs_by_key[ingest.raw_articles.key]
    assert raw.automation_condition is None
