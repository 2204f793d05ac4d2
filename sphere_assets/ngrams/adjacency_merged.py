"""adjacency_merged (global): all shard adjacencies (and context counts) merged, out of core.

Node F2 and edge F3 of equal byte keys are added and the weights recomputed, which makes the
merge equal to one build over the whole corpus; the context counts merge the same way.  Nodes
come from a k-way merge of the shards' node tables in canonical order (a batch per shard in
memory, :mod:`sphere_assets.lib.sketch.sorted_merge`); edges never carry keys: each shard's CSR
is mapped to merged node ids through the node key hashes and merged one shard at a time, as are
the context counts.  The files are byte-identical to merging every shard in memory at once.
Its checks stream too: the merge law against ngram_vocabulary and the shards (exact, with
seeded samples for what needs keys or patches), and restore quality on every k-th span.
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.metadata import row_metadata
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import sorted_merge as sm
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams import merge_io as mio
from sphere_assets.ngrams.adjacency import adjacency
from sphere_assets.ngrams.article_hllsets import article_hllsets
from sphere_assets.ngrams.contract import (
    ADJACENCY,
    ADJACENCY_MERGED,
    CONTEXT_STEM,
)
from sphere_assets.ngrams.merge_checks import (
    SAMPLE_ARTICLES,
    SAMPLE_EDGES,
    SAMPLE_SEED,
    context_problems,
    graph_problems,
)
from sphere_assets.ngrams.ngram_vocabulary import ngram_vocabulary
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_resources.contracts import ContractError
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource

QUALITY_SPANS = 40
QUALITY_MAX_SPAN = 64
QUALITY_TARGET = 0.95


class NodeIndex:
    """Merged node id of a node key hash: the merged nodes' hashes sorted once (a 64-bit
    collision between two merged nodes is an error, never a silent mix-up)."""

    def __init__(self, hashes: np.ndarray):
        self.order = np.argsort(hashes, kind="stable").astype(np.int64)
        self.sorted = hashes[self.order]
        if self.sorted.size > 1 and np.any(self.sorted[1:] == self.sorted[:-1]):
            raise ContractError(
                ADJACENCY_MERGED.name, None, "hash", "two merged nodes share a 64-bit key hash"
            )

    def ids(self, hashes: np.ndarray, shard: str) -> np.ndarray:
        pos = np.searchsorted(self.sorted, hashes)
        found = pos < self.sorted.size
        found[found] = self.sorted[pos[found]] == hashes[found]
        if not found.all():
            raise ContractError(ADJACENCY.name, shard, "hash", "a node hash is not a merged node")
        return self.order[pos]


def merged_nodes(store: Warehouse, shards: list[str], columns: list[str]) -> Iterator[pa.Table]:
    """The k-way merge of the shards' node tables (canonical order), one row per merged node:
    the first shard's row with ``count`` = F2 summed over the shards."""
    cols = ["key", "hash", "count", *columns]
    streams = [mio.iter_keyed_rows(store, ADJACENCY, key, cols, order=2) for key in shards]
    for table in mio.merged_stream(streams, ADJACENCY, shards):
        starts = sm.group_starts(table.column(sm.ORDER_KEY))
        counts = sm.sum_groups(table.column("count").to_numpy(), starts)
        first = table.take(pa.array(starts)).drop_columns(["count", "stream", sm.ORDER_KEY])
        yield first.append_column("count", pa.array(counts, pa.int64()))


