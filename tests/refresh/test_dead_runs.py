"""Issue 16 item 2: a run killed with SIGKILL (its whole process group) kept its ``heavy`` pool
slot forever and every later heavy step waited. `sphere dead-runs` (run first by
`sphere materialize-all`) marks it failed, says so, frees the slot, and the next heavy step runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from sphere_assets.refresh.dead_runs import HOST_TAG, PID_TAG, find_dead_runs, reap_dead_runs
from tests.refresh.dead_run_jobs import READY_ENV

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(home: Path, ready: Path) -> dict:
    return {**os.environ, "DAGSTER_HOME": str(home), READY_ENV: str(ready), "PYTHONPATH": str(REPO)}


def _start(job: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.refresh.dead_run_jobs", job],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, killed whole below
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the heavy step never started"
        time.sleep(0.2)


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _slots(instance) -> list:
    return instance.event_log_storage.get_concurrency_info("heavy").claimed_slots


def test_killed_run_is_marked_failed_and_the_next_heavy_step_proceeds(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")  # heavy pool limit 1
    ready = tmp_path / "ready"
    env = _env(home, ready)

    holder = _start("hold", env)
    _wait_for(ready, holder)
    _kill_group(holder)  # kill -9 of the run's process group, mid-step

    # as on main: the dead run holds the slot, and a new heavy step waits for it
    blocked = _start("quick", env)
    time.sleep(8)
    assert blocked.poll() is None, blocked.communicate()[0]
    _kill_group(blocked)  # (killed too: a dead run with a pending step, not a slot)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs()
        assert {r.status for r in runs} == {dg.DagsterRunStatus.STARTED}
        assert all(r.tags[PID_TAG] and r.tags[HOST_TAG] for r in runs)
        assert len(_slots(instance)) == 1
        assert {d.run_id for d in find_dead_runs(instance)} == {r.run_id for r in runs}
    finally:
        instance.dispose()

    # the user is told, through the CLI
    out = subprocess.run(
        [sys.executable, "-m", "sphere_assets.cli", "dead-runs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("is gone (killed?): marked it failed") == 2, out.stdout
    assert "freed its pool slot(s) heavy: hold_heavy_slot" in out.stdout

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        for run in instance.get_runs():
            assert run.status == dg.DagsterRunStatus.FAILURE
            failure = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
            ).records
            assert "is gone (killed?)" in failure[0].event_log_entry.dagster_event.message
        assert _slots(instance) == []
        assert reap_dead_runs(instance) == []  # nothing twice
    finally:
        instance.dispose()

    # the next heavy step proceeds
    nxt = _start("quick", env)
    out, _ = nxt.communicate(timeout=120)
    assert nxt.returncode == 0 and "success True" in out, out


def test_a_live_run_is_left_alone(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    ready = tmp_path / "ready"
    holder = _start("hold", _env(home, ready))
    try:
        _wait_for(ready, holder)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            assert find_dead_runs(instance) == []
            assert reap_dead_runs(instance) == []
            assert len(_slots(instance)) == 1
            assert instance.get_runs()[0].status == dg.DagsterRunStatus.STARTED
        finally:
            instance.dispose()
    finally:
        _kill_group(holder)
