"""blt_patches -> ngram_index / article_hllsets / adjacency -> ngram_vocabulary / adjacency_merged.

The HLLSet n-gram system over BLT patches ("ingest once, restore any time").  The maths lives in
``sphere_assets.compute`` (``hllset``, ``ngrams``, ``adjacency``, ``restore``); this module reads
the warehouse, calls it, writes, measures and checks.

* ``ngram_index`` (shard): distinct 1-, 2-, 3-grams of the shard's patch sequences with key,
  hash, reg, run (for the configured P) and count.
* ``ngram_vocabulary`` (global): every shard's rows merged by key bytes (counts added — no
  per-shard ids, so the merge is associative and commutative) plus ``lookup.safetensors``, the
  CSR ``bit -> rows`` per layer that restore uses.
* ``article_hllsets`` (shard): one HLLSet per article and per span of ``span_patches`` patches
  (each span padded with _START_/_END_ as its own sequence), layers as binary columns plus the
  Horvitz-Thompson cardinality of each layer.
* ``adjacency`` (shard) / ``adjacency_merged`` (global): the De Bruijn patch graph (2-gram
  nodes, 3-gram edges) as a node table (Parquet) and CSR (``csr.safetensors``); the merge adds
  counts and recomputes the weights, which makes it equal to one build over the whole corpus.
  Beside the CSR, ``context.safetensors`` holds the counts of the shard's patch n-grams of
  order 3..N (``hll.context_order``, :mod:`sphere_assets.lib.sketch.context_model`), merged the
  same way; restore ranks candidate orderings with them.

Settings (P, span length, smoothing α) come from the ``hll`` resource
(:class:`sphere_assets.ngrams.settings.HllSetResource`, env ``SPHERE_HLL_P`` / ``SPHERE_HLL_SPAN``).
:func:`load_restore_index` and :func:`load_hllset` read what restore needs (CLI:
``sphere restore``).
"""

import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.core.metadata import preview_markdown, row_metadata
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.ngrams import contract as ngc
from sphere_assets.ngrams.contract import (
    ARTICLE_HLLSETS_SCHEMA,
    NGRAM_INDEX_SCHEMA,
)
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse, WarehouseResource

PATCHES = "blt_patches"
INDEX = "ngram_index"
VOCABULARY = "ngram_vocabulary"
HLLSETS = "article_hllsets"
ADJACENCY = "adjacency"
ADJACENCY_MERGED = "adjacency_merged"
LOOKUP_STEM = "lookup"
CSR_STEM = "csr"
CONTEXT_STEM = "context"
LOOKUP_FORMAT = "sphere.ngram_vocabulary.lookup/v1"
# bytes of HLLSet words held in memory at once while building article_hllsets
HLLSET_BATCH_BYTES = 64 << 20
QUALITY_SPANS = 40
QUALITY_MAX_SPAN = 64
QUALITY_TARGET = 0.95
GROUP = "ngrams"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_patch_sequences(store: Warehouse, shard: str) -> tuple[list[str], pa.Array, np.ndarray]:
    """(article ids, patches, offsets) of a blt_patches shard, articles in id order.

    Raises a ContractError naming the shard and article when an article's patch_index is not
    exactly 0..n-1.
    """
    table = store.read_table(PATCHES, shard, columns=["article_id", "patch_index", "patch"])
    table = table.sort_by([("article_id", "ascending"), ("patch_index", "ascending")])
    ids = table.column("article_id").combine_chunks()
    n = len(ids)
    if n == 0:
        return [], pa.array([], pa.binary()), np.zeros(1, np.int64)
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [n]]))
    expected = np.arange(n) - np.repeat(starts, lengths)
    got = table.column("patch_index").to_numpy()
    bad = np.flatnonzero(got != expected)
    if bad.size:
        article = ids[int(bad[0])].as_py()
        raise ContractError(
            PATCHES,
            shard,
            "patch_index",
            f"article {article!r}: patch_index {int(got[bad[0]])} where {int(expected[bad[0]])} "
            "was expected (an article's patches must be numbered 0..n-1 without gaps)",
        )
    article_ids = ids.take(pa.array(starts)).to_pylist()
    return article_ids, table.column("patch").combine_chunks(), ng.sequence_offsets(lengths)


