"""`sphere materialize-all` as real instance runs of the code location's asset jobs.

Each stage of the plan (assets sharing one partitions definition, in dependency order) becomes
ONE run of the cross-family job for that definition (``shards_job``, ``global_job``,
``band_limits_job``) narrowed to the stage's assets; a partitioned stage runs its partitions as
one range (every asset has ``BackfillPolicy.single_run``), tagged
``dagster/asset_partition_range_start/end`` exactly as the UI and ``dagster asset materialize
--partition-range`` tag it. The run is created in the instance and executed through the job's
reconstructable definition (``dagster.execute_job``), so it uses the job's executor (step
processes, the ``heavy`` pool, op retries), carries the job's tags (run retries, family) and
shows its job, targets and partitions in the UI's run list and timeline.

The console logger is set to CRITICAL unless ``verbose``: the per-stage summary comes from the
instance's event log after the run, not from Dagster's DEBUG stream.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import dagster as dg

from sphere_assets.refresh.jobs import CROSS_FAMILY_JOBS, partitions_label

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
DEFS_MODULE, DEFS_ATTR = "sphere_assets.definitions", "defs"
# what the quiet mode drops from the stderr the step processes share with the CLI: Dagster's
# DEBUG/INFO console lines (the context-free "Executing step in subprocess" event ignores the
# run config's logger level) and its beta/preview API warnings with their source line
QUIET_LINE = re.compile(r" - dagster - (DEBUG|INFO) - ")
QUIET_WARNING = re.compile(r"(Beta|Preview)Warning: .* is currently in (beta|preview)")


@dataclass(frozen=True)
class StageRun:
    """One run to launch: a job narrowed to ``keys``, over ``partitions`` (a contiguous slice
    of the definition's keys; empty for an unpartitioned stage)."""

    stage: int
    job_name: str
    keys: tuple[dg.AssetKey, ...]
    partitions: tuple[str, ...]

    def tags(self) -> dict[str, str]:
        if not self.partitions:
            return {}
        if len(self.partitions) == 1:
            return {PARTITION_TAG: self.partitions[0]}
        return {RANGE_START_TAG: self.partitions[0], RANGE_END_TAG: self.partitions[-1]}

    def span(self) -> str:
        """' [0]', ' [0...3]', or '' for an unpartitioned stage."""
        if not self.partitions:
            return ""
        if len(self.partitions) == 1:
            return f" [{self.partitions[0]}]"
        return f" [{self.partitions[0]}...{self.partitions[-1]}]"

    def label(self) -> str:
        names = ",".join(k.to_user_string() for k in self.keys)
        return f"{self.job_name}{self.span()} {names}"


class UnknownPartitionsError(ValueError):
    """``--partitions`` named keys that no partitioned stage has."""


def contiguous_runs(all_keys: Sequence[str], wanted: Iterable[str]) -> list[tuple[str, ...]]:
    """Split the wanted keys into maximal runs of neighbours in ``all_keys`` order, so a range
    tag covers exactly them (2 of 0..3 -> (2,); 0,1,3 -> (0,1), (3,))."""
    wanted = set(wanted)
    out: list[list[str]] = []
    prev = False
    for key in all_keys:
        if key in wanted:
            if prev:
                out[-1].append(key)
            else:
                out.append([key])
        prev = key in wanted
    return [tuple(r) for r in out]


def plan_runs(stages, partition_filter: set[str] | None = None) -> tuple[list[StageRun], list[str]]:
    """The runs for ``stages`` (cli.plan_stages) and notes on how ``partition_filter`` applied.

    A stage whose partitions definition holds none of the filter's keys runs all its partitions
    (its downstream stages read them) and a note says so; a filter key that no stage's
    definition holds is an ``UnknownPartitionsError`` listing the valid keys."""
    runs: list[StageRun] = []
    notes: list[str] = []
    valid: dict[str, list[str]] = {}
    for i, (pdef, keys) in enumerate(stages, start=1):
        label = partitions_label(pdef)
        job = CROSS_FAMILY_JOBS.get(label)
        if job is None:
            raise ValueError(f"stage {i}: no job for partitions {label!r} (refresh/jobs.py)")
        asset_keys = tuple(keys)
        if pdef is None:
            runs.append(StageRun(i, job, asset_keys, ()))
            continue
        all_keys = list(pdef.get_partition_keys())
        valid[label] = all_keys
        chosen = [k for k in all_keys if partition_filter and k in partition_filter]
        if partition_filter and not chosen:
            notes.append(
                f"stage {i}: none of --partitions is a {label} partition; running all of "
                f"{','.join(all_keys)}"
            )
        for part in contiguous_runs(all_keys, chosen or all_keys):
            runs.append(StageRun(i, job, asset_keys, part))
    if partition_filter:
        known = {k for keys in valid.values() for k in keys}
        unknown = sorted(partition_filter - known)
        if unknown:
            listing = "; ".join(f"{label}: {','.join(keys)}" for label, keys in valid.items())
            raise UnknownPartitionsError(
                f"--partitions: no partition {','.join(unknown)}; valid keys are {listing}"
            )
    return runs, notes


def quiet_run_config(verbose: bool) -> dict:
    """Dagster's console logger at CRITICAL unless ``verbose``: a failure's stack trace stays
    in the event log and the CLI prints its root cause in one line (read_step_errors)."""
    return {} if verbose else {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class StderrFilter:
    """Drops quiet-mode noise from a stream of stderr lines (see QUIET_LINE, QUIET_WARNING);
    a dropped warning's next line (the indented source line Python prints) goes with it."""

    def __init__(self) -> None:
        self.dropped = 0
        self._skip_source = False

    def keep(self, line: str) -> bool:
        if self._skip_source:
            self._skip_source = False
            if line.startswith("  "):
                self.dropped += 1
                return False
        if QUIET_WARNING.search(line):
            self._skip_source = True
            self.dropped += 1
            return False
        if QUIET_LINE.search(line):
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Route file descriptor 2 (which step processes inherit) through a StderrFilter while the
    block runs; everything else (errors, tracebacks, ERROR events) passes through unchanged."""
    if not enabled:
        yield None
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    filt = StderrFilter()

    def pump() -> None:
        with os.fdopen(read_fd, "r", errors="replace", newline="") as src:
            for line in src:
                if filt.keep(line):
                    os.write(saved, line.encode("utf-8", "replace"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield filt
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer held by this process
        thread.join(timeout=30)
        os.close(saved)


def reconstructable_job(job_name: str, working_directory: str):
    """The job as a reconstructable pointer into ``sphere_assets.definitions``, so step
    processes (multiprocess / celery executors) load it themselves."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module(
        DEFS_MODULE, DEFS_ATTR, working_directory=working_directory
    )
    return repo.get_reconstructable_job(job_name)


@dataclass
class Materialized:
    """One asset partition a run materialized, as its event recorded it."""

    asset: str
    partition: str | None
    rows: int | None
    nbytes: int | None


@dataclass
class RunOutcome:
    run: StageRun
    run_id: str
    success: bool
    seconds: float
    materialized: list[Materialized] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def execute_stage_run(
    instance: dg.DagsterInstance,
    run: StageRun,
    working_directory: str,
    extra_tags: dict[str, str],
    verbose: bool = False,
    progress: TextIO | None = None,
    progress_label: str = "",
) -> RunOutcome:
    """Create the run in ``instance`` and execute it with the job's executor; wait for it.
    With a ``progress`` stream (a terminal), one line there follows the run's steps
    (sphere_assets/refresh/progress.py) and is erased when the run ends."""
    t0 = time.perf_counter()
    watch = contextlib.nullcontext()
    if progress is not None:
        from sphere_assets.refresh.progress import RunWatcher

        watch = RunWatcher(
            instance, run.job_name, extra_tags, progress_label or run.label(), progress
        )
    with quiet_stderr(not verbose), watch:
        with dg.execute_job(
            reconstructable_job(run.job_name, working_directory),
            instance=instance,
            run_config=quiet_run_config(verbose),
            tags={**extra_tags, **run.tags()},
            asset_selection=list(run.keys),
            raise_on_error=False,
        ) as result:
            run_id = result.run_id
            success = result.success
    seconds = time.perf_counter() - t0
    return RunOutcome(
        run,
        run_id,
        success,
        seconds,
        materialized=read_materializations(instance, run_id),
        errors=[] if success else read_step_errors(instance, run_id),
    )


def _int_value(metadata: dict, key: str) -> int | None:
    value = metadata.get(key)
    raw = getattr(value, "value", value)
    return int(raw) if isinstance(raw, (int, float)) else None


def read_materializations(instance: dg.DagsterInstance, run_id: str) -> list[Materialized]:
    """Each ASSET_MATERIALIZATION of the run: asset, partition, row count, bytes on disk (the
    size of the files its ``path`` metadata names, when it names a directory or file)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100_000
    ).records
    out = []
    for record in records:
        mat = record.asset_materialization
        if mat is None:
            continue
        metadata = dict(mat.metadata)
        out.append(
            Materialized(
                asset=mat.asset_key.to_user_string(),
                partition=mat.partition,
                rows=_int_value(metadata, "dagster/row_count"),
                nbytes=path_bytes(metadata.get("path")),
            )
        )
    return out


def path_bytes(value) -> int | None:
    """Bytes of the file or directory tree at a ``path`` metadata value (None without one)."""
    raw = getattr(value, "path", None) or getattr(value, "value", None) or value
    if not isinstance(raw, str) or not raw:
        return None
    p = Path(raw)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def root_cause(error) -> str:
    """The first line of the innermost cause of a SerializableErrorInfo (the asset's own
    exception, not the retry wrapper around it)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = (error.message or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_step_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """One line per failed step (the run's failure only when no step failed): step key and
    the root cause's message."""
    lines = []
    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        if lines:
            break
        for record in instance.get_records_for_run(run_id, of_type=kind).records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            error = getattr(event.event_specific_data, "error", None)
            text = root_cause(error) if error is not None else (event.message or kind.value)
            lines.append(f"{event.step_key or 'run'}: {text}")
    return lines


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:8.2f} MB"


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:>10,.0f} rows/s" if seconds > 0 else ""


