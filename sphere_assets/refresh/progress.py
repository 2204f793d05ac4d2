"""A one-line progress display for `sphere materialize-all` while a stage's run executes.

The run executes in step processes, so the CLI learns what they do from the instance's event log:
a thread polls the run's new event records (``RunWatcher``), folds them into a ``RunProgress``
(steps started and finished, materializations, the latest ProgressMeter line of each running
step) and redraws one terminal line in place (``ProgressLine``: carriage return + erase to the
end of the line), e.g.

    ⠹ [1/7] shards_job [0...3]  raw_articles  52,113 rec 8,210 rec/s 61% ETA 4s  0/1 steps  6.3s

Only on a terminal: on a pipe or file (CI, ``make run > log``) nothing is drawn, so the report
stays one line per stage/partition. The line is erased before the stage's report lines print.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import dagster as dg

# sphere_assets.lib.text.corpus.ProgressMeter's line, optionally prefixed "<asset>: "
METER_LINE = re.compile(
    r"(?P<records>\d+) records, (?P<mb>[\d.]+) MB in (?P<elapsed>[\d.]+)s "
    r"\((?P<rate>\d+) rec/s, (?P<mbs>[\d.]+) MB/s\)"
    r"(?:, (?P<pct>\d+)% done, ETA (?P<eta>\d+)s)?"
)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
STEP_EVENTS = {
    dg.DagsterEventType.STEP_START.value,
    dg.DagsterEventType.STEP_SUCCESS.value,
    dg.DagsterEventType.STEP_FAILURE.value,
    dg.DagsterEventType.STEP_SKIPPED.value,
}


@dataclass(frozen=True)
class MeterReading:
    """One parsed ProgressMeter line, with the event's timestamp (seconds since the epoch)."""

    records: int
    rate: float
    percent: int | None
    eta_s: float | None
    at: float

    def text(self, now: float) -> str:
        """'52,113 rec 8,210 rec/s 61% ETA 4s': the ETA counts down since the line was logged."""
        out = f"{self.records:,} rec {self.rate:,.0f} rec/s"
        if self.percent is not None:
            out += f" {self.percent}%"
        if self.eta_s is not None:
            out += f" ETA {max(self.eta_s - max(now - self.at, 0.0), 0.0):.0f}s"
        return out


def parse_meter(message: str, at: float) -> MeterReading | None:
    """The ProgressMeter reading in a log message, or None when it is not one."""
    m = METER_LINE.search(message or "")
    if m is None:
        return None
    pct, eta = m.group("pct"), m.group("eta")
    return MeterReading(
        records=int(m.group("records")),
        rate=float(m.group("rate")),
        percent=int(pct) if pct is not None else None,
        eta_s=float(eta) if eta is not None else None,
        at=at,
    )


@dataclass
class RunProgress:
    """What one run's event records say so far; ``render`` turns it into the display line."""

    label: str
    started_at: float = field(default_factory=time.time)
    running: dict[str, float] = field(default_factory=dict)  # step key -> start timestamp
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    planned: int | None = None  # steps in the execution plan, once the run says
    materialized: int = 0
    meters: dict[str, MeterReading] = field(default_factory=dict)  # step key -> latest reading

    def apply(self, entry) -> None:
        """Fold one ``EventLogEntry`` (in log order) into the state."""
        event = entry.dagster_event
        kind = event.event_type_value if event is not None else None
        step = entry.step_key
        if kind == dg.DagsterEventType.STEP_START.value and step:
            self.running[step] = entry.timestamp
        elif kind in STEP_EVENTS and step:
            self.running.pop(step, None)
            self.meters.pop(step, None)
            (
                self.failed if kind == dg.DagsterEventType.STEP_FAILURE.value else self.finished
            ).append(step)
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION.value:
            self.materialized += 1
        elif kind is None and step:
            reading = parse_meter(entry.user_message, entry.timestamp)
            if reading is not None:
                self.meters[step] = reading

    def apply_all(self, entries: Iterable) -> None:
        for entry in entries:
            self.apply(entry)

    def render(self, now: float, width: int = 100, tick: int = 0) -> str:
        """The display line at time ``now`` (seconds since the epoch), at most ``width - 1``
        characters (the last column would wrap on some terminals)."""
        parts = [f"{SPINNER[tick % len(SPINNER)]} {self.label}"]
        if self.running:
            step = max(self.running, key=self.running.get)  # the latest started
            name = step if len(self.running) == 1 else f"{step} (+{len(self.running) - 1})"
            meter = self.meters.get(step)
            parts.append(
                f"{name}  {meter.text(now)}"
                if meter is not None
                else f"{name} {now - self.running[step]:.0f}s"
            )
        done = len(self.finished) + len(self.failed)
        total = f"/{self.planned}" if self.planned else ""
        parts.append(f"{done}{total} steps")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.materialized:
            parts.append(f"{self.materialized} written")
        parts.append(f"{max(now - self.started_at, 0.0):.1f}s")
        line = "  ".join(parts)
        return line if len(line) < width else line[: max(width - 2, 1)] + "…"


class ProgressLine:
    """One line redrawn in place on a terminal stream; ``clear`` erases it."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.shown = False

    def draw(self, text: str) -> None:
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def find_run_id(
    instance: dg.DagsterInstance, job_name: str, tags: dict[str, str], created_after: datetime
) -> str | None:
    """The run this CLI process just created for ``job_name`` (its pid tag and start time tell
    it from other processes' runs; stages run one at a time)."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags=tags, created_after=created_after), limit=1
    )
    return records[0].dagster_run.run_id if records else None


class RunWatcher:
    """Polls the run's event log every ``interval`` seconds in a thread and redraws the line.

    Use as a context manager around the run's execution; the line is erased on exit."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        job_name: str,
        find_tags: dict[str, str],
        label: str,
        stream: TextIO,
        interval: float = 0.25,
    ):
        self.instance = instance
        self.job_name = job_name
        self.find_tags = find_tags
        self.progress = RunProgress(label)
        self.line = ProgressLine(stream)
        self.interval = interval
        self.run_id: str | None = None
        self._cursor: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sphere-progress", daemon=True)
        self._created_after = datetime.now(UTC)
        self._width = shutil.get_terminal_size((100, 20)).columns

    def __enter__(self) -> RunWatcher:
        self._created_after = datetime.fromtimestamp(time.time() - 1.0, UTC)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.line.clear()

    def poll(self) -> None:
        """Read the run's new event records (finding the run first) into ``progress``."""
        if self.run_id is None:
            self.run_id = find_run_id(
                self.instance, self.job_name, self.find_tags, self._created_after
            )
            if self.run_id is None:
                return
            self._plan_size()
        while True:
            conn = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=500)
            self.progress.apply_all(r.event_log_entry for r in conn.records)
            self._cursor = conn.cursor
            if not conn.has_more:
                break

    def _plan_size(self) -> None:
        """Steps in the run's execution plan (shown as done/total)."""
        run = self.instance.get_run_by_id(self.run_id)
        snapshot_id = getattr(run, "execution_plan_snapshot_id", None) if run else None
        if snapshot_id is None:
            return
        try:
            plan = self.instance.get_execution_plan_snapshot(snapshot_id)
        except Exception:  # a display detail: never let it break the run
            return
        self.progress.planned = len(plan.step_keys_to_execute) or None

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the instance is busy being written: try again next tick
                pass
            self.line.draw(self.progress.render(time.time(), self._width, tick))
            tick += 1
            self._stop.wait(self.interval)