def index_rows(table: ng.NgramTable, p: int) -> pa.Table:
    """Contract rows (n, key, hash, reg, run, count) of a table, layer by layer."""
    parts = []
    for n in ng.ORDERS:
        hashes = table.hashes[n - 1]
        reg, run = hs.reg_run(hashes, p)
        parts.append(
            pa.table(
                {
                    "n": pa.array(np.full(hashes.size, n, np.int8)),
                    "key": table.keys(n),
                    "hash": pa.array(hashes, type=pa.uint64()),
                    "reg": pa.array(reg.astype(np.int32)),
                    "run": pa.array(run.astype(np.int8)),
                    "count": pa.array(table.counts[n - 1].astype(np.int64)),
                },
                schema=NGRAM_INDEX_SCHEMA,
            )
        )
    return pa.concat_tables(parts)


def table_from_rows(rows: pa.Table) -> ng.NgramTable:
    """NgramTable from stored (n, key, count[, hash]) rows; equal (n, key) rows are summed."""
    table = ng.table_from_keys(
        rows.column("n").to_numpy(),
        rows.column("key").combine_chunks(),
        rows.column("count").to_numpy(),
    )
    return table


def _shards_on_disk(store: Warehouse, asset: str, log=None) -> tuple[list[str], list[str]]:
    """(shards present, configured shards missing) of ``asset``; at least one must exist.

    A global merge covers the shards that are materialized; missing ones are reported in the
    metadata (``missing_shards``) and the log, and a later run after they exist replaces the
    merge (the automation requests it when a shard changes).
    """
    present = store.partitions(asset)
    if not present:
        raise ContractError(asset, None, "<partitions>", "no shard is materialized yet")
    missing = [k for k in shard_partitions.get_partition_keys() if k not in set(present)]
    if missing and log is not None:
        log.warning(f"{asset}: shards {missing} are not materialized; merging {present}")
    return present, missing


# ---------------------------------------------------------------------------------------------
# ngram_index (shard)
# ---------------------------------------------------------------------------------------------


def build_ngram_index(store: Warehouse, shard: str, p: int) -> dict:
    t0 = time.perf_counter()
    article_ids, patches, offsets = read_patch_sequences(store, shard)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    indexed = ng.index_sequences(patches, offsets)
    rows = index_rows(indexed.table, p)
    seconds = time.perf_counter() - t0
    with store.partition_writer(INDEX, shard) as writer:
        writer.write_table(rows)
    occurrences = indexed.occurrences.total
    return {
        "shard": shard,
        "articles": len(article_ids),
        "patches": len(patches),
        "occurrences": occurrences,
        "distinct": [indexed.table.size(n) for n in ng.ORDERS],
        "rows": rows.num_rows,
        "seconds": seconds,
        "read_seconds": t_read,
        "preview": rows.slice(0, 5),
    }


@dg.asset(
    deps=[dg.AssetDep(PATCHES)],
    partitions_def=shard_partitions,
    group_name=GROUP,
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
    stats = [build_ngram_index(store, key, hll.p) for key in keys]
    occurrences = sum(s["occurrences"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    distinct = np.sum([s["distinct"] for s in stats], axis=0)
    rows = sum(s["rows"] for s in stats)
    context.log.info(
        f"ngram_index shards {keys}: {occurrences:,} occurrences -> {rows:,} rows in "
        f"{seconds:.2f}s ({occurrences / max(seconds, 1e-9) / 1e6:.2f} M occurrences/s)"
    )
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ngc.NGRAM_INDEX, rows),
            **hll.metadata(),
            "partitions_in_run": ",".join(keys),
            "articles": sum(s["articles"] for s in stats),
            "patches": sum(s["patches"] for s in stats),
            "occurrences": occurrences,
            "distinct_1grams": int(distinct[0]),
            "distinct_2grams": int(distinct[1]),
            "distinct_3grams": int(distinct[2]),
            "seconds": round(seconds, 4),
            "occurrences_per_second": round(occurrences / max(seconds, 1e-9), 1),
            "preview": preview_markdown(
                stats[0]["preview"], ["n", "key", "hash", "reg", "run", "count"]
            ),
            "path": dg.MetadataValue.path(str(store.partition_dir(INDEX, keys[0]))),
        }
    )


