"""Storage faults (issue 16, items 4-6): damaged files, readers racing writers, two writers of
one partition, leftovers of crashed writes. Every case runs the real storage layer on disk;
writers that race run in their own processes."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sphere_resources.integrity import (
    MANIFEST_NAME,
    MAX_SAFETENSORS_HEADER,
    DamagedFileError,
    manifest_bytes,
    parse_safetensors,
)
from sphere_resources.pg_publish import source_path
from sphere_resources.store import Warehouse, read_safetensors
from sphere_resources.swap import RETIRE_GRACE_S, LockTimeout, in_grace
from tests.resources.test_store import TEST_CONTRACT, articles

REPO = Path(__file__).resolve().parents[2]


def _parquet_partition(wh: Warehouse) -> Path:
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(200))
    return wh.partition_dir("raw_articles", "0") / "part-0.parquet"


def _tensor_partition(wh: Warehouse) -> Path:
    good = {"emb": np.arange(600, dtype=np.float32).reshape(200, 3), "norm": np.ones(200, "f4")}
    with wh.partition_writer(TEST_CONTRACT, "0") as w:
        w.write_tensors("vectors", good, {"format": "test"})
    return wh.partition_dir(TEST_CONTRACT, "0") / "vectors.safetensors"


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def zero_tail(data: bytes) -> bytes:
    n = len(data) // 4
    return data[:-n] + bytes(n)


def wrong_magic(data: bytes) -> bytes:
    return b"XXXX" + data[4:]


def wrong_footer_magic(data: bytes) -> bytes:
    return data[:-4] + b"XXXX"  # Parquet readers check the magic at the end


def huge_header(data: bytes) -> bytes:
    return struct.pack("<Q", 2**62) + data[8:]


DAMAGE = {
    "truncated": (truncate, r"truncated: \d+ bytes, the manifest says \d+"),
    "zeroed_tail": (zero_tail, "checksum mismatch"),
    "wrong_magic": (wrong_magic, "checksum mismatch"),
    "header_2^62": (huge_header, "checksum mismatch"),
}


def _reads(wh: Warehouse, kind: str):
    if kind == "parquet":
        return [
            lambda: wh.read_table("raw_articles", "0"),
            lambda: wh.read_table("raw_articles", "0", columns=["article_id"]),
            lambda: list(wh.iter_batches("raw_articles", "0", batch_size=16)),
        ]
    return [lambda: wh.read_tensors(TEST_CONTRACT, "0", "vectors")]


@pytest.mark.parametrize("kind", ["parquet", "safetensors"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_file_is_an_error_naming_asset_partition_path(tmp_path, kind, damage):
    """Each damage, on each file kind, through every read: an error naming the asset, the
    partition, the path and what is wrong; before the manifest a zeroed tail loaded silently."""
    wh = Warehouse(tmp_path / "wh")
    path = _parquet_partition(wh) if kind == "parquet" else _tensor_partition(wh)
    asset = "raw_articles" if kind == "parquet" else TEST_CONTRACT
    fn, problem = DAMAGE[damage]
    path.write_bytes(fn(path.read_bytes()))
    for read in _reads(wh, kind):
        with pytest.raises(DamagedFileError) as info:
            read()
        msg = str(info.value)
        assert f"asset '{asset}', partition '0', field '{path.name}'" in msg
        assert str(path) in msg
        assert re.search(problem, msg), msg


def _reseal(wh: Warehouse, asset: str) -> None:
    """Rewrite the manifest to match damaged files: what a buggy writer would leave. The parsers
    behind the checksum must still fail clearly, without allocating what a header claims."""
    part = wh.partition_dir(asset, "0")
    files = [p for p in part.iterdir() if p.name != MANIFEST_NAME]
    (part / MANIFEST_NAME).write_bytes(manifest_bytes(asset, "0", files))


@pytest.mark.parametrize(
    "damage,problem",
    [
        (truncate, "not a readable Parquet file"),
        (wrong_footer_magic, "not a readable Parquet file"),
        (zero_tail, "not a readable Parquet file"),
    ],
)
def test_parquet_that_passes_its_checksum_but_does_not_parse(tmp_path, damage, problem):
    wh = Warehouse(tmp_path / "wh")
    path = _parquet_partition(wh)
    path.write_bytes(damage(path.read_bytes()))
    _reseal(wh, "raw_articles")
    with pytest.raises(DamagedFileError, match=f"partition '0'.*{path}: {problem}"):
        wh.read_table("raw_articles", "0")


@pytest.mark.parametrize(
    "damage,problem",
    [
        (huge_header, f"header length {2**62} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit"),
        (lambda d: d[:5], "5 bytes: too short"),
        (lambda d: struct.pack("<Q", 4096) + d[8:200], "header length 4096 runs past the end"),
        (lambda d: d[:8] + b"{" * (len(d) - 8), "header is not JSON"),
        (truncate, "not a valid safetensors file"),
    ],
)
def test_safetensors_header_is_bounded_before_allocation(tmp_path, damage, problem):
    import tracemalloc

    wh = Warehouse(tmp_path / "wh")
    path = _tensor_partition(wh)
    path.write_bytes(damage(path.read_bytes()))
    _reseal(wh, TEST_CONTRACT)
    tracemalloc.start()
    try:
        with pytest.raises(DamagedFileError, match=f"partition '0'.*{path}: {problem}"):
            wh.read_tensors(TEST_CONTRACT, "0", "vectors")
        with pytest.raises(ValueError, match=problem):
            read_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # nothing near the claimed header size was allocated


def test_parse_safetensors_reads_the_canonical_file(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    path = _tensor_partition(wh)
    arrays, meta = parse_safetensors(path.read_bytes())
    from safetensors.numpy import load_file  # the library's own reader agrees

    np.testing.assert_array_equal(arrays["emb"], load_file(str(path))["emb"])
    assert meta["asset"] == TEST_CONTRACT and meta["partition"] == "0"


def test_missing_or_foreign_manifest_is_named(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    _parquet_partition(wh)
    with wh.partition_writer("raw_articles", "1") as w:
        w.write_table(articles(3))
    part0 = wh.partition_dir("raw_articles", "0")
    part1 = wh.partition_dir("raw_articles", "1")
    (part0 / MANIFEST_NAME).write_bytes((part1 / MANIFEST_NAME).read_bytes())
    with pytest.raises(
        DamagedFileError, match="manifest belongs to asset 'raw_articles' partition '1'"
    ):
        wh.read_table("raw_articles", "0")
    (part0 / MANIFEST_NAME).write_bytes(b"{not json")
    with pytest.raises(DamagedFileError, match="manifest does not parse"):
        wh.read_table("raw_articles", "0")
    (part0 / MANIFEST_NAME).unlink()
    with pytest.raises(DamagedFileError, match=f"{part0 / MANIFEST_NAME}: no manifest"):
        wh.read_table("raw_articles", "0")
    (part1 / "part-0.parquet").unlink()
    with pytest.raises(DamagedFileError, match="listed in the manifest but missing"):
        wh.read_table("raw_articles", "1")
    with pytest.raises(FileNotFoundError, match="partition '7': no materialization at"):
        wh.read_table("raw_articles", "7")


def test_manifest_is_deterministic_and_lists_every_file(tmp_path):
    import hashlib
    import json

    roots = []
    for name in ("a", "b"):
        wh = Warehouse(tmp_path / name)
        with wh.partition_writer("raw_articles", "0") as w:
            w.write_table(articles(5))
            w.write_bytes("extra.bin", b"payload")
        roots.append(wh.partition_dir("raw_articles", "0"))
    a, b = ((r / MANIFEST_NAME).read_bytes() for r in roots)
    assert a == b
    doc = json.loads(a)
    for name in ("part-0.parquet", "extra.bin"):
        data = (roots[0] / name).read_bytes()
        assert doc["files"][name] == {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    with pytest.raises(ValueError, match="reserved for the partition manifest"):
        with Warehouse(tmp_path / "c").partition_writer("raw_articles", "0") as w:
            w.write_bytes(MANIFEST_NAME, b"{}")


# -- readers racing writers ------------------------------------------------------------------

WRITER = """
import sys, time
import sphere_resources.store as st
if {fallback}:
    st.exchange = lambda a, b: False  # the two-rename swap of systems without RENAME_EXCHANGE
