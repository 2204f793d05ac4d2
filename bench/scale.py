"""Benchmark (issue 19): the main job end to end on real text at several sizes, per asset.

The corpus is real text this machine carries, never downloaded and never synthetic: the Python
standard library's ``.py`` sources (``sysconfig`` stdlib, 31 MB), the plain-text documentation
Debian packages ship (``/usr/share/doc``: ``.txt``/``.md``/``.rst``, not the gzipped files,
16 MB), the Python modules Debian ships (``/usr/lib/python3/dist-packages``, 17 MB) and the
interpreter's own site-packages (140 MB): ~200 MB in all. Files are ordered by a MurmurHash3 of their path
(a fixed shuffle: every size samples the whole library, not its first letters) and a size takes
the shortest prefix of that order reaching it, so each corpus contains the smaller ones. Files
over ``SPHERE_MAX_ARTICLE_BYTES`` are skipped up front (they would be counted rejects).

The shard count follows the size (``--mb-per-shard``, default 6.25: 4 shards up to 25 MB, 16 at
100 MB) the way a user sizes ``SPHERE_SHARDS``: a shard step holds one shard at a time, so its
memory is bounded by the shard size, not the corpus (``--shards N`` fixes the count instead).

Per size, ``sphere materialize-all`` runs in a child process with its own warehouse, catalog and
Dagster instance under ``--scratch``. While it runs, the resident memory of the whole process
tree (the CLI, the run workers, every step subprocess) is sampled every 0.25 s. Afterwards the
instance's step records give each asset step's start and end; printed per asset: seconds, MB/s
of corpus, and the tree's peak RSS while that step ran (steps of one stage may overlap, so the
peak is the stage's whole tree). Then the growth ratios between consecutive sizes,
``(t_b / t_a) / (size_b / size_a)`` (1.0 = linear), and the warehouse's disk footprint as a
multiple of the corpus. Goals (issue 19, at 5/25/100 MB): peak RSS <= 4 GB, disk <= 50x,
growth <= 1.2 for every asset but ``entropy_model`` (a fixed-size training sample),
``blt_patches`` + ``patch_embeddings`` >= 0.4 MB/s per shard, the whole job <= 20 min at 100 MB.

    .venv/bin/python bench/scale.py --sizes 5,25,100 [--scratch /tmp/sphere_scale] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import mmh3
import psutil

REPO = Path(__file__).resolve().parents[1]
DOC_SUFFIXES = (".txt", ".md", ".rst")
MAX_ARTICLE_BYTES = int(os.environ.get("SPHERE_MAX_ARTICLE_BYTES", 16 * 1024 * 1024))
SAMPLE_EVERY_S = 0.25
# the interpreter's own paths, not this project's virtual environment's
BASE_PATHS = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
FIXED_SIZE_ASSETS = {"entropy_model"}  # trains on a fixed-size sample: not expected to grow


def _text_files(root: Path, label: str, suffixes: tuple[str, ...], skip: str | None = None):
    if not root.is_dir():
        return
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if skip in rel.parts or path.suffix not in suffixes:
            continue
        if path.is_file() and not path.is_symlink():
            yield f"{label}/{rel}", path


def source_files() -> list[tuple[str, Path]]:
    """(relative name, path) of every candidate file, in the benchmark's fixed order."""
    stdlib = Path(BASE_PATHS["stdlib"])
    found = [
        *_text_files(stdlib, "stdlib", (".py",), skip="site-packages"),
        *_text_files(Path("/usr/share/doc"), "doc", DOC_SUFFIXES),
        *_text_files(Path("/usr/lib/python3/dist-packages"), "debian-python", (".py",)),
        *_text_files(Path(BASE_PATHS["purelib"]), "site-packages", (".py",)),
    ]
    found.sort(key=lambda item: (mmh3.hash64(item[0].encode(), seed=0, signed=False)[0], item[0]))
    return found


def build_corpus(target_mb: float, into: Path, files: list[tuple[str, Path]]) -> tuple[int, int]:
    """Copy the shortest prefix of ``files`` reaching ``target_mb`` into ``into``; returns
    (files, bytes). Raises if the machine carries less text than asked for."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    target = int(target_mb * 1e6)
    total = count = 0
    for rel, path in files:
        size = path.stat().st_size
        if size == 0 or size > MAX_ARTICLE_BYTES:
            continue
        dest = into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        total += size
        count += 1
        if total >= target:
            return count, total
    raise SystemExit(f"only {total / 1e6:.1f} MB of text found for a {target_mb} MB corpus")


class TreeRss:
    """Samples the summed RSS of a process and all its descendants on a thread."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.time(), rss))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


STEP_TIMES = """
import json, dagster as dg
inst = dg.DagsterInstance.get()
out = []
for run in inst.get_runs():
    for s in inst.get_run_step_stats(run.run_id):
        out.append([run.job_name, s.step_key, s.start_time, s.end_time, str(s.status)])
print(json.dumps(out))
"""