@dg.asset_check(
    asset=ngram_index,
    additional_deps=[dg.AssetKey(PATCHES)],
    description=(
        "Per shard: counts add up to the occurrences implied by blt_patches (Σ1 = patches, "
        "Σ2 = patches + articles, Σ3 = patches), (n, key) is unique, and hash/reg/run of a "
        "sample of rows equal mmh3.hash64 of the key recomputed in Python."
    ),
    blocking=True,
)
def ngram_index_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, hll: HllSetResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, INDEX)
    problems: list[str] = []
    for key in keys:
        rows = store.read_table(INDEX, key)
        patches = store.read_table(PATCHES, key, columns=["article_id"])
        n_patches = patches.num_rows
        n_articles = len(pc.unique(patches.column("article_id")))
        n = rows.column("n").to_numpy()
        counts = rows.column("count").to_numpy()
        sums = [int(counts[n == k].sum()) for k in ng.ORDERS]
        if sums != [n_patches, n_patches + n_articles, n_patches]:
            problems.append(
                f"shard {key}: count sums {sums} vs patches {n_patches}, articles {n_articles}"
            )
        if (counts <= 0).any():
            problems.append(f"shard {key}: non-positive counts")
        if rows.group_by(["n", "key"]).aggregate([]).num_rows != rows.num_rows:
            problems.append(f"shard {key}: duplicate (n, key) rows")
        sample = (
            rows.slice(0, 500).to_pylist() + rows.slice(max(rows.num_rows - 500, 0)).to_pylist()
        )
        for r in sample:
            h = hs.hash64(r["key"])
            reg, run = hs.reg_run(np.array([h], np.uint64), hll.p)
            if (h, int(reg[0]), int(run[0])) != (r["hash"], r["reg"], r["run"]):
                problems.append(f"shard {key}: {r['n']}-gram {r['key']!r} has wrong hash/reg/run")
                break
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "shards": ",".join(keys),
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
    )


# ---------------------------------------------------------------------------------------------
# ngram_vocabulary (global)
# ---------------------------------------------------------------------------------------------


def lookup_tensors(rows: pa.Table, p: int) -> dict[str, np.ndarray]:
    """Per layer: ``indptr_n`` over bits and ``rows_n`` = Parquet row numbers sorted by bit."""
    n = rows.column("n").to_numpy()
    bits = (
        rows.column("reg").to_numpy().astype(np.int64) * hs.WORD_BITS
        + rows.column("run").to_numpy()
    )
    out = {}
    for order in ng.ORDERS:
        sel = np.flatnonzero(n == order)
        indptr, local = rs.bit_lookup(bits[sel], p)
        out[f"indptr_{order}"] = indptr
        out[f"rows_{order}"] = sel[local].astype(np.int64)
    return out


@dg.asset(
    deps=[dg.AssetDep(INDEX, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP,
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
    shards, missing = _shards_on_disk(store, INDEX, context.log)
    t0 = time.perf_counter()
    parts = [store.read_table(INDEX, key, columns=["n", "key", "count"]) for key in shards]
    merged = table_from_rows(pa.concat_tables(parts))
    rows = index_rows(merged, hll.p)
    lookup = lookup_tensors(rows, hll.p)
    seconds = time.perf_counter() - t0
    with store.partition_writer(VOCABULARY, None) as writer:
        writer.write_table(rows)
        writer.write_tensors(
            LOOKUP_STEM,
            lookup,
            {
                "format": LOOKUP_FORMAT,
                "p": str(hll.p),
                "bit": "reg*32+run",
                "shards": ",".join(shards),
            },
        )
    sizes = [merged.size(n) for n in ng.ORDERS]
    top = rows.filter(pc.equal(rows.column("n"), 1)).sort_by([("count", "descending")]).slice(0, 8)
    context.log.info(
        f"ngram_vocabulary: {len(shards)} shards -> {sizes} distinct n-grams in {seconds:.2f}s"
    )
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ngc.NGRAM_VOCABULARY, rows.num_rows),
            **hll.metadata(),
            "shards": ",".join(shards),
            "missing_shards": ",".join(missing) or "-",
            "distinct_1grams": sizes[0],
            "distinct_2grams": sizes[1],
            "distinct_3grams": sizes[2],
            "occurrences": int(pc.sum(rows.column("count")).as_py() or 0),
            "seconds": round(seconds, 4),
            "top_patches": preview_markdown(top, ["key", "count"], rows=8),
            "path": dg.MetadataValue.path(str(store.partition_dir(VOCABULARY, None))),
        }
    )


@dg.asset_check(
    asset=ngram_vocabulary,
    additional_deps=[dg.AssetKey(INDEX)],
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
    rows = store.read_table(VOCABULARY, None)
    lookup, meta = store.read_tensors(VOCABULARY, None, LOOKUP_STEM)
    p = int(meta["p"])
    problems: list[str] = []
    n = rows.column("n").to_numpy()
    counts = rows.column("count").to_numpy()
    totals = np.zeros(3, np.int64)
    shard_keys = []
    for key in store.partitions(INDEX):
        part = store.read_table(INDEX, key, columns=["n", "key", "count"])
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
    bits = rows.column("reg").to_numpy().astype(np.int64) * 32 + rows.column("run").to_numpy()
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
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "p": p,
            "rows": rows.num_rows,
            "count_totals": str(merged_totals),
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
    )


