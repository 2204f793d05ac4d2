"""Benchmark (issue 19): the global merges out of core — peak RSS and seconds at two corpus sizes.

Each step materializes one global asset with its blocking merge-law check (``ngram_vocabulary``
+ ``ngram_vocabulary_merge_consistent``; ``adjacency_merged`` + ``adjacency_merged_equals_whole``)
in a child process, over a warehouse that already holds the shard assets (``ngram_index``,
``adjacency``, ``blt_patches``, ``article_hllsets``: e.g. a copy of one ``sphere
materialize-all`` made). The child's peak resident memory is its own ``ru_maxrss`` (read with
``os.wait4``); the reference measured in the same run is a child that only imports the code
location (Dagster + the family), so ``peak - import`` is what the merge itself holds. The asset
and the check each report their own seconds. Then, between the two warehouses, the growth ratios
``merge memory ratio`` and ``seconds ratio`` against the corpus ratio (blt_patches bytes):
out-of-core means the memory ratio is far below the corpus ratio.

    .venv/bin/python bench/merges.py --small /tmp/w_small --large /tmp/w_large
    .venv/bin/python bench/merges.py --make 2,20 --scratch /tmp/merges_bench

``--make A,B`` builds the two warehouses itself from real text this machine carries (the Python
standard library's ``.py`` sources, files in a fixed MurmurHash3 order, the shortest prefix
reaching A and B MB): blt_patches shards cut by a cheap stand-in patcher (runs of word
characters, of spaces, of punctuation; words in pieces of at most 6 bytes — about the BLT
patches' mean size, without the entropy model's hours at this size), then ``ngram_index``,
``adjacency`` and ``article_hllsets`` materialized per shard by the real assets. The merges only
see the shards' n-gram tables, so this measures them as a real corpus of that size would.

The warehouses are written to (the global assets are replaced): pass copies. With
``--keep-outputs DIR`` the merged partitions of each warehouse are copied there afterwards
(byte-identity comparisons between code versions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo's tests/ package (its blt_patches row builder)
STEPS = {
    "ngram_vocabulary": ("ngram_vocabulary", "ngram_vocabulary_merge_consistent"),
    "adjacency_merged": ("adjacency_merged", "adjacency_merged_equals_whole"),
}

CHILD = r"""
import json, sys, time
import dagster as dg
from sphere_assets.ngrams import adjacency_merged as am, ngram_vocabulary as nv
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.warehouse import WarehouseResource
step, root = sys.argv[1], sys.argv[2]
if step == "import":
    print(json.dumps({}))
    raise SystemExit(0)
