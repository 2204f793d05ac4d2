"""ngram_vocabulary (global): every ngram_index shard merged by key bytes, plus the bit lookup.

Counts of equal keys are added (no per-shard ids, so the merge is associative and commutative);
``lookup.safetensors`` is the CSR ``bit -> rows`` per layer that restore uses.  Out of core: the
shards (each in canonical order) are merged k-way in row batches and the rows are written row
group by row group (:mod:`sphere_assets.ngrams.merge_io`), byte-identical to one in-memory merge.
"""

import itertools
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.core.metadata import row_metadata
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch import sorted_merge as sm
from sphere_assets.ngrams import io, report
from sphere_assets.ngrams import merge_io as mio
from sphere_assets.ngrams.contract import NGRAM_INDEX, NGRAM_INDEX_SCHEMA, NGRAM_VOCABULARY
from sphere_assets.ngrams.ngram_index import ngram_index
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.contract import BLT_PATCHES
from sphere_resources.contracts import ContractError
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
    summary = VocabularySummary()
    rows = summary.counted(merged_vocabulary_rows(store, shards, hll.p))
    n_rows = mio.write_vocabulary_streamed(
        store, rows, hll.p, shards, lambda orders, bits: lookup_of_bits(orders, bits, hll.p)
    )
    seconds = time.perf_counter() - t0
    context.log.info(
        f"ngram_vocabulary: {len(shards)} shards -> {summary.sizes} distinct n-grams in "
        f"{seconds:.2f}s (k-way merge, {mio.MERGE_BATCH_ROWS} rows per shard batch)"
    )
    path = str(store.partition_dir(NGRAM_VOCABULARY.name, None))
    return dg.MaterializeResult(
        metadata={
            **row_metadata(NGRAM_VOCABULARY, n_rows),
            **hll.metadata(),
            **report.ngram_vocabulary_summary_metadata(
                summary.top, summary.occurrences, summary.sizes, shards, missing, seconds, path
            ),
        }
    )


def merged_vocabulary_rows(store: Warehouse, shards: list[str], p: int) -> Iterator[pa.Table]:
    """Contract rows of the merge of ``shards``, in canonical order: a k-way merge of the
    shards' row batches (each shard is in canonical order), counts of equal keys added, the
    stored key hashes kept (equal keys must carry equal hashes) and reg/run taken from them."""
    columns = ["n", "key", "hash", "count"]
    streams = [mio.iter_keyed_rows(store, NGRAM_INDEX, key, columns) for key in shards]
    for table in mio.merged_stream(streams, NGRAM_INDEX, shards):
        starts = sm.group_starts(table.column(sm.ORDER_KEY))
        first = table.take(pa.array(starts))
        hashes = first.column("hash").to_numpy()
        every = table.column("hash").to_numpy()
        lengths = np.diff(np.append(starts, table.num_rows))
        bad = np.flatnonzero(every != np.repeat(hashes, lengths))
        if bad.size:
            row = table.slice(int(bad[0]), 1).to_pylist()[0]
            raise ContractError(
                NGRAM_INDEX.name,
                shards[row["stream"]],
                "hash",
                f"{row['n']}-gram {row['key']!r}: hash differs from the other shards' hash",
            )
        reg, run = hs.reg_run(hashes, p)
        yield pa.table(
            {
                "n": first.column("n"),
                "key": first.column("key"),
                "hash": first.column("hash"),
                "reg": pa.array(reg.astype(np.int32)),
                "run": pa.array(run.astype(np.int8)),
                "count": pa.array(sm.sum_groups(table.column("count").to_numpy(), starts)),
            },
            schema=NGRAM_INDEX_SCHEMA,
        )