# ---------------------------------------------------------------------------------------------
# article_hllsets (shard)
# ---------------------------------------------------------------------------------------------


def hllset_rows(
    article_ids: list[str], patches: pa.Array, offsets: np.ndarray, p: int, span: int
) -> pa.Table:
    """Rows for a batch of articles: each article (span_index -1) followed by its spans."""
    m = 1 << p
    n_art = len(article_ids)
    seq_bounds = [offsets]
    owner = [np.arange(n_art)]
    span_index = [np.full(n_art, -1, np.int64)]
    if span > 0:
        bounds, s_owner, s_index = ng.span_offsets(offsets, span)
        seq_bounds.append(bounds)
        owner.append(s_owner)
        span_index.append(s_index)
    words, starts, lengths = [], [], []
    for bounds in seq_bounds:
        indexed = ng.index_sequences(patches, bounds)
        words.append(ng.sequence_hllsets(indexed, bounds.size - 1, p))
        starts.append(bounds[:-1])
        lengths.append(np.diff(bounds))
    words_all = np.concatenate(words)
    owner_all = np.concatenate(owner)
    index_all = np.concatenate(span_index)
    order = np.lexsort((index_all, owner_all))  # article row first, then its spans
    words_all = words_all[order]
    owner_all = owner_all[order]
    index_all = index_all[order]
    start_all = (np.concatenate(starts) - offsets[:-1][np.concatenate(owner)])[order]
    length_all = np.concatenate(lengths)[order]
    cards = hs.cardinality(words_all, p).reshape(-1, 3)
    layer_bytes = [
        pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4 * m),
            words_all.shape[0],
            [None, pa.py_buffer(words_all[:, i].astype("<u4").tobytes())],
        ).cast(pa.binary())
        for i in range(3)
    ]
    return pa.table(
        {
            "article_id": pa.array([article_ids[i] for i in owner_all.tolist()], pa.string()),
            "span_index": pa.array(index_all.astype(np.int32)),
            "patch_start": pa.array(start_all.astype(np.int32)),
            "patch_count": pa.array(length_all.astype(np.int32)),
            "p": pa.array(np.full(owner_all.size, p, np.int8)),
            "layer1": layer_bytes[0],
            "layer2": layer_bytes[1],
            "layer3": layer_bytes[2],
            "card1": pa.array(cards[:, 0]),
            "card2": pa.array(cards[:, 1]),
            "card3": pa.array(cards[:, 2]),
        },
        schema=ARTICLE_HLLSETS_SCHEMA,
    )