module = nv if step == "ngram_vocabulary" else am
asset = getattr(module, step)
check = getattr(module, step + ("_merge_consistent" if step == "ngram_vocabulary" else "_equals_whole"))
res = {"warehouse": WarehouseResource(root=root), "hll": HllSetResource()}
t0 = time.perf_counter()
result = dg.materialize([asset, check], resources=res, raise_on_error=False)
total = time.perf_counter() - t0
(mat,) = result.asset_materializations_for_node(step)
evals = result.get_asset_check_evaluations()
print(json.dumps({
    "success": result.success,
    "asset_s": float(mat.metadata["seconds"].value),
    "total_s": total,
    "check_passed": [e.passed for e in evals],
    "check_problems": [str(e.metadata.get("first_problems", e.metadata.get("problems", "")))[:300] for e in evals],
}))
"""


def run_child(step: str, root: Path) -> dict:
    """Run one step in a child process; its result plus its own peak RSS (MB) and wall time."""
    env = {**os.environ, "DAGSTER_HOME": "", "PYTHONWARNINGS": "ignore"}
    env.pop("DAGSTER_HOME")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, step, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{step} on {root}: child exited {status}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "peak_mb": usage.ru_maxrss / 1024, "wall_s": wall}


def corpus_mb(root: Path) -> float:
    """MB of patch text in the warehouse's blt_patches (the corpus the merges cover), counted
    by DuckDB in a child process (the measuring parent stays small: see ``--make``)."""
    glob = f"{root}/blt_patches/*/*.parquet"
    code = (
        "import duckdb, sys; print(duckdb.connect().execute("
        f"\"select sum(byte_len) from read_parquet('{glob}')\").fetchone()[0] or 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    return float(out.stdout.strip()) / 1e6


PIECE = re.compile(rb"\w{1,6}|\s+|[^\w\s]+")
STDLIB = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])


def corpus_files(size_mb: float) -> list[tuple[str, bytes]]:
    """(article id, bytes) of the shortest prefix of the stdlib's .py files, in MurmurHash3
    order of their paths, that reaches ``size_mb``."""
    import mmh3

    paths = sorted(
        (p for p in STDLIB.rglob("*.py") if "site-packages" not in p.parts and p.is_file()),
        key=lambda p: mmh3.hash64(str(p.relative_to(STDLIB)), seed=0, signed=False)[0],
    )
    out, total = [], 0
    for path in paths:
        data = path.read_bytes()
        if data:
            out.append((f"stdlib:{path.relative_to(STDLIB)}", data))
            total += len(data)
        if total >= size_mb * 1e6:
            break
    return out


def make_warehouse(root: Path, size_mb: float) -> None:
    """blt_patches shards of the stand-in patcher, then the real shard assets of the family."""
    import dagster as dg
    import pyarrow as pa

    from sphere_assets.core.partitions import shard_partitions
    from sphere_assets.lib.text.corpus import shard_of
    from sphere_assets.ngrams.adjacency import adjacency
    from sphere_assets.ngrams.article_hllsets import article_hllsets
    from sphere_assets.ngrams.ngram_index import ngram_index
    from sphere_assets.ngrams.settings import HllSetResource
    from sphere_assets.patching.contract import BLT_PATCHES, BLT_PATCHES_SCHEMA
    from sphere_resources.store import Warehouse
    from sphere_resources.warehouse import WarehouseResource
    from tests.ngrams.materialize import patch_rows  # the tests' blt_patches rows

    shutil.rmtree(root, ignore_errors=True)
    store = Warehouse(root)
    keys = shard_partitions.get_partition_keys()
    by_shard: dict[str, list] = {k: [] for k in keys}
    for article_id, data in sorted(corpus_files(size_mb)):
        by_shard[str(shard_of(article_id, len(keys)))].append((article_id, PIECE.findall(data)))
    for key, articles in by_shard.items():
        tables = [patch_rows(article_id, pieces) for article_id, pieces in articles]
        table = pa.concat_tables(tables) if tables else BLT_PATCHES_SCHEMA.empty_table()
        with store.partition_writer(BLT_PATCHES.name, key) as writer:
            writer.write_table(table)
    res = {"warehouse": WarehouseResource(root=str(root)), "hll": HllSetResource()}
    for key in keys:
        result = dg.materialize(
            [ngram_index, adjacency, article_hllsets], partition_key=key, resources=res
        )
        assert result.success, key


def measure(label: str, root: Path, keep: Path | None) -> dict:
    size = corpus_mb(root)
    base = run_child("import", root)["peak_mb"]
    print(f"\n{label}: {root}  corpus {size:.2f} MB  import-only child {base:.0f} MB")
    print(f"  {'step':<18} {'peak MB':>8} {'merge MB':>9} {'asset s':>8} {'total s':>8}  check")
    rows = {}
    for step in STEPS:
        r = run_child(step, root)
        r["merge_mb"] = r["peak_mb"] - base
        rows[step] = r
        checks = (
            "pass" if r["success"] and all(r["check_passed"]) else f"FAIL {r['check_problems']}"
        )
        print(
            f"  {step:<18} {r['peak_mb']:8.0f} {r['merge_mb']:9.0f} {r['asset_s']:8.2f} "
            f"{r['total_s']:8.2f}  {checks}"
        )
        if keep is not None:
            dest = keep / label / step
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(root / step, dest)
    return {"corpus_mb": size, "import_mb": base, "steps": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path, default=None)
    parser.add_argument("--large", type=Path, default=None)
    parser.add_argument("--make", default=None, help="A,B: build both warehouses (MB of text)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/sphere_bench_merges"))
    parser.add_argument("--keep-outputs", type=Path, default=None)
    parser.add_argument("--make-one", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_one is not None:
        make_warehouse(args.scratch, args.make_one)
        return
    if args.make:
        sizes = [float(x) for x in args.make.split(",")]
        args.small, args.large = (args.scratch / f"{mb:g}mb" for mb in sizes)
        for root, mb in zip((args.small, args.large), sizes, strict=True):
            # in a child: a forked child's ru_maxrss starts at its parent's resident size, so
            # the parent that measures stays small
            t0 = time.perf_counter()
            made = [sys.executable, __file__, "--make-one", f"{mb}", "--scratch", str(root)]
            subprocess.run(made, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            print(f"made {root} ({mb:g} MB of stdlib text) in {time.perf_counter() - t0:.0f} s")
    small = measure("small", args.small, args.keep_outputs)
    if args.large is None:
        return
    large = measure("large", args.large, args.keep_outputs)
    corpus_ratio = large["corpus_mb"] / small["corpus_mb"]
    print(f"\ngrowth large/small (corpus ratio {corpus_ratio:.2f}):")
    print(f"  {'step':<18} {'merge MB ratio':>15} {'peak ratio':>11} {'total s ratio':>14}")
    for step in STEPS:
        a, b = small["steps"][step], large["steps"][step]
        print(
            f"  {step:<18} {b['merge_mb'] / max(a['merge_mb'], 1):15.2f} "
            f"{b['peak_mb'] / a['peak_mb']:11.2f} {b['total_s'] / a['total_s']:14.2f}"
        )


if __name__ == "__main__":
    main()
