"""Benchmark: what the storage layer's integrity costs (issue 16: manifests, verified reads).

    .venv/bin/python bench/store_integrity.py            # 200k rows (~40 MB Parquet)
    .venv/bin/python bench/store_integrity.py --rows 50000

One raw_articles partition of synthetic articles (random words, so zstd cannot shrink it to
nothing). References measured in the same run on the same file: ``pq.read_table(path)`` /
``ParquetFile.iter_batches`` straight from the path (no manifest, no checksum) and
``pq.write_table`` to a path (no staging, manifest or swap). Printed: best of 5 seconds for each
and the ratio ours/reference. Target: a verified full read costs at most 1.5x the unverified
one; a write at most 1.5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sphere_assets.ingest.contract import RAW_ARTICLES_SCHEMA
from sphere_resources.contracts import contract_for
from sphere_resources.store import Warehouse, parquet_options


def articles(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    words = np.array([f"w{i:05d}" for i in range(20000)])
    texts = [" ".join(words[rng.integers(0, len(words), 40)]) for _ in range(n)]
    return pa.Table.from_pydict(
        {
            "article_id": [f"a{i}" for i in range(n)],
            "title": ["t"] * n,
            "text": texts,
            "source": ["bench"] * n,
            "n_bytes": [len(t) for t in texts],
            "url": [None] * n,
        },
        schema=RAW_ARTICLES_SCHEMA,
    )


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    table = articles(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        wh = Warehouse(Path(tmp) / "wh")

        def write_ours():
            with wh.partition_writer("raw_articles", "0") as w:
                w.write_table(table)

        raw_path = Path(tmp) / "raw.parquet"
        opts = parquet_options(contract_for("raw_articles"))
        rows = {
            "write": (best(write_ours), best(lambda: pq.write_table(table, raw_path, **opts))),
        }
        path = wh.partition_dir("raw_articles", "0") / "part-0.parquet"
        assert path.read_bytes() == raw_path.read_bytes()  # same bytes, only the manifest is new
        rows["read_table"] = (
            best(lambda: wh.read_table("raw_articles", "0")),
            best(lambda: pq.read_table(path)),
        )
        rows["read_table(1 column)"] = (
            best(lambda: wh.read_table("raw_articles", "0", columns=["article_id"])),
            best(lambda: pq.read_table(path, columns=["article_id"])),
        )
        rows["iter_batches"] = (
            best(lambda: sum(1 for _ in wh.iter_batches("raw_articles", "0", 4096))),
            best(lambda: sum(1 for _ in pq.ParquetFile(path).iter_batches(4096))),
        )
        mb = path.stat().st_size / 2**20
    print(f"raw_articles partition: {args.rows} rows, {mb:.1f} MB Parquet")
    print(f"{'operation':24} {'ours s':>8} {'reference s':>12} {'ratio':>6}")
    for name, (ours, ref) in rows.items():
        print(f"{name:24} {ours:8.3f} {ref:12.3f} {ours / ref:6.2f}")


if __name__ == "__main__":
    main()