def article_batches(offsets: np.ndarray, p: int, span: int) -> list[tuple[int, int]]:
    """Article index ranges whose HLLSets (articles + spans) fit HLLSET_BATCH_BYTES."""
    per_set = 3 * 4 * (1 << p)
    budget = max(1, HLLSET_BATCH_BYTES // per_set)
    lengths = np.diff(offsets)
    sets = 1 + (-(-lengths // span) if span > 0 else np.zeros_like(lengths))
    out, start, used = [], 0, 0
    for i, s in enumerate(sets.tolist()):
        if used and used + s > budget:
            out.append((start, i))
            start, used = i, 0
        used += s
    if start < lengths.size:
        out.append((start, lengths.size))
    return out


def build_article_hllsets(store: Warehouse, shard: str, p: int, span: int) -> dict:
    t0 = time.perf_counter()
    article_ids, patches, offsets = read_patch_sequences(store, shard)
    rows = 0
    spans = 0
    preview = None
    with store.partition_writer(HLLSETS, shard) as writer, writer.table_stream() as stream:
        for a, b in article_batches(offsets, p, span):
            base = offsets[a]
            sub = patches.slice(int(base), int(offsets[b] - base))
            table = hllset_rows(article_ids[a:b], sub, offsets[a : b + 1] - base, p, span)
            stream.write(table)
            rows += table.num_rows
            spans += int(pc.sum(pc.greater_equal(table.column("span_index"), 0)).as_py() or 0)
            if preview is None:
                preview = table.select(
                    [
                        "article_id",
                        "span_index",
                        "patch_start",
                        "patch_count",
                        "card1",
                        "card2",
                        "card3",
                    ]
                )
        if preview is None:
            stream.write(ARTICLE_HLLSETS_SCHEMA.empty_table())
    return {
        "shard": shard,
        "articles": len(article_ids),
        "spans": spans,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "preview": preview,
    }


@dg.asset(
    deps=[dg.AssetDep(PATCHES)],
    partitions_def=shard_partitions,
    group_name=GROUP,
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
    stats = [build_article_hllsets(store, key, hll.p, hll.span_patches) for key in keys]
    rows = sum(s["rows"] for s in stats)
    previews = [s["preview"] for s in stats if s["preview"] is not None]
    metadata = {
        **row_metadata(ngc.ARTICLE_HLLSETS, rows),
        **hll.metadata(),
        "partitions_in_run": ",".join(keys),
        "articles": sum(s["articles"] for s in stats),
        "spans": sum(s["spans"] for s in stats),
        "seconds": round(sum(s["seconds"] for s in stats), 4),
        "path": dg.MetadataValue.path(str(store.partition_dir(HLLSETS, keys[0]))),
    }
    if previews:
        metadata["preview"] = preview_markdown(
            pa.concat_tables(previews),
            ["article_id", "span_index", "patch_start", "patch_count", "card1", "card2", "card3"],
            rows=8,
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=article_hllsets,
    additional_deps=[dg.AssetKey(PATCHES)],
    description=(
        "Per shard: the 1-gram layer of every article equals the union of its spans' 1-gram "
        "layers; every span's HLLSet equals the one recomputed from its blt_patches (first 50 "
        "spans, hashing each key with mmh3 in Python); cardinalities are finite."
    ),
    blocking=True,
)
def article_hllsets_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, HLLSETS)
    problems: list[str] = []
    checked = 0
    for key in keys:
        table = store.read_table(HLLSETS, key)
        if table.num_rows == 0:
            continue
        article_ids, patches, offsets = read_patch_sequences(store, key)
        position = {a: i for i, a in enumerate(article_ids)}
        rows = table.to_pylist()
        union: dict[str, np.ndarray] = {}
        whole: dict[str, np.ndarray] = {}
        for r in rows:
            w1 = np.frombuffer(r["layer1"], "<u4")
            if r["span_index"] < 0:
                whole[r["article_id"]] = w1
            else:
                union[r["article_id"]] = union.get(r["article_id"], 0) | w1
            if not all(np.isfinite(r[c]) for c in ("card1", "card2", "card3")):
                problems.append(f"shard {key}: non-finite cardinality for {r['article_id']}")
        for a, w in whole.items():
            if a in union and not np.array_equal(union[a], w):
                problems.append(f"shard {key}: article {a!r} layer1 != union of its spans")
        spans = [r for r in rows if r["span_index"] >= 0][:50]
        for r in spans:
            i = position.get(r["article_id"])
            if i is None:
                problems.append(f"shard {key}: article {r['article_id']!r} not in blt_patches")
                continue
            start = int(offsets[i]) + r["patch_start"]
            seq = patches.slice(start, r["patch_count"]).to_pylist()
            ref = ng.reference_keys(seq)
            expected = hs.HLLSet.from_hashes(
                [np.array([hs.hash64(k) for k in ref[n]], np.uint64) for n in ng.ORDERS], r["p"]
            )
            got = hs.HLLSet.from_layer_bytes([r["layer1"], r["layer2"], r["layer3"]], r["p"])
            checked += 1
            if got != expected:
                problems.append(f"shard {key}: span {r['article_id']!r}#{r['span_index']} differs")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "shards": ",".join(keys),
            "spans_recomputed": checked,
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
    )


# ---------------------------------------------------------------------------------------------
# adjacency (shard) and adjacency_merged (global)
# ---------------------------------------------------------------------------------------------


def write_adjacency(
    store: Warehouse,
    asset: str,
    partition: str | None,
    graph: adj.Adjacency,
    context: cm.ContextCounts,
) -> None:
    with store.partition_writer(asset, partition) as writer:
        writer.write_table(graph.node_table())
        writer.write_tensors(CSR_STEM, graph.tensors(), graph.tensor_metadata())
        writer.write_tensors(CONTEXT_STEM, context.tensors(), context.tensor_metadata())


def load_context(store: Warehouse, asset: str, partition: str | None) -> cm.ContextCounts | None:
    """The context counts of an adjacency partition (None if it was written without them)."""
    if not (store.partition_dir(asset, partition) / f"{CONTEXT_STEM}.safetensors").exists():
        return None
    arrays, meta = store.read_tensors(asset, partition, CONTEXT_STEM)
    try:
        return cm.ContextCounts.from_tensors(arrays, meta)
    except ValueError as exc:
        raise ContractError(asset, partition, CONTEXT_STEM, str(exc)) from exc


def shard_context(store: Warehouse, shard: str, max_order: int) -> cm.ContextCounts:
    """Context counts of a blt_patches shard's patch sequences."""
    _, patches, offsets = read_patch_sequences(store, shard)
    return cm.count_patch_contexts(patches, offsets, max_order)


def load_adjacency(store: Warehouse, asset: str, partition: str | None) -> adj.Adjacency:
    nodes = store.read_table(asset, partition)
    arrays, meta = store.read_tensors(asset, partition, CSR_STEM)
    if arrays["indptr"].size != nodes.num_rows + 1:
        raise ContractError(
            asset,
            partition,
            f"{CSR_STEM}.indptr",
            f"{arrays['indptr'].size} entries for {nodes.num_rows} nodes",
        )
    return adj.from_stored(
        nodes,
        arrays["indptr"],
        arrays["indices"],
        arrays["counts"],
        arrays["weights"],
        float(meta["alpha"]),
    )


def adjacency_summary(graph: adj.Adjacency) -> dict:
    outdeg = graph.outdeg
    return {
        "nodes": graph.n_nodes,
        "edges": graph.n_edges,
        "alpha": graph.alpha,
        "max_outdeg": int(outdeg.max()) if outdeg.size else 0,
        "mean_outdeg": round(float(outdeg.mean()), 4) if outdeg.size else 0.0,
        "branching_nodes": int((outdeg > 1).sum()),
    }


@dg.asset(
    deps=[dg.AssetDep(INDEX), dg.AssetDep(PATCHES)],
    partitions_def=shard_partitions,
    group_name=GROUP,
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
    summaries = []
    t0 = time.perf_counter()
    contexts = 0
    for key in keys:
        rows = store.read_table(INDEX, key, columns=["n", "key", "count"])
        graph = adj.build(table_from_rows(rows), hll.alpha)
        context_counts = shard_context(store, key, hll.context_order)
        write_adjacency(store, ADJACENCY, key, graph, context_counts)
        summaries.append(adjacency_summary(graph))
        contexts += context_counts.size
    seconds = time.perf_counter() - t0
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ngc.ADJACENCY, sum(s["nodes"] for s in summaries)),
            **hll.metadata(),
            "partitions_in_run": ",".join(keys),
            "nodes": sum(s["nodes"] for s in summaries),
            "edges": sum(s["edges"] for s in summaries),
            "branching_nodes": sum(s["branching_nodes"] for s in summaries),
            "max_outdeg": max(s["max_outdeg"] for s in summaries),
            "context_entries": contexts,
            "seconds": round(seconds, 4),
            "path": dg.MetadataValue.path(str(store.partition_dir(ADJACENCY, keys[0]))),
        }
    )