from tests.resources.test_store import articles
wh = st.Warehouse({root!r})
deadline = time.monotonic() + {seconds}
n = 0
while time.monotonic() < deadline:
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(3 if n % 2 else 5, f"v{{n}}-"))
    n += 1
print(n)
"""


def _writer(root: Path, seconds: float, fallback: bool = False) -> subprocess.Popen:
    code = WRITER.format(root=str(root), seconds=seconds, fallback=fallback)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _one_version(ids: list[str]) -> bool:
    return len(ids) in (3, 5) and len({i.split("-")[0] for i in ids}) == 1


@pytest.mark.slow  # writer subprocesses
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two_renames"])
def test_readers_never_see_a_missing_or_partial_partition(tmp_path, fallback):
    root = tmp_path / "wh"
    wh = Warehouse(root)
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(5, "v-"))
    proc = _writer(root, seconds=4.0, fallback=fallback)
    glob = str(root / "raw_articles" / "*" / "*.parquet")
    everything = str(root / "**" / "*.parquet")
    con = duckdb.connect()
    reads, errors = 0, []
    try:
        while proc.poll() is None:
            try:
                assert _one_version(wh.read_table("raw_articles", "0")["article_id"].to_pylist())
                batches = list(wh.iter_batches("raw_articles", "0", columns=["article_id"]))
                assert _one_version([i for b in batches for i in b.column(0).to_pylist()])
                assert wh.exists("raw_articles", "0")
                if not fallback:  # plain path checks and queries: the path is always a version
                    # what the Postgres publish checks before copying a shard
                    assert source_path(root, "raw_articles", "0") is not None
                    (n,) = con.execute(
                        f"select count(*) from read_parquet('{glob}', hive_partitioning=true)"
                    ).fetchone()
                    assert n in (3, 5), n
                    (n,) = con.execute(
                        f"select count(*) from read_parquet('{everything}')"
                    ).fetchone()
                    assert n in (3, 5), n
            except Exception as exc:  # collected: the loop keeps racing, the test reports all
                errors.append(repr(exc))
            reads += 1
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    writes = int(out.split()[-1])
    assert errors == [], errors[:5]
    assert writes >= 10 and reads >= 10, (writes, reads)  # it raced (2 busy cores: few)
    assert wh.clean_staging() == 0  # nothing left behind


SLOW_WRITER = """
import sys, time
from sphere_resources.store import Warehouse
from tests.resources.test_store import articles
wh = Warehouse({root!r})
with wh.partition_writer("raw_articles", "0") as w:
    print("start", time.time(), flush=True)
    w.write_table(articles({rows}, "{tag}-"))
    time.sleep(1.0)
    print("end", time.time(), flush=True)