def lookup_of_bits(orders: np.ndarray, bits: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """Per layer: ``indptr_n`` over bits and ``rows_n`` = row numbers sorted by bit (stable),
    from the order and bit of every row (as :func:`io.lookup_tensors` from the rows)."""
    out = {}
    for order, (indptr, row_numbers) in zip(
        ng.ORDERS, rs.layer_bit_lookups(orders, bits, p), strict=True
    ):
        out[f"indptr_{order}"] = indptr
        out[f"rows_{order}"] = row_numbers
    return out


class VocabularySummary:
    """Metadata gathered while the rows stream by: distinct n-grams per order, occurrences and
    the 8 most frequent patches (ties in row order, as a stable sort of the whole table)."""

    TOP = 8

    def __init__(self):
        self.sizes = [0, 0, 0]
        self.occurrences = 0
        self.top = NGRAM_INDEX_SCHEMA.empty_table().select(["key", "count"])

    def counted(self, rows: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for table in rows:
            n = table.column("n").to_numpy()
            for k in ng.ORDERS:
                self.sizes[k - 1] += int((n == k).sum())
            self.occurrences += int(pc.sum(table.column("count")).as_py() or 0)
            ones = table.filter(pc.equal(table.column("n"), 1)).select(["key", "count"])
            if ones.num_rows:
                both = pa.concat_tables([self.top, ones])
                self.top = both.sort_by([("count", "descending")]).slice(0, self.TOP)
            yield table


COMPARED = ["n", "key", "hash", "reg", "run", "count"]


def shard_problems(store: Warehouse, shard: str, p: int) -> list[str]:
    """One ngram_index shard, streamed: every stored hash is its key's hash, reg/run are the
    hash's, and the count totals per order are blt_patches' (patches, patches + articles,
    patches) — an independent reference that names the shard."""
    problems = []
    totals = np.zeros(3, np.int64)
    for table in mio.iter_rows(store, NGRAM_INDEX, shard, COMPARED):
        n = table.column("n").to_numpy()
        hashes = table.column("hash").to_numpy()
        for field, bad in (
            ("hash", hs.hash64_keys(table.column("key").combine_chunks()) != hashes),
            ("reg", hs.reg_run(hashes, p)[0] != table.column("reg").to_numpy()),
            ("run", hs.reg_run(hashes, p)[1] != table.column("run").to_numpy()),
        ):
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                key = table.column("key")[i].as_py()
                problems.append(
                    f"ngram_index shard {shard}: field {field} of the {n[i]}-gram {key!r} "
                    f"(and {int(bad.sum()) - 1} more in its batch) is not its key's"
                )
        counts = table.column("count").to_numpy()
        totals += [int(counts[n == k].sum()) for k in ng.ORDERS]
    if store.exists(BLT_PATCHES.name, shard):
        _, lengths = mio.article_lengths(store, shard)
        patches, articles = int(lengths.sum()), int(lengths.size)
        expected = [patches, patches + articles, patches]
        if totals.tolist() != expected:
            problems.append(
                f"ngram_index shard {shard}: field count: totals per order {totals.tolist()} "
                f"!= {expected} (blt_patches: patches, patches + articles, patches)"
            )
    return problems


def merge_law_problems(store: Warehouse, shards: list[str], p: int) -> tuple[list[str], dict]:
    """ngram_vocabulary == the k-way merge of the shards, row by row, both streamed (memory: a
    batch per shard); also returns what the lookup check needs (order, reg, run per row)."""
    problems = []
    layers: dict[str, list[np.ndarray]] = {"n": [], "reg": [], "run": []}
    merged = sm.rechunk(merged_vocabulary_rows(store, shards, p), mio.MERGE_BATCH_ROWS)
    stored = sm.rechunk(
        mio.iter_rows(store, NGRAM_VOCABULARY, None, COMPARED), mio.MERGE_BATCH_ROWS
    )
    row = 0
    try:
        for want, got in itertools.zip_longest(merged, stored):
            if want is None or got is None or want.num_rows != got.num_rows:
                problems.append(
                    f"ngram_vocabulary: {'more' if want is None else 'fewer'} rows than the "
                    f"merge of ngram_index shards {','.join(shards)}"
                )
                break
            for name in layers:
                layers[name].append(got.column(name).to_numpy())
            for field in COMPARED:
                if not want.column(field).equals(got.column(field)):
                    a = want.column(field).to_numpy(zero_copy_only=False)
                    b = got.column(field).to_numpy(zero_copy_only=False)
                    i = int(np.flatnonzero(a != b)[0])
                    problems.append(
                        f"ngram_vocabulary row {row + i} ({got.column('n')[i].as_py()}-gram "
                        f"{got.column('key')[i].as_py()!r}): field {field} {b[i]!r} != "
                        f"{a[i]!r} in the merge of the shards"
                    )
                    break
            if problems:
                break
            row += got.num_rows
    except ContractError as exc:
        problems.append(str(exc))
    columns = {k: np.concatenate(v) if v else np.zeros(0, np.int8) for k, v in layers.items()}
    return problems, columns


def streamed_lookup_problems(store: Warehouse, columns: dict) -> list[str]:
    """:func:`lookup_problems` on the streamed (n, reg, run) of every vocabulary row."""
    lookup, p = io.read_lookup(store)
    rows = pa.table(
        {
            "n": pa.array(columns["n"].astype(np.int8)),
            "reg": pa.array(columns["reg"].astype(np.int32)),
            "run": pa.array(columns["run"].astype(np.int8)),
        }
    )
    return lookup_problems(rows, lookup, p)


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
    additional_deps=[ngram_index, blt_patches],
    description=(
        "Streamed (a batch per shard in memory, never the corpus): each ngram_index shard's "
        "hashes are its keys' and its count totals per order equal blt_patches' (patches, "
        "patches + articles, patches); the vocabulary equals the k-way merge of the shards row "
        "by row (keys, hashes, reg/run, added counts); the bit lookup covers each row exactly "
        "once at the row's own bit."
    ),
    blocking=True,
)
def ngram_vocabulary_merge_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    _, p = io.read_lookup(store)
    shards = store.partitions(NGRAM_INDEX.name)
    problems = [x for key in shards for x in shard_problems(store, key, p)]
    merge, columns = merge_law_problems(store, shards, p)
    problems += merge
    if not merge:
        problems += streamed_lookup_problems(store, columns)
    n = columns["n"]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "p": p,
            "rows": int(n.size),
            "distinct_per_order": str([int((n == k).sum()) for k in ng.ORDERS]),
            "shards": ",".join(shards),
            "method": "streamed: k-way merge of the shards vs the stored rows, batch by batch",
            **report.problem_counts(problems),
        },
    )