def csr_problems(graph: adj.Adjacency) -> list[str]:
    problems = []
    indptr, indices = graph.indptr, graph.indices
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        problems.append("indptr is not a monotone 0..E offset array")
        return problems
    if indices.size and (indices.min() < 0 or indices.max() >= graph.n_nodes):
        problems.append("edge target out of range")
    if np.any(graph.counts <= 0) or np.any(graph.node_counts <= 0):
        problems.append("non-positive counts")
    if not np.all(np.isfinite(graph.weights)) or np.any(graph.weights > 1e-12):
        problems.append("weights must be finite and <= 0")
    src = graph.edge_sources()
    if not np.array_equal(graph.nodes[src][:, 1], graph.nodes[indices][:, 0]):
        problems.append("an edge (a,b)->(c,d) has b != c")
    has_out = graph.outdeg > 0
    if has_out.any():
        sums = np.add.reduceat(np.exp(graph.weights), indptr[:-1][has_out])
        if not np.allclose(sums, 1.0, atol=1e-9):
            problems.append("smoothed transition probabilities do not sum to 1")
    return problems


@dg.asset_check(
    asset=adjacency,
    additional_deps=[dg.AssetKey(INDEX)],
    description=(
        "Per shard: CSR well formed (monotone indptr, targets in range, edge (a,b)->(b,c)), "
        "counts positive, weights finite and <= 0 with transition probabilities summing to 1, "
        "and node/edge counts equal the shard's 2-/3-gram counts in ngram_index."
    ),
    blocking=True,
)
def adjacency_csr_valid(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, ADJACENCY)
    problems: list[str] = []
    for key in keys:
        graph = load_adjacency(store, ADJACENCY, key)
        problems += [f"shard {key}: {p}" for p in csr_problems(graph)]
        rows = store.read_table(INDEX, key, columns=["n", "count"])
        n = rows.column("n").to_numpy()
        counts = rows.column("count").to_numpy()
        if (int(counts[n == 2].sum()), int(counts[n == 3].sum())) != (
            int(graph.node_counts.sum()),
            int(graph.counts.sum()),
        ):
            problems.append(f"shard {key}: F2/F3 totals differ from ngram_index")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "shards": ",".join(keys),
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
    )


