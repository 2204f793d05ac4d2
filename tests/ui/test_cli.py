"""The `sphere` CLI as a user runs it: the installed entry point in a subprocess, with the
warehouse, catalog and Dagster instance in temp dirs.

materialize-all on a small files corpus (2 shards) must create real instance runs of the asset
jobs (job names, asset selections, partition range tags, the job's retry tags), print a short
report (one line per stage/partition, a summary table, no Dagster DEBUG lines or BetaWarnings)
whose per-partition row counts match the data (counted with DuckDB over the Parquet files).
The error paths print one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from sphere_assets.refresh.progress import SPINNER

REPO = Path(__file__).resolve().parents[2]
SPHERE = Path(sys.executable).parent / "sphere"
pytestmark = pytest.mark.slow  # subprocess runs of the real entry point
WORDS = "the quick brown fox jumps over lazy dog sphere patch entropy model shell radial".split()


def _env(tmp: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPHERE_", "DAGSTER_"))}
    env.update(
        SPHERE_WAREHOUSE=str(tmp / "wh"),
        SPHERE_CATALOG=str(tmp / "cat.duckdb"),
        DAGSTER_HOME=str(tmp / "home"),
    )
    env.update(extra)
    return env


def _sphere(args, env, cwd, timeout=1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SPHERE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(6):
        words = [WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(300)]
        (corpus / f"doc{i}.txt").write_text(" ".join(words) + "\n")
    env = _env(
        tmp, SPHERE_CORPUS="files", SPHERE_CORPUS_GLOB=str(corpus / "*.txt"), SPHERE_SHARDS="2"
    )
    # a retired version a killed writer left for a partition this run never writes (shard 9 of
    # 2): only the end-of-run sweep can remove it
    leftover = tmp / ".wh.staging" / "raw_articles" / f"shard=9.{'a' * 32}.old-1000"
    leftover.mkdir(parents=True)
    (leftover / "part-0.parquet").write_bytes(b"PAR1")
    proc = _sphere(["materialize-all"], env, cwd=tmp)  # not the repo: paths come from the env
    return tmp, env, proc


def test_materialize_all_leaves_nothing_in_staging(small_run):
    tmp, _, proc = small_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    staging = tmp / ".wh.staging"
    assert staging.is_dir()  # the sibling of the warehouse root (sphere_resources/swap.py)
    left = sorted(str(p.relative_to(staging)) for p in staging.glob("*/*"))
    assert left == [], left
    assert "staging: removed 1 leftover(s) of earlier writes" in proc.stdout.splitlines()


def test_materialize_all_creates_instance_runs_of_the_jobs(small_run):
    tmp, env, proc = small_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    instance = dg.DagsterInstance.get()
    runs = list(reversed(instance.get_runs()))  # oldest first
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 7
    jobs = [r.job_name for r in runs]
    assert jobs == [
        "shards_job",
        "global_job",
        "shards_job",
        "global_job",
        "band_limits_job",
        "shards_job",
        "global_job",
    ]
    targets = [sorted(k.to_user_string() for k in r.asset_selection or ()) for r in runs]
    assert targets[0] == ["raw_articles"]
    assert targets[1] == ["entropy_model"]
    assert targets[2] == sorted(
        ["blt_patches", "article_hllsets", "ngram_index", "patch_embeddings", "adjacency"]
        + ["embedding_ann"]
    )
    assert targets[3] == ["adjacency_merged", "ngram_vocabulary", "sphere_map"]
    assert targets[4] == ["sh_basis"] and targets[6] == ["duckdb_catalog"]
    shard_range = {
        "dagster/asset_partition_range_start": "0",
        "dagster/asset_partition_range_end": "1",
    }
    for r in (runs[0], runs[2], runs[5]):
        assert shard_range.items() <= r.tags.items()
    assert runs[4].tags["dagster/asset_partition_range_start"] == "16"
    assert runs[4].tags["dagster/asset_partition_range_end"] == "256"
    for r in runs:
        # the job's own tags: run retries apply, the family shows in the UI
        assert r.tags["dagster/max_retries"] == "2"
        assert r.tags["dagster/retry_strategy"] == "FROM_FAILURE"
        assert r.tags["sphere/pid"].isdigit()
    # the assets' checks ran in the same runs (steps of the job's executor)
    for r in runs:
        evaluations = instance.get_records_for_run(
            r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        assert evaluations, r.job_name


def test_materialize_all_output_is_short_with_rows_per_partition(small_run):
    tmp, env, proc = small_run
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    assert len(lines) <= 60, out
    assert "BetaWarning" not in out and "PreviewWarning" not in out
    assert " - dagster - DEBUG - " not in out
    assert f"warehouse: {tmp / 'wh'} ($SPHERE_WAREHOUSE)" in lines
    with duckdb.connect() as con:  # its own connection: the default one is shared process-wide
        counts = dict(
            con.execute(
                f"select shard::varchar, count(*) from read_parquet("
                f"'{tmp}/wh/raw_articles/*/*.parquet', hive_partitioning=true) group by 1"
            ).fetchall()
        )
    assert sum(counts.values()) == 6
    for shard, n in counts.items():
        pat = rf"^\[1/7\] shards_job\s+{shard}\s+{n} rows\s+[0-9.]+ MB"
        assert any(re.match(pat, line) for line in lines), (pat, out)
    assert any(re.match(r"^\[7/7\] global_job\s+ok\s+[0-9,]+ rows .* s .*run ", ln) for ln in lines)
    header = next(i for i, ln in enumerate(lines) if ln.startswith("asset "))
    table = lines[header:]
    assert table[-1].startswith("total") and "(7 runs)" in table[-1]
    raw = next(ln for ln in table if ln.startswith("raw_articles "))
    assert raw.split()[1:3] == ["2", "6"]  # partitions, rows


def _run_on_a_terminal(args, env, cwd, timeout=1500) -> tuple[int, str]:
    """Run sphere with stdout on a pseudo-terminal (stderr on a pipe, as `make run | tee`
    would not be): (exit status, everything written to the terminal)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(SPHERE), *args], env=env, cwd=cwd, stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.stderr.read()
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_materialize_all_on_a_terminal_redraws_one_progress_line(tmp_path):
    """On a terminal a stage's run shows one line redrawn in place (its current step); what
    stays on the screen is the same short report as on a pipe."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(" ".join(WORDS[i:] + WORDS[:i]) * 20 + "\n")
    env = _env(
        tmp_path,
        SPHERE_CORPUS="files",
        SPHERE_CORPUS_GLOB=str(corpus / "*.txt"),
        SPHERE_SHARDS="2",
        COLUMNS="160",
    )
    rc, out = _run_on_a_terminal(["materialize-all", "--partitions", "0"], env, tmp_path)
    assert rc == 0, out[-3000:]
    frames = re.findall(r"\r([^\r\n]*?)\x1b\[K", out)
    drawn = [f for f in frames if f]
    assert drawn, out[-3000:]
    # the stage, then the step it runs and (from the step's ProgressMeter) count and rate
    assert any(re.match(r"^. \[1/7\] shards_job \[0\]  raw_articles ", f) for f in drawn)
    assert any(re.match(r"^. \[3/7\] shards_job \[0\]  [a-z_]+ ", f) for f in drawn)
    assert any(re.match(r"^. \[5/7\] band_limits_job \[16\.\.\.256\]  ", f) for f in drawn)
    assert all(len(f) < 160 for f in drawn)
    # what the terminal shows at the end: each line's text after its last carriage return
    lines = out.replace("\r\n", "\n").split("\n")  # the terminal's own CR of each newline
    screen = [ln.rsplit("\r", 1)[-1].replace("\x1b[K", "") for ln in lines]
    screen = [ln for ln in screen if ln.strip()]
    assert len(screen) <= 60, screen
    assert not any(ln[0] in SPINNER for ln in screen), screen  # every frame was erased
    assert any(re.match(r"^\[1/7\] shards_job\s+0\s+[0-9,]+ rows", ln) for ln in screen), screen
    assert screen[-1].startswith("total")


def test_unknown_partition_is_an_error_listing_valid_keys(tmp_path):
    proc = _sphere(["materialize-all", "--partitions", "7"], _env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "no partition 7; valid keys are shards: 0,1,2,3" in proc.stderr
    assert not (tmp_path / "home" / "history").exists()  # nothing ran


def test_plan_is_quiet(tmp_path):
    proc = _sphere(["plan"], _env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 7


def test_bad_sql_prints_one_line(tmp_path):
    cat = tmp_path / "cat.duckdb"
    duckdb.connect(str(cat)).close()
    proc = _sphere(["sql", "selec 1"], _env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("catalog: ")]
    assert len(errors) == 1 and errors[0].startswith("sphere sql: Parser Error"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_sql_defaults_come_from_the_project_not_the_cwd(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPHERE_", "DAGSTER_"))}
    proc = _sphere(["sql", "select 1"], env, cwd=tmp_path)
    assert f"catalog: {REPO / 'data' / 'sphere.duckdb'} (project default under {REPO})" in (
        proc.stderr
    )
    assert not (tmp_path / "data").exists()


def test_restore_names_a_missing_warehouse(tmp_path):
    proc = _sphere(
        ["restore", "--article", "pydoc:if", "--warehouse", "/nowhere"],
        _env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "the warehouse /nowhere does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_subcommand(tmp_path):
    proc = _sphere(["--help"], _env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    for cmd in ("materialize-all", "plan", "dead-runs", "sql", "restore", "hll"):
        assert f"\nsphere {cmd}" in proc.stdout, cmd


def test_failed_run_prints_its_root_cause_in_a_few_lines(tmp_path):
    env = _env(
        tmp_path,
        SPHERE_CORPUS="files",
        SPHERE_CORPUS_GLOB=str(tmp_path / "none" / "*.txt"),
        SPHERE_SHARDS="2",
    )
    proc = _sphere(["materialize-all", "--partitions", "0"], env, cwd=tmp_path)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "Stack Trace" not in out, out
    assert len(out.splitlines()) <= 12, out
    cause = f"raw_articles: FileNotFoundError: corpus source 'files': no files match '{tmp_path}"
    assert cause in proc.stderr, proc.stderr
    assert re.search(r"FAILED: shards_job \[0\] raw_articles \(run [0-9a-f-]{36}\)", proc.stderr)
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    runs = dg.DagsterInstance.get().get_runs()
    assert [(r.job_name, r.status, r.tags.get("dagster/partition")) for r in runs] == [
        ("shards_job", dg.DagsterRunStatus.FAILURE, "0")
    ]
