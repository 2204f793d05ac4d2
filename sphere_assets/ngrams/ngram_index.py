"""ngram_index (shard): the distinct patch 1-, 2-, 3-grams of each blt_patches shard.

Rows (n, key, hash, reg, run, count) for the configured P, in canonical byte order
(:mod:`sphere_assets.lib.sketch.ngrams`); settings from the ``hll`` resource
(:class:`sphere_assets.ngrams.settings.HllSetResource`).
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.metadata import partition_results, row_metadata
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams.contract import NGRAM_INDEX
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource


def index_shard(store: Warehouse, shard: str, p: int) -> report.IndexedShard:
    """Index one blt_patches shard and write its rows."""
    article_ids, patches, offsets = io.read_patch_sequences(store, shard)
    t0 = time.perf_counter()
    indexed = ng.index_sequences(patches, offsets)
    rows = io.index_rows(indexed.table, p)
    seconds = time.perf_counter() - t0
    io.write_index(store, shard, rows)
    return report.IndexedShard(
        shard=shard,
        articles=len(article_ids),
        patches=len(patches),
        occurrences=indexed.occurrences.total,
        distinct=[indexed.table.size(n) for n in ng.ORDERS],
        rows=rows.num_rows,
        seconds=seconds,
        preview=rows.slice(0, 5),
    )


@dg.asset(
    name=NGRAM_INDEX.name,
    deps=[blt_patches],
    partitions_def=shard_partitions,
    group_name="ngrams",
    kinds={"numpy", "parquet"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    owners=["team:sphere"],
    tags={"family": "ngrams"},
    description=(
        "Distinct patch 1-, 2- and 3-grams of each blt_patches shard (sequences padded with "
        "_START_/_END_, parts joined by 0x00) with mmh3 x64 hash, HLLSet register/run for P and "
        "occurrence count; rows in canonical byte order. Deduplicate-then-hash, vectorised."
    ),
)
def ngram_index(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.MaterializeResult:
    hll = hll.checked()
    store = warehouse.store()
    keys = list(context.partition_keys)
    shards = [index_shard(store, key, hll.p) for key in keys]
    context.log.info(report.ngram_index_log(keys, shards))
    return partition_results(
        context,
        {
            key: {
                **row_metadata(NGRAM_INDEX, shard.rows),
                **hll.metadata(),
                **report.ngram_index_metadata(
                    [shard], str(store.partition_dir(NGRAM_INDEX.name, key))
                ),
            }
            for key, shard in zip(keys, shards, strict=True)
        },
    )


def shard_problems(store: Warehouse, shard: str, p: int) -> list[str]:
    """Count sums against blt_patches, positive counts, unique (n, key), and hash/reg/run of the
    first and last 500 rows recomputed with mmh3 in Python."""
    rows = io.read_index_rows(store, shard)
    n_patches, n_articles = io.read_patch_totals(store, shard)
    problems = []
    n = rows.column("n").to_numpy()
    counts = rows.column("count").to_numpy()
    sums = [int(counts[n == k].sum()) for k in ng.ORDERS]
    if sums != [n_patches, n_patches + n_articles, n_patches]:
        problems.append(
            f"shard {shard}: count sums {sums} vs patches {n_patches}, articles {n_articles}"
        )
    if (counts <= 0).any():
        problems.append(f"shard {shard}: non-positive counts")
    if rows.group_by(["n", "key"]).aggregate([]).num_rows != rows.num_rows:
        problems.append(f"shard {shard}: duplicate (n, key) rows")
    sample = rows.slice(0, 500).to_pylist() + rows.slice(max(rows.num_rows - 500, 0)).to_pylist()
    for r in sample:
        h = hs.hash64(r["key"])
        reg, run = hs.reg_run(np.array([h], np.uint64), p)
        if (h, int(reg[0]), int(run[0])) != (r["hash"], r["reg"], r["run"]):
            problems.append(f"shard {shard}: {r['n']}-gram {r['key']!r} has wrong hash/reg/run")
            break
    return problems


@shard_check(
    asset=ngram_index,
    additional_deps=[blt_patches],
    description=(
        "Per shard: counts add up to the occurrences implied by blt_patches (Σ1 = patches, "
        "Σ2 = patches + articles, Σ3 = patches), (n, key) is unique, and hash/reg/run of a "
        "sample of rows equal mmh3.hash64 of the key recomputed in Python."
    ),
    blocking=True,
)
def ngram_index_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, NGRAM_INDEX.name):
        problems = shard_problems(store, key, hll.p)
        results[key] = dg.AssetCheckResult(
            passed=not problems, metadata={"shards": key, **report.problem_counts(problems)}
        )
    yield from partition_check_results(context, results)
