"""ngram_vocabulary (global): every ngram_index shard merged by key bytes, plus the bit lookup.

Counts of equal keys are added (no per-shard ids, so the merge is associative and commutative);
``lookup.safetensors`` is the CSR ``bit -> rows`` per layer that restore uses.
"""

import time

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.metadata import row_metadata
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams.contract import NGRAM_INDEX, NGRAM_VOCABULARY
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource


@dg.asset(
    name=NGRAM_VOCABULARY.name,
    deps=[dg.AssetDep(ngram_index, partition_mapping=dg.AllPartitionMapping())],
    group_name="ngrams",
    kinds={"numpy", "parquet", "safetensors"},
    owners=["team:sphere"],
    tags={"family": "ngrams"},
    description=(
        "Global n-gram vocabulary: every ngram_index shard merged by key bytes (counts added; "
        "associative and commutative), rows in canonical byte order, plus lookup.safetensors: "
        "for each layer n, indptr_n (32*2^P+1) and rows_n — the Parquet rows of each HLLSet bit."
    ),
)
def ngram_vocabulary(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.MaterializeResult:
    hll = hll.checked()
    store = warehouse.store()
    shards, missing = io.shards_on_disk(store, NGRAM_INDEX, context.log)
    t0 = time.perf_counter()
    merged = io.read_index_table(store, shards)
    rows = io.index_rows(merged, hll.p)
    lookup = io.lookup_tensors(rows, hll.p)
    seconds = time.perf_counter() - t0
    io.write_vocabulary(store, rows, lookup, hll.p, shards)
    sizes = [merged.size(n) for n in ng.ORDERS]
    context.log.info(
        f"ngram_vocabulary: {len(shards)} shards -> {sizes} distinct n-grams in {seconds:.2f}s"
    )
    path = str(store.partition_dir(NGRAM_VOCABULARY.name, None))
    return dg.MaterializeResult(
        metadata={
            **row_metadata(NGRAM_VOCABULARY, rows.num_rows),
            **hll.metadata(),
            **report.ngram_vocabulary_metadata(rows, sizes, shards, missing, seconds, path),
        }
    )


def merge_problems(store: Warehouse, rows: pa.Table) -> tuple[list[str], list[int]]:
    """(problems, count totals per order): per order, the vocabulary's count total equals the
    sum over ngram_index shards, and there is one vocabulary row per distinct shard key."""
    problems = []
    n = rows.column("n").to_numpy()
    counts = rows.column("count").to_numpy()
    totals = np.zeros(3, np.int64)
    shard_keys = []
    for key in store.partitions(NGRAM_INDEX.name):
        part = io.read_index_rows(store, key, columns=["n", "key", "count"])
        pn = part.column("n").to_numpy()
        pcnt = part.column("count").to_numpy()
        totals += [int(pcnt[pn == k].sum()) for k in ng.ORDERS]
        shard_keys.append(pa.table({"n": part.column("n"), "key": part.column("key")}))
    merged_totals = [int(counts[n == k].sum()) for k in ng.ORDERS]
    if merged_totals != totals.tolist():
        problems.append(f"count totals {merged_totals} != shard sums {totals.tolist()}")
    if shard_keys:
        distinct = pa.concat_tables(shard_keys).group_by(["n", "key"]).aggregate([])
        if distinct.num_rows != rows.num_rows:
            problems.append(
                f"{distinct.num_rows} distinct shard keys vs {rows.num_rows} vocabulary rows"
            )
    return problems, merged_totals


def lookup_problems(rows: pa.Table, lookup: dict[str, np.ndarray], p: int) -> list[str]:
    """Per layer: the bit lookup lists each of the layer's rows exactly once, at its own bit."""
    problems = []
    n = rows.column("n").to_numpy()
    bits = io.row_bits(rows)
    for order in ng.ORDERS:
        indptr, lrows = lookup[f"indptr_{order}"], lookup[f"rows_{order}"]
        if indptr.shape != (hs.WORD_BITS * (1 << p) + 1,) or indptr[-1] != lrows.size:
            problems.append(f"layer {order}: indptr shape/total wrong")
            continue
        if lrows.size != int((n == order).sum()) or np.unique(lrows).size != lrows.size:
            problems.append(f"layer {order}: lookup does not list every row once")
            continue
        owner = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
        if not np.array_equal(bits[lrows], owner) or not np.all(n[lrows] == order):
            problems.append(f"layer {order}: lookup rows are not at their bits")
    return problems


@dg.asset_check(
    asset=ngram_vocabulary,
    additional_deps=[ngram_index],
    description=(
        "Merge law: per order, the vocabulary's count total equals the sum over ngram_index "
        "shards and every shard key is present; the bit lookup covers each row exactly once at "
        "the row's own bit."
    ),
    blocking=True,
)
def ngram_vocabulary_merge_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    rows = io.read_vocabulary_rows(store)
    lookup, p = io.read_lookup(store)
    problems, totals = merge_problems(store, rows)
    problems += lookup_problems(rows, lookup, p)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "p": p,
            "rows": rows.num_rows,
            "count_totals": str(totals),
            **report.problem_counts(problems),
        },
    )