@dg.asset(
    deps=[dg.AssetDep(ADJACENCY, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP,
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
    shards, missing = _shards_on_disk(store, ADJACENCY, context.log)
    t0 = time.perf_counter()
    graph = adj.merge([load_adjacency(store, ADJACENCY, key) for key in shards], hll.alpha)
    parts = [load_context(store, ADJACENCY, key) for key in shards]
    stale = [key for key, part in zip(shards, parts, strict=True) if part is None]
    if stale:
        raise ContractError(
            ADJACENCY,
            ",".join(stale),
            CONTEXT_STEM,
            "no context.safetensors (written by an older version): re-materialize adjacency",
        )
    context_counts = cm.merge(parts)
    write_adjacency(store, ADJACENCY_MERGED, None, graph, context_counts)
    summary = adjacency_summary(graph)
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ngc.ADJACENCY_MERGED, summary["nodes"]),
            **hll.metadata(),
            **summary,
            "context_entries": context_counts.size,
            "context_order": context_counts.max_order,
            "shards": ",".join(shards),
            "missing_shards": ",".join(missing) or "-",
            "seconds": round(time.perf_counter() - t0, 4),
            "path": dg.MetadataValue.path(str(store.partition_dir(ADJACENCY_MERGED, None))),
        }
    )


@dg.asset_check(
    asset=adjacency_merged,
    additional_deps=[dg.AssetKey(VOCABULARY), dg.AssetKey(PATCHES)],
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
    merged = load_adjacency(store, ADJACENCY_MERGED, None)
    vocab = store.read_table(VOCABULARY, None, columns=["n", "key", "count"])
    whole = adj.build(table_from_rows(vocab), merged.alpha)
    problems = csr_problems(merged)
    equal = merged.equal(whole)
    if not equal:
        problems.append("merged graph differs from the whole-corpus build")
    merged_context = load_context(store, ADJACENCY_MERGED, None)
    sequences = [read_patch_sequences(store, key) for key in store.partitions(PATCHES)]
    all_patches = pa.concat_arrays([patches for _, patches, _ in sequences])
    offsets = ng.sequence_offsets(np.concatenate([np.diff(offs) for _, _, offs in sequences]))
    context_equal = merged_context is not None and merged_context.equal(
        cm.count_patch_contexts(all_patches, offsets, merged_context.max_order)
    )
    if not context_equal:
        problems.append("merged context counts differ from counting the whole corpus at once")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            **adjacency_summary(merged),
            "equal_to_whole_build": equal,
            "context_equal_to_whole_count": context_equal,
            "problems": "; ".join(problems) or "-",
        },
    )


# ---------------------------------------------------------------------------------------------
# Restore: loaders and the quality check
# ---------------------------------------------------------------------------------------------


def load_vocabulary_table(store: Warehouse) -> ng.NgramTable:
    """The merged vocabulary as an NgramTable, with the stored hashes (validated on a sample)."""
    rows = store.read_table(VOCABULARY, None, columns=["n", "key", "hash", "count"])
    table = table_from_rows(rows)
    n = rows.column("n").to_numpy()
    hashes = rows.column("hash").to_numpy()
    stored = tuple(hashes[n == k].astype(np.uint64) for k in ng.ORDERS)
    if [s.size for s in stored] != [table.size(k) for k in ng.ORDERS]:
        raise ContractError(VOCABULARY, None, "key", "rows are not distinct per (n, key)")
    for k in ng.ORDERS:  # rows are stored in canonical order: spot-check the alignment
        keys = table.keys(k)
        probe = np.unique(np.linspace(0, max(len(keys) - 1, 0), num=min(len(keys), 64)).astype(int))
        if probe.size and not np.array_equal(
            hs.hash64_keys(keys.take(pa.array(probe))), stored[k - 1][probe]
        ):
            raise ContractError(
                VOCABULARY, None, "hash", f"{k}-gram hashes do not match their keys"
            )
    table.__dict__["hashes"] = stored  # cached_property slot: no need to re-hash every key
    return table


