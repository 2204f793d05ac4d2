"""Benchmark: raw_articles with the `files` source on the Python standard library's .py files.

Prints articles/s and MB/s for (a) the ingest compute path (read + normalize + shard + Parquet)
and (b) the full Dagster materialization of every shard in one run, each against the raw read
speed of the same files measured in the same run (ratio). Targets: >= 20 MB/s and >= 0.5x raw.

Two regimes are measured: "cold" (the page cache dropped before every timing, so every variant
reads the files from disk, as a first ingest of a corpus does; needs root, skipped otherwise)
and "warm" (files already in the page cache, where the raw read is a memory copy).

    .venv/bin/python bench/raw_articles.py
"""

import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import dagster as dg

from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.ingest.io import write_shards
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.corpus_sources import file_records
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource


def stdlib_corpus(dest: Path) -> tuple[int, int]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    n = size = 0
    for p in sorted(lib.rglob("*.py")):
        if "site-packages" in p.parts:
            continue
        target = dest / p.relative_to(lib)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
        n += 1
        size += p.stat().st_size
    return n, size


def raw_read(files: list[Path]) -> int:
    return sum(len(p.read_bytes()) for p in files)


def drop_page_cache() -> bool:
    """Drop Linux's page cache (root only); False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def best_of(fn, repeat=3, cold=False):
    best, out = float("inf"), None
    for _ in range(repeat):
        if cold:
            drop_page_cache()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="sphere-bench-"))
    try:
        corpus = tmp / "corpus"
        n_files, n_bytes = stdlib_corpus(corpus)
        pattern = str(corpus / "**" / "*.py")
        files = sorted(corpus.rglob("*.py"))
        can_drop = drop_page_cache()

        def compute_path():
            store = Warehouse(tmp / "wh-compute")
            return write_shards(
                file_records(pattern), store, "raw_articles", 4, ["0", "1", "2", "3"], 16 << 20
            ).stats

        def dagster_path():
            res = dg.materialize(
                [ingest.raw_articles],
                resources={
                    "warehouse": WarehouseResource(root=str(tmp / "wh-dagster")),
                    "corpus": CorpusSourceResource(kind="files", path_glob=pattern),
                },
                tags={
                    "dagster/asset_partition_range_start": "0",
                    "dagster/asset_partition_range_end": "3",
                },
            )
            assert res.success

        mb = n_bytes / 1e6
        rows = None
        verdicts = {}
        for regime in (["cold"] if can_drop else []) + ["warm"]:
            cold = regime == "cold"
            if not cold:
                raw_read(files)  # warm the page cache so every variant reads from memory
            t_raw, _ = best_of(lambda: raw_read(files), cold=cold)
            t_compute, stats = best_of(compute_path, cold=cold)
            t_dagster, _ = best_of(dagster_path, repeat=2, cold=cold)
            rows = sum(s.rows_out for s in stats.values())
            print(
                f"\n[{regime} page cache] corpus: {n_files} stdlib .py files, {mb:.1f} MB -> {rows} articles"
            )
            print(f"{'variant':<28}{'seconds':>9}{'articles/s':>12}{'MB/s':>9}{'x raw read':>12}")
            for name, t in [
                ("raw read (reference)", t_raw),
                ("ingest compute path", t_compute),
                ("dagster materialize (4 sh)", t_dagster),
            ]:
                print(f"{name:<28}{t:>9.3f}{n_files / t:>12.0f}{mb / t:>9.1f}{t_raw / t:>12.3f}")
            verdicts[regime] = (
                mb / t_compute >= 20 and mb / t_dagster >= 20,
                t_raw / t_compute >= 0.5,
                t_raw / t_dagster >= 0.5,
            )
        if not can_drop:
            print("\n(cold regime skipped: dropping the page cache needs root)")
        for regime, (speed, ratio_compute, ratio_dagster) in verdicts.items():
            print(
                f"targets [{regime}]: >=20 MB/s {'MET' if speed else 'NOT MET'}; >=0.5x raw read: "
                f"compute path {'MET' if ratio_compute else 'NOT MET'}, dagster {'MET' if ratio_dagster else 'NOT MET'}"
            )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