def merged_edges(
    store: Warehouse, shards: list[str], nodes: NodeIndex, n_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(edge codes src*N+dst ascending, F3): every shard's CSR mapped to merged node ids and
    merged into the running result one shard at a time (canonical edge order = code order)."""
    codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for key in shards:
        arrays, _ = mio.read_csr(store, ADJACENCY, key)
        ids = nodes.ids(mio.read_node_hashes(store, ADJACENCY, key), key)
        src = np.repeat(ids, np.diff(arrays["indptr"]))
        shard_codes = src * n_nodes + ids[arrays["indices"]]
        codes, counts = sm.merge_sorted_counts(codes, counts, shard_codes, arrays["counts"])
    return codes, counts


def merged_context(store: Warehouse, shards: list[str]) -> cm.ContextCounts:
    """The shards' context counts merged one shard at a time (a shard written without them is
    an error naming it)."""
    merged = None
    for key in shards:
        part = io.load_context(store, ADJACENCY, key)
        if part is None:
            raise ContractError(
                ADJACENCY.name,
                key,
                CONTEXT_STEM,
                "no context.safetensors (written by an older version): re-materialize adjacency",
            )
        if merged is not None and part.max_order != merged.max_order:
            raise ContractError(
                ADJACENCY.name,
                key,
                CONTEXT_STEM,
                f"counted with max order {part.max_order}, other shards {merged.max_order}",
            )
        if merged is None:
            merged = part
            continue
        hashes, counts = sm.merge_sorted_counts(
            merged.hashes, merged.counts, part.hashes, part.counts
        )
        del part
        merged = cm.ContextCounts(merged.max_order, hashes, counts)
    return merged


def node_rows(store: Warehouse, shards: list[str], outdeg: np.ndarray) -> Iterator[pa.Table]:
    """adjacency_merged's node table, streamed: the merged nodes with node_id and outdeg."""
    columns = ["left", "right", "left_is_start", "right_is_end"]
    first = 0
    for table in merged_nodes(store, shards, columns):
        ids = np.arange(first, first + table.num_rows, dtype=np.int64)
        first += table.num_rows
        yield pa.table(
            {
                "node_id": pa.array(ids),
                "key": table.column("key"),
                "hash": table.column("hash"),
                "left": table.column("left"),
                "right": table.column("right"),
                "left_is_start": table.column("left_is_start"),
                "right_is_end": table.column("right_is_end"),
                "count": table.column("count"),
                "outdeg": pa.array(outdeg[ids].astype(np.int32), pa.int32()),
            }
        )


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
    hashes, f2 = [], []
    for table in merged_nodes(store, shards, []):
        hashes.append(table.column("hash").to_numpy())
        f2.append(table.column("count").to_numpy())
    hashes = np.concatenate(hashes).astype(np.uint64)
    f2 = np.concatenate(f2).astype(np.int64)
    n_nodes = int(hashes.size)
    codes, f3 = merged_edges(store, shards, NodeIndex(hashes), n_nodes)
    del hashes
    src, dst = np.divmod(codes, max(n_nodes, 1))
    outdeg = np.bincount(src, minlength=n_nodes).astype(np.int64)
    csr = {
        "indptr": np.concatenate([[0], np.cumsum(outdeg)]).astype(np.int64),
        "indices": dst.astype(np.int64),
        "counts": f3.astype(np.int64),
        "weights": adj.edge_weights(f3, f2[src], outdeg[src], hll.alpha),
    }
    del codes, src, dst
    context_counts = merged_context(store, shards)
    mio.write_adjacency_streamed(
        store,
        node_rows(store, shards, outdeg),
        csr,
        adj.csr_metadata(n_nodes, int(f3.size), hll.alpha),
        context_counts.tensors(),
        context_counts.tensor_metadata(),
    )
    summary = report.outdeg_summary(outdeg, int(f3.size), float(hll.alpha))
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
        "Shard + merge == whole corpus, streamed (a batch, or one shard, in memory): the node "
        "table equals ngram_vocabulary's 2-gram rows and the CSR counts its 3-gram counts, in "
        "order; weights are exactly ln((F3+a)/(F2+a*outdeg)) and sum to 1 per node; "
        f"{SAMPLE_EDGES} seeded edges join their nodes' keys; the merged context counts are "
        "the shards' sums, each shard's window total matches blt_patches, and the windows of "
        f"{SAMPLE_ARTICLES} seeded articles per shard, counted again, are in it."
    ),
    blocking=True,
)
def adjacency_merged_equals_whole(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    shards = store.partitions(ADJACENCY.name)
    problems, facts = graph_problems(store)
    more, context_facts = context_problems(store, shards)
    problems += more
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            **facts,
            **context_facts,
            "shards": ",".join(shards),
            "sample": f"{SAMPLE_EDGES} edges, {SAMPLE_ARTICLES} articles/shard, seed {SAMPLE_SEED}",
            **report.problem_counts(problems),
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
    per_shard = mio.span_counts(store, QUALITY_MAX_SPAN)
    total = sum(count for _, count in per_shard)
    if not total:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no span HLLSets to restore"})
    stride = max(1, total // QUALITY_SPANS)
    chosen = np.arange(0, total, stride, dtype=np.int64)[:QUALITY_SPANS]  # every k-th span
    index = None
    exact1 = exactk = roundtrip = n = 0
    latencies = []
    first = 0
    for key, count in per_shard:
        local = chosen[(chosen >= first) & (chosen < first + count)] - first
        first += count
        if not local.size:
            continue
        table = mio.selected_spans(store, key, QUALITY_MAX_SPAN, local)
        if index is None:
            p = int(table.column("p")[0].as_py())
            index = io.load_restore_index(store, p)
        articles = sorted(set(table.column("article_id").to_pylist()))
        patches = mio.article_patches(store, key, articles)
        for r in table.to_pylist():
            start = r["patch_start"]
            truth = patches[r["article_id"]][start : start + r["patch_count"]]
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
