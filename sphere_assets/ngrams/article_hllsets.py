"""article_hllsets (shard): one HLLSet per article and per span of ``span_patches`` patches.

Each span is padded with _START_/_END_ as its own sequence; layers are stored as binary columns
with the Horvitz-Thompson cardinality of each (:mod:`sphere_assets.lib.sketch.span_sets`).
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.metadata import partition_results, row_metadata
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import span_sets as ss
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams.contract import ARTICLE_HLLSETS
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource

# bytes of HLLSet words held in memory at once while building article_hllsets
HLLSET_BATCH_BYTES = 64 << 20
RECOMPUTED_SPANS = 50  # spans per shard the check recomputes from blt_patches


def hllset_batches(
    article_ids: list[str], patches: pa.Array, offsets: np.ndarray, p: int, span: int
) -> Iterator[pa.Table]:
    """Contract rows of the articles' sets, in batches of at most HLLSET_BATCH_BYTES of words."""
    for a, b in ss.article_batches(offsets, p, span, HLLSET_BATCH_BYTES):
        base = offsets[a]
        sub = patches.slice(int(base), int(offsets[b] - base))
        sets = ss.article_span_sets(sub, offsets[a : b + 1] - base, p, span)
        yield io.hllset_table(article_ids[a:b], sets)


def sketch_shard(store: Warehouse, shard: str, p: int, span: int) -> report.SketchedShard:
    """Sketch one blt_patches shard and write its rows."""
    t0 = time.perf_counter()
    article_ids, patches, offsets = io.read_patch_sequences(store, shard)
    batches = hllset_batches(article_ids, patches, offsets, p, span)
    written = io.write_article_hllsets(store, shard, batches)
    return report.SketchedShard(shard, len(article_ids), written, time.perf_counter() - t0)


@dg.asset(
    name=ARTICLE_HLLSETS.name,
    deps=[blt_patches],
    partitions_def=shard_partitions,
    group_name="ngrams",
    kinds={"numpy", "parquet"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    owners=["team:sphere"],
    tags={"family": "ngrams"},
    description=(
        "HLLSet of every article (span_index -1) and of every span of span_patches patches "
        "(default 64, each padded with _START_/_END_): layers 1..3 as 2^P little-endian uint32 "
        "words (binary columns) and Horvitz-Thompson cardinality estimates."
    ),
)
def article_hllsets(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.MaterializeResult:
    hll = hll.checked()
    store = warehouse.store()
    keys = list(context.partition_keys)
    shards = [sketch_shard(store, key, hll.p, hll.span_patches) for key in keys]
    return partition_results(
        context,
        {
            key: {
                **row_metadata(ARTICLE_HLLSETS, shard.written.rows),
                **hll.metadata(),
                **report.article_hllsets_metadata(
                    [shard], str(store.partition_dir(ARTICLE_HLLSETS.name, key))
                ),
            }
            for key, shard in zip(keys, shards, strict=True)
        },
    )


def reference_hllset(patches: list[bytes], p: int) -> hs.HLLSet:
    """The HLLSet of one sequence, every key hashed with mmh3 in Python (the reference)."""
    ref = ng.reference_keys(patches)
    return hs.HLLSet.from_hashes(
        [np.array([hs.hash64(k) for k in ref[n]], np.uint64) for n in ng.ORDERS], p
    )


def union_problems(shard: str, rows: list[dict]) -> list[str]:
    """Finite cardinalities, and each article's layer1 equal to the union of its spans'."""
    problems = []
    union: dict[str, np.ndarray] = {}
    whole: dict[str, np.ndarray] = {}
    for r in rows:
        w1 = np.frombuffer(r["layer1"], "<u4")
        if r["span_index"] < 0:
            whole[r["article_id"]] = w1
        else:
            union[r["article_id"]] = union.get(r["article_id"], 0) | w1
        if not all(np.isfinite(r[c]) for c in ("card1", "card2", "card3")):
            problems.append(f"shard {shard}: non-finite cardinality for {r['article_id']}")
    for a, w in whole.items():
        if a in union and not np.array_equal(union[a], w):
            problems.append(f"shard {shard}: article {a!r} layer1 != union of its spans")
    return problems


def recompute_problems(store: Warehouse, shard: str, rows: list[dict]) -> tuple[list[str], int]:
    """(problems, spans recomputed): the first RECOMPUTED_SPANS spans against the reference
    HLLSet of their blt_patches."""
    problems = []
    checked = 0
    article_ids, patches, offsets = io.read_patch_sequences(store, shard)
    position = {a: i for i, a in enumerate(article_ids)}
    for r in [r for r in rows if r["span_index"] >= 0][:RECOMPUTED_SPANS]:
        i = position.get(r["article_id"])
        if i is None:
            problems.append(f"shard {shard}: article {r['article_id']!r} not in blt_patches")
            continue
        start = int(offsets[i]) + r["patch_start"]
        expected = reference_hllset(patches.slice(start, r["patch_count"]).to_pylist(), r["p"])
        checked += 1
        if io.hllset_of_row(r) != expected:
            problems.append(f"shard {shard}: span {r['article_id']!r}#{r['span_index']} differs")
    return problems, checked


@shard_check(
    asset=article_hllsets,
    additional_deps=[blt_patches],
    description=(
        "Per shard: the 1-gram layer of every article equals the union of its spans' 1-gram "
        "layers; every span's HLLSet equals the one recomputed from its blt_patches (first 50 "
        "spans, hashing each key with mmh3 in Python); cardinalities are finite."
    ),
    blocking=True,
)
def article_hllsets_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, ARTICLE_HLLSETS.name):
        rows = io.read_hllset_rows(store, key).to_pylist()
        problems, checked = [], 0
        if rows:  # an empty shard has nothing to recompute
            found, checked = recompute_problems(store, key, rows)
            problems = union_problems(key, rows) + found
        results[key] = dg.AssetCheckResult(
            passed=not problems,
            metadata={
                "shards": key,
                "spans_recomputed": checked,
                **report.problem_counts(problems),
            },
        )
    yield from partition_check_results(context, results)
