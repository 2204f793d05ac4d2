"""Benchmark: raw_articles with the `files` source on the Python standard library's .py files.

Prints articles/s and MB/s for (a) the ingest compute path (read + normalize + shard + Parquet)
and (b) the full Dagster materialization of every shard in one run, each against the raw read
speed of the same files measured in the same run (ratio). Targets: >= 20 MB/s and >= 0.5x raw.

    .venv/bin/python bench/raw_articles.py
"""

import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import dagster as dg

from sphere_assets import ingest
from sphere_assets.compute.corpus import file_records, write_shards
from sphere_resources.corpus import CorpusSourceResource
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


def best_of(fn, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
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
        raw_read(files)  # warm the page cache so every variant reads from memory
        t_raw, _ = best_of(lambda: raw_read(files))

        def compute_path():
            store = Warehouse(tmp / "wh-compute")
            return write_shards(
                file_records(pattern), store, "raw_articles", 4, ["0", "1", "2", "3"], 16 << 20
            ).stats

        t_compute, stats = best_of(compute_path)
        rows = sum(s.rows_out for s in stats.values())

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

        t_dagster, _ = best_of(dagster_path, repeat=2)
        mb = n_bytes / 1e6
        print(f"corpus: {n_files} stdlib .py files, {mb:.1f} MB -> {rows} articles")
        print(f"{'variant':<28}{'seconds':>9}{'articles/s':>12}{'MB/s':>9}{'x raw read':>12}")
        for name, t in [
            ("raw read (reference)", t_raw),
            ("ingest compute path", t_compute),
            ("dagster materialize (4 sh)", t_dagster),
        ]:
            print(f"{name:<28}{t:>9.3f}{n_files / t:>12.0f}{mb / t:>9.1f}{t_raw / t:>12.3f}")
        ok = mb / t_dagster >= 20 and t_raw / t_compute >= 0.5 and mb / t_compute >= 20
        print(
            f"targets (>=20 MB/s, >=0.5x raw read for the compute path): {'MET' if ok else 'NOT MET'}"
        )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
