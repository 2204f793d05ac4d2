"""Runs whose process is gone: marked failed, their concurrency-pool slots freed.

A run killed with SIGKILL (OOM killer, ``kill -9`` of the CLI's process group, a closed laptop
lid) never records its end: it stays STARTED and keeps the ``heavy`` pool slot its step claimed,
so every later torch/JAX step waits ("Step blocked by limit for pool heavy") forever. Dagster's
daemon cannot tell: run monitoring asks the run launcher, and the default launcher (and CLI runs,
which have none) cannot check a run worker's health. So ``sphere materialize-all`` (and
``sphere dead-runs``) look for themselves before running anything:

* a run is a candidate while it is STARTING/STARTED or holds pool slots or pending steps;
* its process is the pid in the ``sphere/pid`` tag (runs started by ``sphere``) or the pid
  Dagster recorded with the run's RUN_START event; its host is the ``sphere/host`` tag, or this
  machine when the instance keeps its runs in a local SQLite file (a run recorded in a shared
  Postgres without a host tag may live on another machine and is left alone);
* it is dead when no such process exists on this host, or the process with that pid started
  after the run did (the pid was reused).

A dead run gets a RUN_FAILURE event saying what happened (shown in the UI and in the CLI), and
its slots and pending steps are released so the next heavy step proceeds.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.dagster_run import RunsFilter

HOST_TAG = "sphere/host"
PID_TAG = "sphere/pid"
UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
# a process that started this much after the run's start is another process with a reused pid
PID_REUSE_SLACK_S = 1.0


def run_tags() -> dict[str, str]:
    """Tags that let a later `sphere` command tell whether this process still runs the run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int
    host: str
    slots: tuple[str, ...]  # "pool: step" pairs it held

    def message(self) -> str:
        held = f"; freed its pool slot(s) {', '.join(self.slots)}" if self.slots else ""
        return (
            f"run {self.run_id} ({self.job_name}) was still marked running but its process "
            f"{self.pid} on {self.host} is gone (killed?): marked it failed{held}"
        )


def _is_local_instance(instance: dg.DagsterInstance) -> bool:
    return type(instance.run_storage).__name__.startswith("Sqlite")


def _start_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return int(event.pid)
    return None


def process_alive(pid: int, started_at: float | None) -> bool:
    """Whether ``pid`` is a live process that was already running at ``started_at``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return started_at is None or created <= started_at + PID_REUSE_SLACK_S


def _held_slots(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    storage = instance.event_log_storage
    held: dict[str, list[str]] = {}
    if not storage.supports_global_concurrency_limits:
        return held
    for key in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(key)
        for slot in info.claimed_slots:
            held.setdefault(slot.run_id, []).append(f"{key}: {slot.step_key}")
        for step in info.pending_steps:
            held.setdefault(step.run_id, [])
    return held


def find_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    held = _held_slots(instance)
    records = instance.get_run_records(RunsFilter(statuses=list(UNFINISHED)))
    by_id = {r.dagster_run.run_id: r for r in records}
    extra = [rid for rid in held if rid not in by_id]
    if extra:
        for r in instance.get_run_records(RunsFilter(run_ids=extra)):
            by_id[r.dagster_run.run_id] = r
    me = socket.gethostname()
    dead = []
    for run_id, record in sorted(by_id.items()):
        run = record.dagster_run
        host = run.tags.get(HOST_TAG) or (me if _is_local_instance(instance) else None)
        if host != me:
            continue  # another machine's run: only that machine can tell
        pid = run.tags.get(PID_TAG)
        pid = int(pid) if pid and pid.isdigit() else _start_pid(instance, run_id)
        finished = run.status not in UNFINISHED
        if pid is None and not finished:
            continue  # not started far enough to know its process
        if not finished and process_alive(
            pid, record.start_time or record.create_timestamp.timestamp()
        ):
            continue
        dead.append(DeadRun(run_id, run.job_name, pid or -1, host, tuple(held.get(run_id, ()))))
    return dead


def reap_dead_runs(instance: dg.DagsterInstance) -> list[DeadRun]:
    """Mark every dead run failed (saying why) and free its slots; returns what was done."""
    dead = find_dead_runs(instance)
    for d in dead:
        run = instance.get_run_by_id(d.run_id)
        if run is not None and run.status in UNFINISHED:
            instance.report_run_failed(run, message=f"sphere: {d.message()}")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(d.run_id)
    return dead