"""


@pytest.mark.slow  # writer subprocesses
def test_two_writers_of_one_partition_take_turns(tmp_path):
    root = tmp_path / "wh"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_WRITER.format(root=str(root), rows=rows, tag=tag)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rows, tag in ((3, "a"), (5, "b"))
    ]
    spans = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        t = dict(line.split() for line in out.splitlines())
        spans.append((float(t["start"]), float(t["end"])))
    (s1, e1), (s2, e2) = sorted(spans)
    assert e1 <= s2  # serialized: the second wrote only after the first had swapped its version in
    wh = Warehouse(root)
    assert _one_version(wh.read_table("raw_articles", "0")["article_id"].to_pylist())
    assert wh.clean_staging() == 0


@pytest.mark.slow  # a writer subprocess
def test_a_writer_that_waits_too_long_gets_a_clear_error(tmp_path):
    root = tmp_path / "wh"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER.format(root=str(root), rows=3, tag="a")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("start")
    impatient = Warehouse(root, lock_timeout_s=0.2)
    with pytest.raises(
        LockTimeout,
        match=rf"asset 'raw_articles', partition '0': another writer \(pid {proc.pid} on .*\) holds",
    ):
        with impatient.partition_writer("raw_articles", "0") as w:
            w.write_table(articles(5))
    proc.communicate(timeout=60)
    assert len(impatient.read_table("raw_articles", "0")) == 3


# -- leftovers ---------------------------------------------------------------------------------

KILLED_WRITER = """
import os
from sphere_resources.store import Warehouse
from tests.resources.test_store import articles
wh = Warehouse({root!r})
with wh.partition_writer("raw_articles", "0") as w:
    w.write_table(articles(50, "x-"))
    os._exit(9)
