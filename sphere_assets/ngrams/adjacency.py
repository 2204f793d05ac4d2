"""adjacency (shard): the De Bruijn patch graph of a shard, and its patch n-gram context counts.

Nodes are 2-grams (node table, Parquet), edges 3-grams (``csr.safetensors``), weights
``ln((F3+α)/(F2+α·outdeg))`` (:mod:`sphere_assets.lib.sketch.adjacency`);
``context.safetensors`` counts the shard's patch n-grams of order 3..N (``hll.context_order``,
:mod:`sphere_assets.lib.sketch.context_model`), which restore ranks orderings with.
"""

import time
from collections.abc import Iterator

import dagster as dg

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.metadata import partition_results, row_metadata
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams.contract import ADJACENCY
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource


def shard_context(store: Warehouse, shard: str, max_order: int) -> cm.ContextCounts:
    """Context counts of a blt_patches shard's patch sequences."""
    _, patches, offsets = io.read_patch_sequences(store, shard)
    return cm.count_patch_contexts(patches, offsets, max_order)


@dg.asset(
    name=ADJACENCY.name,
    deps=[ngram_index, blt_patches],
    partitions_def=shard_partitions,
    group_name="ngrams",
    kinds={"numpy", "parquet", "safetensors"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    owners=["team:sphere"],
    tags={"family": "ngrams"},
    description=(
        "De Bruijn patch graph of a shard: nodes = 2-grams (node table, Parquet), edges = "
        "3-grams (a,b)->(b,c) as CSR indptr/indices/counts/weights (csr.safetensors), weight "
        "ln((F3+alpha)/(F2+alpha*outdeg)), alpha = 0.5 by default; context.safetensors: counts "
        "of the shard's patch n-grams of order 3..N by context hash (restore's ranking model)."
    ),
)
def adjacency(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.MaterializeResult:
    hll = hll.checked()
    store = warehouse.store()
    keys = list(context.partition_keys)
    metadata_by_partition = {}
    for key in keys:
        t0 = time.perf_counter()
        graph = adj.build(io.read_index_table(store, [key]), hll.alpha)
        context_counts = shard_context(store, key, hll.context_order)
        io.write_adjacency(store, ADJACENCY, key, graph, context_counts)
        summary = report.adjacency_summary(graph)
        metadata_by_partition[key] = {
            **row_metadata(ADJACENCY, summary["nodes"]),
            **hll.metadata(),
            **report.adjacency_metadata(
                [summary],
                context_counts.size,
                time.perf_counter() - t0,
                str(store.partition_dir(ADJACENCY.name, key)),
            ),
        }
    return partition_results(context, metadata_by_partition)


def shard_problems(store: Warehouse, shard: str) -> list[str]:
    """CSR problems of the shard's graph, and its F2/F3 totals against ngram_index's."""
    graph = io.load_adjacency(store, ADJACENCY, shard)
    problems = [f"shard {shard}: {p}" for p in adj.csr_problems(graph)]
    rows = io.read_index_rows(store, shard, columns=["n", "count"])
    n = rows.column("n").to_numpy()
    counts = rows.column("count").to_numpy()
    if (int(counts[n == 2].sum()), int(counts[n == 3].sum())) != (
        int(graph.node_counts.sum()),
        int(graph.counts.sum()),
    ):
        problems.append(f"shard {shard}: F2/F3 totals differ from ngram_index")
    return problems


@shard_check(
    asset=adjacency,
    additional_deps=[ngram_index],
    description=(
        "Per shard: CSR well formed (monotone indptr, targets in range, edge (a,b)->(b,c)), "
        "counts positive, weights finite and <= 0 with transition probabilities summing to 1, "
        "and node/edge counts equal the shard's 2-/3-gram counts in ngram_index."
    ),
    blocking=True,
)
def adjacency_csr_valid(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, ADJACENCY.name):
        problems = shard_problems(store, key)
        results[key] = dg.AssetCheckResult(
            passed=not problems, metadata={"shards": key, **report.problem_counts(problems)}
        )
    yield from partition_check_results(context, results)