def outcome_lines(outcome: RunOutcome, n_stages: int) -> list[str]:
    """One line per partition the run wrote (rows and bytes summed over the stage's assets),
    then the run's line: its total, wall seconds, rate and run id. Seconds are the run's: a
    range run writes its partitions in one step per asset."""
    run = outcome.run
    head = f"[{run.stage}/{n_stages}] {run.job_name:<15}"
    by_part: dict[str | None, list[Materialized]] = {}
    for m in outcome.materialized:
        by_part.setdefault(m.partition, []).append(m)
    lines = []
    for part in run.partitions:
        mats = by_part.get(part, [])
        lines.append(
            f"{head} {part:>8}  {sum(m.rows or 0 for m in mats):>12,} rows "
            f"{_mb(sum(m.nbytes or 0 for m in mats))}  ({len(mats)} assets)"
        )
    rows = sum(m.rows or 0 for m in outcome.materialized)
    nbytes = sum(m.nbytes or 0 for m in outcome.materialized)
    status = "ok" if outcome.success else "FAILED"
    what = ",".join(k.to_user_string() for k in run.keys)
    lines.append(
        f"{head} {status:>8}  {rows:>12,} rows {_mb(nbytes)} {outcome.seconds:7.1f} s"
        f"{_rate(rows, outcome.seconds)}  run {outcome.run_id[:8]} {what}"
    )
    return lines


