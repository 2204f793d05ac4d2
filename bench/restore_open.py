"""Benchmark: opening the restore index per call — the eager build every `sphere restore` call
did before (read + verify + decode + build, O(corpus)) vs the memory-mapped open (O(1)) — per
warehouse, with peak RSS, first/warm query latency, and the growth ratios between warehouses.

Run:  .venv/bin/python bench/restore_open.py --warehouse SMALL --warehouse BIG [--spans 20]
                                              [--before-tree DIR]

Every measurement runs in a fresh Python process; timings exclude interpreter start and
imports (numba's kernels are loaded before the clock starts), peak RSS is the growth of the
process' high-water mark (``ru_maxrss``) over the measured step, so it counts the mapped pages a
step touches.  The page cache is not dropped (a shared machine): "cold open" is the first open
in a new process, the file pages may be cached.

* build — :func:`sphere_assets.ngrams.io.build_restore_index` (the old per-call load);
* open — :func:`sphere_assets.ngrams.io.load_restore_index` with its cache present (the cache is
  made first, once, outside the timings; the ``restore_quality`` check makes it when the
  pipeline runs);
* query — ``restore(h, index, length=patch_count)`` of up to ``--spans`` stored span HLLSets
  (``article_hllsets``, first shard): the first query of the process, then the mean of the rest;
* CLI — wall seconds of ``sphere restore --file span.bin`` (a subprocess, interpreter start and
  imports included) and the ``index_load_seconds`` it reports; with ``--before-tree DIR`` (an
  export of an older tree, e.g. ``git archive HEAD``) the same command on that code too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spans(store, count: int):
    from sphere_assets.ngrams import io

    shard = io.hllset_shards(store)[0]
    rows = io.read_hllset_rows(store, shard).to_pylist()
    rows = [r for r in rows if r["span_index"] >= 0 and r["patch_count"] <= 64][:count]
    return [(io.hllset_of_row(r), int(r["patch_count"])) for r in rows]


def child(mode: str, warehouse: str, n_spans: int) -> dict:
    from sphere_assets.lib.sketch import ngrams as ng
    from sphere_assets.lib.sketch import restore as rs
    from sphere_assets.ngrams import io
    from sphere_resources.store import Warehouse

    store = Warehouse(warehouse)
    spans = _spans(store, n_spans)
    ng.hllset_of_patches([b"warm", b"up"], spans[0][0].p)  # numba kernels loaded before timing
    before = peak_mb()
    t0 = time.perf_counter()
    if mode == "build":
        index = io.build_restore_index(store, spans[0][0].p)
    else:
        index = io.load_restore_index(store, spans[0][0].p)
    open_s = time.perf_counter() - t0
    open_rss = peak_mb() - before
    times = []
    for h, length in spans:
        t0 = time.perf_counter()
        rs.restore(h, index, length=length)
        times.append(time.perf_counter() - t0)
    return {
        "seconds": open_s,
        "peak_rss_mb": open_rss,
        "first_query_ms": times[0] * 1e3,
        "warm_query_ms": 1e3 * sum(times[1:]) / max(len(times) - 1, 1),
        "peak_rss_after_queries_mb": peak_mb() - before,
        "sizes": [index.table.size(n) for n in ng.ORDERS],
        "tokens": index.n_tokens,
    }


def run_child(mode: str, warehouse: str, n_spans: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--warehouse",
            warehouse,
            "--spans",
            str(n_spans),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def source_mb(warehouse: str) -> float:
    from sphere_assets.ngrams import io
    from sphere_resources.store import Warehouse

    store = Warehouse(warehouse)
    total = 0
    for asset, name in io.restore_sources(store):
        total += (store.partition_dir(asset, None) / name).stat().st_size
    return total / 2**20


def cli(warehouse: str, span_file: str, tree: Path | None) -> tuple[float, float, float]:
    """(wall s, index_load_seconds, peak RSS MB or nan) of one ``sphere restore --file``."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, "-c", "from sphere_assets.cli import main; main()"]
    cmd += ["restore", "--file", span_file, "--warehouse", warehouse, "--json"]
    timed = Path("/usr/bin/time").exists()
    if timed:
        cmd = ["/usr/bin/time", "-f", "maxrss_kb=%M", *cmd]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or ROOT)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    rss = float("nan")
    if timed:
        rss = int(out.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    return wall, json.loads(out.stdout)["index_load_seconds"], rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warehouse", action="append", required=True)
    ap.add_argument("--spans", type=int, default=20)
    ap.add_argument("--before-tree", default=None, help="older code to time the CLI with")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warehouse[0], args.spans)))
        return
    from sphere_assets.ngrams import io
    from sphere_resources.store import Warehouse

    rows = []
    for wh in args.warehouse:
        store = Warehouse(wh)
        h, _ = _spans(store, 1)[0]
        io.load_restore_index(store, h.p)  # make the cache once (as restore_quality does)
        span_file = tempfile.NamedTemporaryFile(suffix=".bin", delete=False).name
        Path(span_file).write_bytes(h.words.astype("<u4").tobytes())
        build = run_child("build", wh, args.spans)
        opened = run_child("open", wh, args.spans)
        after_cli = cli(wh, span_file, None)
        before_cli = cli(wh, span_file, Path(args.before_tree)) if args.before_tree else None
        os.unlink(span_file)
        rows.append((wh, source_mb(wh), build, opened, after_cli, before_cli))

    print(
        "| warehouse | sources MB | tokens | 1/2/3-grams | step | seconds | peak RSS MB | "
        "first query ms | warm query ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for wh, mb, build, opened, _, _ in rows:
        grams = "/".join(f"{x:,}" for x in build["sizes"])
        for name, r in (("build (old per call)", build), ("mapped open", opened)):
            print(
                f"| {wh} | {mb:.1f} | {build['tokens']:,} | {grams} | {name} | {r['seconds']:.3f} | "
                f"{r['peak_rss_mb']:.0f} | {r['first_query_ms']:.1f} | {r['warm_query_ms']:.1f} |"
            )
    print("\n| warehouse | code | CLI wall s | index_load_seconds | CLI peak RSS MB |")
    print("|---|---|---|---|---|")
    for wh, _, _, _, after_cli, before_cli in rows:
        for name, c in (("this", after_cli), ("before", before_cli)):
            if c is not None:
                print(f"| {wh} | {name} | {c[0]:.2f} | {c[1]:.3f} | {c[2]:.0f} |")
    if len(rows) > 1:
        (_, mb0, b0, o0, c0, _), (_, mb1, b1, o1, c1, _) = rows[0], rows[-1]
        print(
            f"\n# growth last/first: sources {mb1 / mb0:.2f}x, 3-grams "
            f"{b1['sizes'][2] / b0['sizes'][2]:.2f}x; build {b1['seconds'] / b0['seconds']:.2f}x "
            f"time, {b1['peak_rss_mb'] / max(b0['peak_rss_mb'], 1):.2f}x RSS; mapped open "
            f"{o1['seconds'] / o0['seconds']:.2f}x time, {o1['peak_rss_mb']:.0f} vs "
            f"{o0['peak_rss_mb']:.0f} MB; warm query {o1['warm_query_ms'] / o0['warm_query_ms']:.2f}x;"
            f" CLI index load {c1[1] / max(c0[1], 1e-3):.2f}x"
        )


if __name__ == "__main__":
    main()
