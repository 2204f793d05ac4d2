"""Scale-out on dagster-celery: RabbitMQ broker, Postgres instance storage, two workers.

Starts two ``dagster-celery worker start`` processes on a queue of this test's own, points a
fresh Postgres database at a temporary DAGSTER_HOME, and runs the ingest/patch family with
``SPHERE_EXECUTOR=celery``: every shard partition of ``ingest_job`` (one partition-range run,
as a backfill of single-run assets launches it), then ``patching_global_job`` (the entropy
model), then every shard partition of ``patching_shards_job``. RabbitMQ hands each step (assets
and checks) to the next idle worker, so both get steps. Every step must have executed in one of
the two workers (their engine events in Postgres say which), and the warehouse files must be
byte-identical to the same assets materialized in process.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on 127.0.0.1:5432; in CI (CI set)
a missing RabbitMQ is started with ``rabbitmq-server -detached``, elsewhere the test skips.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import ALL_ASSETS, FAMILY_CHECKS, RESOURCES, defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.patching import defs as patching
from sphere_resources.warehouse import WarehouseResource
from tests.resources.pg_util import fresh_database, with_database

# services / subprocesses: left out of `make test-fast`
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
FAMILY_ASSETS = ["raw_articles", "entropy_model", "blt_patches", "patch_embeddings"]
# a small training budget: the test is about where steps run, not the model's quality
ENTROPY_CONFIG = {
    "dim": 32,
    "n_layers": 1,
    "n_heads": 2,
    "window": 16,
    "seq_len": 64,
    "batch_size": 16,
    "steps": 40,
    "lr": 1e-2,
    "warmup_steps": 4,
    "sample_bytes": 100_000,
    "holdout_fraction": 0.1,
    "max_eval_bytes": 20_000,
    "num_threads": 1,
}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    if not _port_open("127.0.0.1", 5672):
        if not os.environ.get("CI"):
            pytest.skip("RabbitMQ not on 127.0.0.1:5672 (start it: rabbitmq-server -detached)")
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        deadline = time.monotonic() + 90
        while not _port_open("127.0.0.1", 5672):
            if time.monotonic() > deadline:
                pytest.fail("CI needs RabbitMQ on 127.0.0.1:5672; rabbitmq-server did not start")
            time.sleep(1)
    return BROKER


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
    }


def _start_worker(name: str, queue: str, config_yaml: Path, env: dict, log: Path):
    bindir = Path(sys.executable).parent
    out = open(log, "wb")  # noqa: SIM115 - closed with the process in _stop
    proc = subprocess.Popen(
        [
            str(bindir / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(config_yaml),
            "-q",
            queue,
            "-n",
            name,
            "--",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=REPO,
        env={**env, "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc._sphere_log = out  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    proc._sphere_log.close()  # type: ignore[attr-defined]


def _wait_for_workers(names: list[str], workers, logs, timeout: float = 120) -> None:
    from celery import Celery

    app = Celery(broker=BROKER)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w, log in zip(workers, logs, strict=True):
            if w.poll() is not None:
                pytest.fail(f"celery worker exited: {log.read_text()[-3000:]}")
        replies = app.control.ping(destination=names, timeout=1.0) or []
        if {name for r in replies for name in r} >= set(names):
            return
    pytest.fail("celery workers did not answer ping:\n" + "\n".join(p.read_text() for p in logs))


def _reference_run(tmp_path: Path, resources: dict) -> Path:
    """The same assets in process: the bytes the Celery run must reproduce."""
    ref = tmp_path / "ref"
    resources = {**RESOURCES, **resources, "warehouse": WarehouseResource(root=str(ref))}
    all_defs = [*ALL_ASSETS, *FAMILY_CHECKS]
    first, last = shard_keys()[0], shard_keys()[-1]
    rng = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    for selection, tags, cfg in (
        ([ingest.raw_articles.key], rng, None),
        ([patching.entropy_model.key], {}, {"ops": {"entropy_model": {"config": ENTROPY_CONFIG}}}),
        ([patching.blt_patches.key, patching.patch_embeddings.key], rng, None),
    ):
        res = dg.materialize(
            all_defs, selection=selection, resources=resources, tags=tags, run_config=cfg
        )
        assert res.success, selection
    return ref


@pytest.mark.timeout(600)
def test_celery_workers_materialize_the_ingest_patch_family_byte_identically(
    rabbitmq, postgres_url, tmp_path, resources
):

    for name in FAMILY_ASSETS:
        assert dg.AssetKey(name) in defs.resolve_asset_graph().get_all_asset_keys(), name
    queue = f"sphere-test-{uuid.uuid4().hex[:8]}"
    short = [f"w1-{queue}", f"w2-{queue}"]
    names = [f"{n}@{socket.gethostname()}" for n in short]  # dagster-celery appends @%h
    with fresh_database(postgres_url, prefix="sphere_celery") as db_url:
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which dagster-postgres cannot use
        db_url = with_database(db_url, db_url.rsplit("/", 1)[1], "postgresql+psycopg2")
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            "telemetry:\n  enabled: false\n"
            f"storage:\n  postgres:\n    postgres_url: {json.dumps(db_url)}\n"
        )
        worker_yaml = tmp_path / "celery.yaml"
        worker_yaml.write_text(
            "execution:\n  config:\n"
            f"    broker: {json.dumps(rabbitmq)}\n"
            "    backend: rpc://\n"
            "    config_source:\n      worker_prefetch_multiplier: 1\n"
        )
        wh = tmp_path / "wh"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SPHERE_") or k == "SPHERE_TEST_POSTGRES_URL"
        }
        env.update(
            DAGSTER_HOME=str(home),
            SPHERE_WAREHOUSE=str(wh),
            SPHERE_CATALOG=str(tmp_path / "sphere.duckdb"),
            SPHERE_EXECUTOR="celery",
            SPHERE_CELERY_BROKER=rabbitmq,
            SPHERE_CELERY_QUEUE=queue,
            PYTHONPATH=str(REPO),
        )
        logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
        workers = [
            _start_worker(n, queue, worker_yaml, env, log)
            for n, log in zip(short, logs, strict=True)
        ]
        try:
            _wait_for_workers(names, workers, logs)
            # only the entropy model run takes op config (its small training budget)
            small = {"ops": {"entropy_model": {"config": ENTROPY_CONFIG}}}
            # all shard partitions in one run per job, as a UI backfill of these single-run
            # backfill-policy assets launches it; its steps (assets, checks) spread over workers
            every_shard = {
                "dagster/asset_partition_range_start": shard_keys()[0],
                "dagster/asset_partition_range_end": shard_keys()[-1],
            }
            plan = {
                "stages": [
                    ["ingest_job", [every_shard], {}],
                    ["patching_global_job", [{}], small],
                    ["patching_shards_job", [every_shard], {}],
                ]
            }
            (tmp_path / "plan.json").write_text(json.dumps(plan))
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "tests.refresh.celery_driver", str(tmp_path / "plan.json")],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            print(f"celery runs: {time.perf_counter() - t0:.1f}s")
            worker_logs = "\n".join(p.read_text()[-2000:] for p in logs)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + worker_logs
            outputs = [
                json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")
            ]
        finally:
            for w in workers:
                _stop(w)
            _delete_queue(queue)

        assert len(outputs) == 3 and all(o["success"] for o in outputs)
        used = _celery_workers_used(db_url, [o["run_id"] for o in outputs])
        assert used and set(used.values()) <= set(names), used
        assert len(set(used.values())) == 2, f"only one worker got steps: {used}"

    ref = _reference_run(tmp_path, resources)
    for name in FAMILY_ASSETS:
        got, want = _digests(wh / name), _digests(ref / name)
        assert want and got == want, name
    shutil.rmtree(ref)


def _celery_workers_used(db_url: str, run_ids: list[str]) -> dict[str, str]:
    """step key (per run) -> the Celery worker that executed it, from the engine events."""
    import dagster as dg

    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"sphere-celery-read-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"telemetry:\n  enabled: false\nstorage:\n  postgres:\n    postgres_url: {json.dumps(db_url)}\n"
    )
    used = {}
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for run_id in run_ids:
                for rec in instance.all_logs(run_id):
                    ev = rec.dagster_event
                    if ev is None or ev.event_type_value != "ENGINE_EVENT":
                        continue
                    md = ev.engine_event_data.metadata if ev.engine_event_data else {}
                    worker = md.get("Celery worker")
                    if worker is not None:
                        used[f"{run_id[:8]}:{ev.step_key}"] = worker.value
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return used


def _delete_queue(queue: str) -> None:
    from kombu import Connection

    try:
        with Connection(BROKER, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # the queue is gone already, or the broker is; nothing to clean
        pass
