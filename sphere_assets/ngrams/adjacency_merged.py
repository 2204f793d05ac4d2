"""adjacency_merged (global): all shard adjacencies (and context counts) merged.

Node F2 and edge F3 of equal byte keys are added and the weights recomputed, which makes the
merge equal to one build over the whole corpus; the context counts merge the same way.  Its
checks: the merge equals the whole-corpus build, and restore quality on stored span HLLSets.
"""

import time

import dagster as dg

from sphere_assets.core.metadata import row_metadata
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams.adjacency import adjacency
from sphere_assets.ngrams.article_hllsets import article_hllsets
from sphere_assets.ngrams.contract import ADJACENCY, ADJACENCY_MERGED, CONTEXT_STEM
from sphere_assets.ngrams.ngram_vocabulary import ngram_vocabulary
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_resources.contracts import ContractError
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource

QUALITY_SPANS = 40
QUALITY_MAX_SPAN = 64
QUALITY_TARGET = 0.95


def shard_contexts(store: Warehouse, shards: list[str]) -> list[cm.ContextCounts]:
    """The context counts of the adjacency shards; a shard written without them is an error."""
    parts = [io.load_context(store, ADJACENCY, key) for key in shards]
    stale = [key for key, part in zip(shards, parts, strict=True) if part is None]
    if stale:
        raise ContractError(
            ADJACENCY.name,
            ",".join(stale),
            CONTEXT_STEM,
            "no context.safetensors (written by an older version): re-materialize adjacency",
        )
    return parts


@dg.asset(
    name=ADJACENCY_MERGED.name,
    deps=[dg.AssetDep(adjacency, partition_mapping=dg.AllPartitionMapping())],
    group_name="ngrams",
    kinds={"numpy", "parquet", "safetensors"},
    owners=["team:sphere"],
    tags={"family": "ngrams"},
    description=(
        "All shard adjacencies merged: node F2 and edge F3 of equal byte keys added, weights "
        "recomputed — equal to building the graph over the whole corpus at once. Same layout "
        "as adjacency (node table + csr.safetensors)."
    ),
)
def adjacency_merged(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.MaterializeResult:
    hll = hll.checked()
    store = warehouse.store()
    shards, missing = io.shards_on_disk(store, ADJACENCY, context.log)
    t0 = time.perf_counter()
    graph = adj.merge([io.load_adjacency(store, ADJACENCY, key) for key in shards], hll.alpha)
    context_counts = cm.merge(shard_contexts(store, shards))
    io.write_adjacency(store, ADJACENCY_MERGED, None, graph, context_counts)
    summary = report.adjacency_summary(graph)
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ADJACENCY_MERGED, summary["nodes"]),
            **hll.metadata(),
            **summary,
            "context_entries": context_counts.size,
            "context_order": context_counts.max_order,
            "shards": ",".join(shards),
            "missing_shards": ",".join(missing) or "-",
            "seconds": round(time.perf_counter() - t0, 4),
            "path": dg.MetadataValue.path(str(store.partition_dir(ADJACENCY_MERGED.name, None))),
        }
    )


@dg.asset_check(
    asset=adjacency_merged,
    additional_deps=[ngram_vocabulary, blt_patches],
    description=(
        "Shard + merge == whole corpus: the merged graph equals the graph built at once from "
        "ngram_vocabulary's 2-/3-gram counts (nodes, CSR, counts and weights identical), the "
        "merged context counts equal counting every blt_patches sequence at once, and the CSR "
        "is well formed."
    ),
    blocking=True,
)
def adjacency_merged_equals_whole(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    merged = io.load_adjacency(store, ADJACENCY_MERGED, None)
    vocab = io.read_vocabulary_rows(store, columns=["n", "key", "count"])
    whole = adj.build(io.table_from_rows(vocab), merged.alpha)
    problems = adj.csr_problems(merged)
    equal = merged.equal(whole)
    if not equal:
        problems.append("merged graph differs from the whole-corpus build")
    merged_context = io.load_context(store, ADJACENCY_MERGED, None)
    patches, offsets = io.read_corpus_sequences(store)
    context_equal = merged_context is not None and merged_context.equal(
        cm.count_patch_contexts(patches, offsets, merged_context.max_order)
    )
    if not context_equal:
        problems.append("merged context counts differ from counting the whole corpus at once")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            **report.adjacency_summary(merged),
            "equal_to_whole_build": equal,
            "context_equal_to_whole_count": context_equal,
            "problems": "; ".join(problems) or "-",
        },
    )


@dg.asset_check(
    asset=adjacency_merged,
    additional_deps=[ngram_vocabulary, article_hllsets, blt_patches],
    description=(
        f"Restore quality on up to {QUALITY_SPANS} stored span HLLSets of <= {QUALITY_MAX_SPAN} "
        f"patches (every k-th span over all shards; each restored with its stored patch_count "
        f"and the context counts of adjacency_merged): exact@1 >= {QUALITY_TARGET} against the "
        "real patches, plus exact@k, the round-trip law and p50/p95 latency in the metadata."
    ),
    blocking=False,
)
def restore_quality(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    spans = io.read_span_rows(store, QUALITY_MAX_SPAN)
    if not spans:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no span HLLSets to restore"})
    total = sum(t.num_rows for _, t in spans)
    stride = max(1, total // QUALITY_SPANS)
    p = int(spans[0][1].column("p")[0].as_py())
    index = io.load_restore_index(store, p)
    exact1 = exactk = roundtrip = n = 0
    latencies = []
    seen = 0
    for key, table in spans:
        article_ids, patches, offsets = io.read_patch_sequences(store, key)
        position = {a: i for i, a in enumerate(article_ids)}
        for r in table.to_pylist():
            seen += 1
            if (seen - 1) % stride or n >= QUALITY_SPANS:
                continue
            start = int(offsets[position[r["article_id"]]]) + r["patch_start"]
            truth = patches.slice(start, r["patch_count"]).to_pylist()
            h = io.hllset_of_row(r)
            result = rs.restore(h, index, length=r["patch_count"])
            latencies.append(result.report.latency_ms)
            cands = [c.patches for c in result.candidates]
            n += 1
            exact1 += bool(cands) and cands[0] == truth
            exactk += truth in cands
            roundtrip += bool(cands) and ng.hllset_of_patches(cands[0], p) == h
    return dg.AssetCheckResult(
        passed=bool(exact1 / n >= QUALITY_TARGET),
        severity=dg.AssetCheckSeverity.WARN,
        metadata=report.restore_quality_metadata(
            n, p, exact1, exactk, roundtrip, latencies, QUALITY_TARGET
        ),
    )