def step_times(env: dict) -> list[tuple[str, str, float, float, str]]:
    """(job, step, start, end, status) of every step the instance recorded."""
    out = subprocess.run(
        [sys.executable, "-c", STEP_TIMES], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [tuple(row) for row in json.loads(out.strip().splitlines()[-1])]


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def shard_count(mb: float, mb_per_shard: float, fixed: int | None) -> int:
    return fixed if fixed else max(4, math.ceil(mb / mb_per_shard - 1e-9))


def run_size(mb: float, scratch: Path, files: list, shards: int) -> dict:
    base = scratch / f"{mb:g}MB"
    n_files, n_bytes = build_corpus(mb, base / "corpus", files)
    for name in ("warehouse", "dagster_home", "sphere.duckdb"):
        target = base / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    env = {
        **os.environ,
        "SPHERE_CORPUS": "files",
        "SPHERE_CORPUS_GLOB": str(base / "corpus" / "**" / "*"),
        "SPHERE_WAREHOUSE": str(base / "warehouse"),
        "SPHERE_CATALOG": str(base / "sphere.duckdb"),
        "DAGSTER_HOME": str(base / "dagster_home"),
        "SPHERE_SHARDS": str(shards),
    }
    print(
        f"-- {mb:g} MB: {n_files} files, {n_bytes / 1e6:.1f} MB, {shards} shards -> {base}",
        flush=True,
    )
    t0 = time.time()
    log = open(base / "materialize-all.log", "w")
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "sphere"), "materialize-all"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    with TreeRss(proc.pid) as rss:
        rc = proc.wait()
    wall = time.time() - t0
    log.close()
    if rc != 0:
        tail = (base / "materialize-all.log").read_text().splitlines()[-15:]
        raise SystemExit(f"materialize-all failed at {mb:g} MB (rc {rc}):\n" + "\n".join(tail))
    per_asset: dict[str, dict] = {}
    for _job, step, start, end, _status in step_times(env):
        if start is None or end is None:
            continue
        entry = per_asset.setdefault(step, {"seconds": 0.0, "peak_rss": 0})
        entry["seconds"] += end - start
        entry["peak_rss"] = max(entry["peak_rss"], rss.peak(start, end))
    return {
        "mb": n_bytes / 1e6,
        "shards": shards,
        "files": n_files,
        "wall": wall,
        "peak_rss": rss.peak(),
        "disk": du_bytes(base / "warehouse"),
        "assets": per_asset,
    }


def report(results: list[dict]) -> None:
    sizes = [r["mb"] for r in results]
    steps = sorted({s for r in results for s in r["assets"]}, key=lambda s: (s.startswith("_"), s))
    head = " | ".join(f"{mb:.1f} MB: s, MB/s, peak GB" for mb in sizes)
    print(f"\n| asset | {head} | growth |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for step in steps:
        cells, growth = [], []
        for r in results:
            a = r["assets"].get(step)
            cells.append(
                "—"
                if a is None
                else f"{a['seconds']:.1f}, {r['mb'] / max(a['seconds'], 1e-9):.2f}, "
                f"{a['peak_rss'] / 1e9:.2f}"
            )
        for a, b in itertools.pairwise(results):
            sa, sb = a["assets"].get(step), b["assets"].get(step)
            if sa and sb and sa["seconds"] > 0:
                growth.append((sb["seconds"] / sa["seconds"]) / (b["mb"] / a["mb"]))
        mark = " (fixed-size sample)" if step in FIXED_SIZE_ASSETS else ""
        g = ", ".join(f"{x:.2f}" for x in growth) or "—"
        print(f"| {step} | " + " | ".join(cells) + f" | {g}{mark} |")
    print("\n| size | files | wall s | MB/s | peak RSS GB | disk MB | disk / corpus |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mb']:.1f} MB | {r['files']} | {r['wall']:.0f} | {r['mb'] / r['wall']:.3f} | "
            f"{r['peak_rss'] / 1e9:.2f} | {r['disk'] / 1e6:.0f} | {r['disk'] / (r['mb'] * 1e6):.1f}x |"
        )
    for r in results:
        pair = sum(
            r["assets"].get(s, {}).get("seconds", 0.0) for s in ("blt_patches", "patch_embeddings")
        )
        if pair:
            print(
                f"{r['mb']:.1f} MB: blt_patches + patch_embeddings {pair:.0f} s = "
                f"{r['mb'] / pair:.2f} MB/s over {r['shards']} shards (steps run the shards in turn; "
                "goal >= 0.4 MB/s per shard)"
            )
    for a, b in itertools.pairwise(results):
        print(
            f"{a['mb']:.1f} -> {b['mb']:.1f} MB (x{b['mb'] / a['mb']:.1f}): wall x{b['wall'] / a['wall']:.2f}, "
            f"peak RSS x{b['peak_rss'] / max(a['peak_rss'], 1):.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5,25,100", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--scratch", default="/tmp/sphere_scale", type=Path)
    ap.add_argument("--mb-per-shard", type=float, default=6.25, help="sets the shard count")
    ap.add_argument("--shards", type=int, help="a fixed shard count instead")
    ap.add_argument("--keep", action="store_true", help="keep the warehouses (default: delete)")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    files = source_files()
    results = []
    for mb in (float(s) for s in args.sizes.split(",")):
        shards = shard_count(mb, args.mb_per_shard, args.shards)
        results.append(run_size(mb, args.scratch, files, shards))
        if not args.keep:
            shutil.rmtree(args.scratch / f"{mb:g}MB" / "warehouse", ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
