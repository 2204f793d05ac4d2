"""The one-line progress display of `sphere materialize-all` (sphere_assets/refresh/progress.py).

The renderer is fed the event records a real run wrote to a real instance (raw_articles over a
range of shards on the bundled corpus, whose ProgressMeter logs count, rate and ETA), and the
watcher thread follows a run while it executes. The terminal end-to-end run is in
tests/ui/test_cli.py (under a pseudo-terminal).
"""

from __future__ import annotations

import io
import re

import dagster as dg

from sphere_assets.ingest.raw_articles import raw_articles
from sphere_assets.lib.text.corpus import ProgressMeter
from sphere_assets.refresh.progress import (
    ProgressLine,
    RunProgress,
    RunWatcher,
    find_run_id,
    parse_meter,
)

RANGE = {
    "dagster/asset_partition_range_start": "0",
    "dagster/asset_partition_range_end": "3",
}
FIND_TAGS = {"sphere/pid": "progress-test"}


def _meter_lines(total_bytes: int | None, records: int, nbytes: int) -> list[str]:
    lines: list[str] = []
    ProgressMeter(lines.append, total_bytes).maybe_log(records, nbytes, force=True)
    return lines


def test_parse_meter_reads_the_meters_own_lines():
    (with_total,) = _meter_lines(10_000_000, 52_113, 6_100_000)
    reading = parse_meter(f"patch_embeddings: {with_total}", at=100.0)
    assert reading.records == 52_113 and reading.percent == 61
    assert reading.eta_s is not None and reading.rate > 0
    # the ETA counts down from when the line was logged, never below 0
    later = reading.text(now=100.0 + 2)
    assert re.search(rf"ETA {max(reading.eta_s - 2, 0):.0f}s$", later), later
    assert reading.text(now=1e12).endswith("ETA 0s")
    (without_total,) = _meter_lines(None, 7, 1000)
    bare = parse_meter(without_total, at=0.0)
    assert bare.records == 7 and bare.percent is None and bare.eta_s is None
    assert "ETA" not in bare.text(0.0)
    assert parse_meter("sh_basis L=16: built in 0.1s", at=0.0) is None


def _materialize(instance, resources, tags):
    return dg.materialize([raw_articles], instance=instance, resources=resources, tags=tags)


def test_replayed_records_render_the_running_step_and_its_meter(resources, tmp_path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = _materialize(instance, resources, RANGE)
        assert result.success
        entries = [r.event_log_entry for r in instance.get_records_for_run(result.run_id).records]
    progress = RunProgress("[1/7] shards_job [0...3]", started_at=entries[0].timestamp)
    frames = []
    seen_meter = False
    for entry in entries:
        progress.apply(entry)
        frame = progress.render(entry.timestamp + 1.0, width=200)
        frames.append(frame)
        if progress.meters:
            seen_meter = True
            assert "raw_articles  " in frame and " rec/s" in frame, frame
            (reading,) = progress.meters.values()
            assert f"{reading.records:,} rec" in frame
    assert seen_meter, "no ProgressMeter line reached the event log"
    # before its first meter line the step shows how long it has run
    assert any(re.search(r"raw_articles \d+s", f) for f in frames), frames
    assert all(f.startswith("⠋ [1/7] shards_job [0...3]") for f in frames)
    # the end state: the step finished, each shard materialized, nothing running
    assert progress.finished == ["raw_articles"] and not progress.failed
    assert progress.materialized == 4 and not progress.running
    assert frames[-1].endswith("s") and "1 steps" in frames[-1] and "4 written" in frames[-1]
    # never wider than the terminal
    narrow = progress.render(entries[-1].timestamp, width=30)
    assert len(narrow) <= 29 and narrow.endswith("…")


def test_watcher_follows_a_run_while_it_executes(resources, tmp_path):
    (tmp_path / "home").mkdir()
    stream = io.StringIO()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        watcher = RunWatcher(
            instance,
            "__ephemeral_asset_job__",
            FIND_TAGS,
            "[1/7] shards_job",
            stream,
            interval=0.02,
        )
        with watcher:
            result = _materialize(instance, resources, {**RANGE, **FIND_TAGS})
        assert result.success
        assert watcher.run_id == result.run_id
        # its last poll may precede the run's last events: one more reads them all
        watcher.poll()
        assert watcher.progress.finished == ["raw_articles"]
        assert watcher.progress.materialized == 4
        assert watcher.progress.planned == 1
        # another process's runs (another pid tag) are not this watcher's
        assert (
            find_run_id(
                instance, "__ephemeral_asset_job__", {"sphere/pid": "other"}, watcher._created_after
            )
            is None
        )
    out = stream.getvalue()
    frames = [f for f in out.split("\r") if f and f != "\x1b[K"]
    assert frames and all(f.endswith("\x1b[K") for f in frames)
    assert all("[1/7] shards_job" in f for f in frames)
    assert out.endswith("\r\x1b[K")  # erased when the run ended: the report starts clean
    assert "\n" not in out  # one line redrawn in place, never a new line


def test_progress_line_erases_only_what_it_drew():
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.clear()
    assert stream.getvalue() == ""
    line.draw("a")
    line.draw("bb")
    line.clear()
    assert stream.getvalue() == "\ra\x1b[K\rbb\x1b[K\r\x1b[K"