"""


def eventually(condition, timeout_s: float = RETIRE_GRACE_S + 5.0) -> bool:
    """Whether ``condition()`` became true within ``timeout_s`` (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_crash_leftovers_stay_out_of_globs_and_go_at_the_next_write(tmp_path):
    root = tmp_path / "wh"
    wh = Warehouse(root)
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(3, "a-"))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER.format(root=str(root))], cwd=REPO, capture_output=True
    )
    assert proc.returncode == 9, proc.stderr
    leftovers = list(wh.staging_root.rglob("*.parquet"))
    assert leftovers and pq.read_metadata(leftovers[0]).num_rows == 50  # a real crash mid-write
    assert not wh.staging_root.is_relative_to(root)
    # the old layout's leftovers inside the root, as an older version left them
    legacy = root / ".staging" / f"raw_articles-{'0' * 32}"
    legacy.mkdir(parents=True)
    pq.write_table(articles(2, "old-"), legacy / "part-0.parquet")
    (root / ".trash" / ("1" * 32)).mkdir(parents=True)
    everything = f"select count(*) from read_parquet('{root}/**/*.parquet')"
    assert duckdb.execute(everything).fetchone() == (5,)  # 3 + the legacy partial 2: the old bug
    with wh.partition_writer("raw_articles", "0") as w:  # the next write cleans up first
        w.write_table(articles(4, "b-"))
    assert duckdb.execute(everything).fetchone() == (4,)
    # the crash's partial write is gone; what remains is the replaced version, kept for its grace
    staged = list(wh.staging_root.rglob("*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in staged] == [3]
    assert all(in_grace(f.parent.name) for f in staged)
    assert not legacy.exists() and not (root / ".trash").exists()
    assert eventually(lambda: not list(wh.staging_root.rglob("*.parquet")))  # then the reaper


def test_a_reader_holding_the_old_directory_still_lists_it_after_the_swap(tmp_path):
    """DuckDB's glob resolves a partition directory and lists it a moment later; a swap in
    between must not leave that listing empty (it did once in CI: "No files found")."""
    wh = Warehouse(tmp_path / "wh")
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(3, "a-"))
    fd = os.open(wh.partition_dir("raw_articles", "0"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with wh.partition_writer("raw_articles", "0") as w:
            w.write_table(articles(5, "b-"))
        assert "part-0.parquet" in os.listdir(fd)  # the old version, still whole
        with open("part-0.parquet", "rb", opener=lambda p, f: os.open(p, f, dir_fd=fd)) as fh:
            assert pq.read_metadata(fh).num_rows == 3
        assert wh.clean_staging() == 0  # cleaners leave a version in its grace alone
        assert "part-0.parquet" in os.listdir(fd)
        t0 = time.monotonic()
        assert eventually(lambda: os.listdir(fd) == [])  # deleted once the grace ran out
        assert time.monotonic() - t0 >= RETIRE_GRACE_S * 0.5  # not before
    finally:
        os.close(fd)
    assert len(wh.read_table("raw_articles", "0")) == 5


@pytest.mark.slow  # a writer subprocess
def test_clean_staging_leaves_a_write_in_progress_alone(tmp_path):
    root = tmp_path / "wh"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER.format(root=str(root), rows=3, tag="a")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("start")
    wh = Warehouse(root)
    crashed = wh.staging_root / "raw_articles" / f"shard=1.{'2' * 32}"
    crashed.mkdir(parents=True)
    assert wh.clean_staging() == 1  # the crashed one of shard 1, not shard 0's live write
    assert not crashed.exists()
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert len(wh.read_table("raw_articles", "0")) == 3