def summary_table(outcomes: Sequence[RunOutcome], wall_seconds: float) -> list[str]:
    """Per asset: partitions written, rows, MB and the seconds of the runs that wrote it."""
    per: dict[str, list] = {}
    for o in outcomes:
        for key in o.run.keys:
            per.setdefault(key.to_user_string(), [0, 0, 0, 0.0])[3] += o.seconds
        for m in o.materialized:
            entry = per.setdefault(m.asset, [0, 0, 0, 0.0])
            entry[0] += 1
            entry[1] += m.rows or 0
            entry[2] += m.nbytes or 0
    width = max([len("asset"), *map(len, per)])
    lines = [
        f"{'asset':<{width}}  {'parts':>5}  {'rows':>12}  {'MB':>8}  {'run s':>7}",
        f"{'-' * width}  {'-' * 5}  {'-' * 12}  {'-' * 8}  {'-' * 7}",
    ]
    for name, (parts, rows, nbytes, secs) in per.items():
        lines.append(
            f"{name:<{width}}  {parts:>5}  {rows:>12,}  {nbytes / 1e6:>8.2f}  {secs:>7.1f}"
        )
    total_rows = sum(v[1] for v in per.values())
    total_bytes = sum(v[2] for v in per.values())
    lines.append(
        f"{'total':<{width}}  {sum(v[0] for v in per.values()):>5}  {total_rows:>12,}  "
        f"{total_bytes / 1e6:>8.2f}  {wall_seconds:>7.1f}  ({len(outcomes)} runs)"
    )
    return lines