def load_restore_index(store: Warehouse, p: int | None = None) -> rs.RestoreIndex:
    """RestoreIndex from ngram_vocabulary (+ adjacency_merged weights and context counts when
    materialized)."""
    table = load_vocabulary_table(store)
    if p is None:
        _, meta = store.read_tensors(VOCABULARY, None, LOOKUP_STEM)
        p = int(meta["p"])
    graph = context_counts = None
    if store.exists(ADJACENCY_MERGED, None):
        graph = load_adjacency(store, ADJACENCY_MERGED, None)
        context_counts = load_context(store, ADJACENCY_MERGED, None)
    return rs.RestoreIndex.build(table, p, graph, context=context_counts)


def load_hllset(store: Warehouse, article_id: str, span_index: int = -1) -> hs.HLLSet:
    """An HLLSet row of article_hllsets (searching every shard on disk)."""
    return load_stored_span(store, article_id, span_index)[0]


def load_stored_span(
    store: Warehouse, article_id: str, span_index: int = -1
) -> tuple[hs.HLLSet, int]:
    """(HLLSet, patch_count) of an article_hllsets row (searching every shard on disk)."""
    for key in store.partitions(HLLSETS):
        table = store.read_table(HLLSETS, key)
        mask = pc.and_(
            pc.equal(table.column("article_id"), article_id),
            pc.equal(table.column("span_index"), span_index),
        )
        hit = table.filter(mask)
        if hit.num_rows:
            r = hit.slice(0, 1).to_pylist()[0]
            layers = [r["layer1"], r["layer2"], r["layer3"]]
            return hs.HLLSet.from_layer_bytes(layers, r["p"]), int(r["patch_count"])
    raise KeyError(
        f"article_hllsets has no row for article {article_id!r}, span_index {span_index}"
    )


@dg.asset_check(
    asset=adjacency_merged,
    additional_deps=[dg.AssetKey(VOCABULARY), dg.AssetKey(HLLSETS), dg.AssetKey(PATCHES)],
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
    shards = store.partitions(HLLSETS)
    spans = []
    for key in shards:
        table = store.read_table(
            HLLSETS,
            key,
            columns=[
                "article_id",
                "span_index",
                "patch_start",
                "patch_count",
                "p",
                "layer1",
                "layer2",
                "layer3",
            ],
        )
        table = table.filter(
            pc.and_(
                pc.greater_equal(table.column("span_index"), 0),
                pc.less_equal(table.column("patch_count"), QUALITY_MAX_SPAN),
            )
        )
        if table.num_rows:
            spans.append((key, table))
    if not spans:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no span HLLSets to restore"})
    total = sum(t.num_rows for _, t in spans)
    stride = max(1, total // QUALITY_SPANS)
    p = int(spans[0][1].column("p")[0].as_py())
    index = load_restore_index(store, p)
    exact1 = exactk = roundtrip = n = 0
    latencies = []
    seen = 0
    for key, table in spans:
        article_ids, patches, offsets = read_patch_sequences(store, key)
        position = {a: i for i, a in enumerate(article_ids)}
        for r in table.to_pylist():
            seen += 1
            if (seen - 1) % stride or n >= QUALITY_SPANS:
                continue
            start = int(offsets[position[r["article_id"]]]) + r["patch_start"]
            truth = patches.slice(start, r["patch_count"]).to_pylist()
            h = hs.HLLSet.from_layer_bytes([r["layer1"], r["layer2"], r["layer3"]], r["p"])
            result = rs.restore(h, index, length=r["patch_count"])
            latencies.append(result.report.latency_ms)
            cands = [c.patches for c in result.candidates]
            n += 1
            exact1 += bool(cands) and cands[0] == truth
            exactk += truth in cands
            roundtrip += bool(cands) and ng.hllset_of_patches(cands[0], p) == h
    rate = exact1 / n
    return dg.AssetCheckResult(
        passed=bool(rate >= QUALITY_TARGET),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "spans": n,
            "p": p,
            "exact_at_1": round(rate, 4),
            "exact_at_k": round(exactk / n, 4),
            "round_trip": round(roundtrip / n, 4),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "latency_p95_ms": round(float(np.percentile(latencies, 95)), 3),
            "target_exact_at_1": QUALITY_TARGET,
        },
    )


ASSETS = [ngram_index, ngram_vocabulary, article_hllsets, adjacency, adjacency_merged]
CHECKS = [
    ngram_index_consistent,
    ngram_vocabulary_merge_consistent,
    article_hllsets_consistent,
    adjacency_csr_valid,
    adjacency_merged_equals_whole,
    restore_quality,
]
