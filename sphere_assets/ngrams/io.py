"""Reads and writes of the ngrams family, through the warehouse (the one storage layer).

* the input: blt_patches shards as patch sequences (:func:`read_patch_sequences`);
* each asset's rows encoded to / decoded from its contract (ngram_index / ngram_vocabulary rows
  <-> :class:`~sphere_assets.lib.sketch.ngrams.NgramTable`, article_hllsets rows <-
  :class:`~sphere_assets.lib.sketch.span_sets.SpanSets`, adjacency node table + CSR + context
  counts <-> :class:`~sphere_assets.lib.sketch.adjacency.Adjacency` /
  :class:`~sphere_assets.lib.sketch.context_model.ContextCounts`);
* the loaders of ``sphere restore`` (:func:`load_restore_index`, :func:`load_stored_span`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.lib.sketch.span_sets import SpanSets
from sphere_assets.ngrams.contract import (
    ADJACENCY_MERGED,
    ARTICLE_HLLSETS,
    ARTICLE_HLLSETS_SCHEMA,
    CONTEXT_STEM,
    CSR_STEM,
    LOOKUP_FORMAT,
    LOOKUP_STEM,
    NGRAM_INDEX,
    NGRAM_INDEX_SCHEMA,
    NGRAM_VOCABULARY,
)
from sphere_assets.patching.contract import BLT_PATCHES
from sphere_resources.contracts import PARQUET_PART_NAME, AssetContract, ContractError
from sphere_resources.integrity import DamagedFileError
from sphere_resources.store import Warehouse

HLLSET_PREVIEW_COLUMNS = [
    "article_id",
    "span_index",
    "patch_start",
    "patch_count",
    "card1",
    "card2",
    "card3",
]

# ---------------------------------------------------------------------------------------------
# blt_patches (input)
# ---------------------------------------------------------------------------------------------


def read_patch_sequences(store: Warehouse, shard: str) -> tuple[list[str], pa.Array, np.ndarray]:
    """(article ids, patches, offsets) of a blt_patches shard, articles in id order.

    Raises a ContractError naming the shard and article when an article's patch_index is not
    exactly 0..n-1.
    """
    table = store.read_table(
        BLT_PATCHES.name, shard, columns=["article_id", "patch_index", "patch"]
    )
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
            BLT_PATCHES.name,
            shard,
            "patch_index",
            f"article {article!r}: patch_index {int(got[bad[0]])} where {int(expected[bad[0]])} "
            "was expected (an article's patches must be numbered 0..n-1 without gaps)",
        )
    article_ids = ids.take(pa.array(starts)).to_pylist()
    return article_ids, table.column("patch").combine_chunks(), ng.sequence_offsets(lengths)


def read_patch_totals(store: Warehouse, shard: str) -> tuple[int, int]:
    """(patches, distinct articles) of a blt_patches shard."""
    patches = store.read_table(BLT_PATCHES.name, shard, columns=["article_id"])
    return patches.num_rows, len(pc.unique(patches.column("article_id")))


def shards_on_disk(store: Warehouse, asset: AssetContract, log=None) -> tuple[list[str], list[str]]:
    """(shards present, configured shards missing) of ``asset``; at least one must exist.

    A global merge covers the shards that are materialized; missing ones are reported in the
    metadata (``missing_shards``) and the log, and a later run after they exist replaces the
    merge (the automation requests it when a shard changes).
    """
    present = store.partitions(asset.name)
    if not present:
        raise ContractError(asset.name, None, "<partitions>", "no shard is materialized yet")
    # dagster (the partitions definition) only here: `sphere restore` imports this module
    from sphere_assets.core.partitions import shard_partitions

    missing = [k for k in shard_partitions.get_partition_keys() if k not in set(present)]
    if missing and log is not None:
        log.warning(f"{asset.name}: shards {missing} are not materialized; merging {present}")
    return present, missing


# ---------------------------------------------------------------------------------------------
# ngram_index / ngram_vocabulary rows
# ---------------------------------------------------------------------------------------------


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
    return ng.table_from_keys(
        rows.column("n").to_numpy(),
        rows.column("key").combine_chunks(),
        rows.column("count").to_numpy(),
    )


def row_bits(rows: pa.Table) -> np.ndarray:
    """HLLSet bit ``reg * 32 + run`` of every stored n-gram row."""
    return (
        rows.column("reg").to_numpy().astype(np.int64) * hs.WORD_BITS
        + rows.column("run").to_numpy()
    )


def read_index_rows(store: Warehouse, shard: str, columns: list[str] | None = None) -> pa.Table:
    return store.read_table(NGRAM_INDEX.name, shard, columns=columns)


def read_index_table(store: Warehouse, shards: list[str]) -> ng.NgramTable:
    """The ngram_index rows of ``shards`` as one NgramTable (counts of equal keys added)."""
    parts = [read_index_rows(store, key, columns=["n", "key", "count"]) for key in shards]
    return table_from_rows(pa.concat_tables(parts))


def write_index(store: Warehouse, shard: str, rows: pa.Table) -> None:
    with store.partition_writer(NGRAM_INDEX.name, shard) as writer:
        writer.write_table(rows)


def read_vocabulary_rows(store: Warehouse, columns: list[str] | None = None) -> pa.Table:
    return store.read_table(NGRAM_VOCABULARY.name, None, columns=columns)


def lookup_tensors(rows: pa.Table, p: int) -> dict[str, np.ndarray]:
    """Per layer: ``indptr_n`` over bits and ``rows_n`` = Parquet row numbers sorted by bit."""
    lookups = rs.layer_bit_lookups(rows.column("n").to_numpy(), row_bits(rows), p)
    out = {}
    for order, (indptr, row_numbers) in zip(ng.ORDERS, lookups, strict=True):
        out[f"indptr_{order}"] = indptr
        out[f"rows_{order}"] = row_numbers
    return out


def read_lookup(store: Warehouse) -> tuple[dict[str, np.ndarray], int]:
    """(lookup tensors, P) of ngram_vocabulary."""
    lookup, meta = store.read_tensors(NGRAM_VOCABULARY.name, None, LOOKUP_STEM)
    return lookup, int(meta["p"])


def write_vocabulary(
    store: Warehouse, rows: pa.Table, lookup: dict[str, np.ndarray], p: int, shards: list[str]
) -> None:
    with store.partition_writer(NGRAM_VOCABULARY.name, None) as writer:
        writer.write_table(rows)
        writer.write_tensors(
            LOOKUP_STEM,
            lookup,
            {"format": LOOKUP_FORMAT, "p": str(p), "bit": "reg*32+run", "shards": ",".join(shards)},
        )


def load_vocabulary_table(store: Warehouse) -> ng.NgramTable:
    """The merged vocabulary as an NgramTable, with the stored hashes (validated on a sample)."""
    rows = read_vocabulary_rows(store, columns=["n", "key", "hash", "count"])
    table = table_from_rows(rows)
    n = rows.column("n").to_numpy()
    hashes = rows.column("hash").to_numpy()
    stored = tuple(hashes[n == k].astype(np.uint64) for k in ng.ORDERS)
    if [s.size for s in stored] != [table.size(k) for k in ng.ORDERS]:
        raise ContractError(
            NGRAM_VOCABULARY.name, None, "key", "rows are not distinct per (n, key)"
        )
    for k in ng.ORDERS:  # rows are stored in canonical order: spot-check the alignment
        keys = table.keys(k)
        probe = np.unique(np.linspace(0, max(len(keys) - 1, 0), num=min(len(keys), 64)).astype(int))
        if probe.size and not np.array_equal(
            hs.hash64_keys(keys.take(pa.array(probe))), stored[k - 1][probe]
        ):
            raise ContractError(
                NGRAM_VOCABULARY.name, None, "hash", f"{k}-gram hashes do not match their keys"
            )
    return table.with_hashes(stored)  # no need to re-hash every key


# ---------------------------------------------------------------------------------------------
# article_hllsets rows
# ---------------------------------------------------------------------------------------------


def hllset_table(article_ids: list[str], sets: SpanSets) -> pa.Table:
    """Contract rows of a batch's sets (``sets.owner`` indexes ``article_ids``)."""
    layers = [
        pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4 * (1 << sets.p)), sets.size, [None, pa.py_buffer(sets.layer_bytes(i))]
        ).cast(pa.binary())
        for i in range(hs.NUM_LAYERS)
    ]
    return pa.table(
        {
            "article_id": pa.array([article_ids[i] for i in sets.owner.tolist()], pa.string()),
            "span_index": pa.array(sets.span_index.astype(np.int32)),
            "patch_start": pa.array(sets.patch_start.astype(np.int32)),
            "patch_count": pa.array(sets.patch_count.astype(np.int32)),
            "p": pa.array(np.full(sets.size, sets.p, np.int8)),
            "layer1": layers[0],
            "layer2": layers[1],
            "layer3": layers[2],
            "card1": pa.array(sets.cards[:, 0]),
            "card2": pa.array(sets.cards[:, 1]),
            "card3": pa.array(sets.cards[:, 2]),
        },
        schema=ARTICLE_HLLSETS_SCHEMA,
    )


def hllset_of_row(row: dict) -> hs.HLLSet:
    """The HLLSet of an article_hllsets row (as a Python dict)."""
    return hs.HLLSet.from_layer_bytes([row["layer1"], row["layer2"], row["layer3"]], row["p"])


@dataclass(frozen=True)
class HllsetsWritten:
    rows: int
    spans: int
    preview: pa.Table | None  # HLLSET_PREVIEW_COLUMNS of the first batch (None: no rows)


def write_article_hllsets(
    store: Warehouse, shard: str, tables: Iterable[pa.Table]
) -> HllsetsWritten:
    """Stream ``tables`` (batches of contract rows) into the shard's Parquet file."""
    rows = spans = 0
    preview = None
    with (
        store.partition_writer(ARTICLE_HLLSETS.name, shard) as writer,
        writer.table_stream() as stream,
    ):
        for table in tables:
            stream.write(table)
            rows += table.num_rows
            spans += int(pc.sum(pc.greater_equal(table.column("span_index"), 0)).as_py() or 0)
            if preview is None:
                preview = table.select(HLLSET_PREVIEW_COLUMNS)
        if preview is None:
            stream.write(ARTICLE_HLLSETS_SCHEMA.empty_table())
    return HllsetsWritten(rows, spans, preview)


def hllset_shards(store: Warehouse) -> list[str]:
    return store.partitions(ARTICLE_HLLSETS.name)


def read_hllset_rows(store: Warehouse, shard: str, columns: list[str] | None = None) -> pa.Table:
    return store.read_table(ARTICLE_HLLSETS.name, shard, columns=columns)


def read_span_rows(store: Warehouse, max_patches: int) -> list[tuple[str, pa.Table]]:
    """(shard, rows) of the span HLLSets (span_index >= 0) of at most ``max_patches`` patches,
    per shard that has any (layer columns included, cardinalities left out)."""
    out = []
    for key in hllset_shards(store):
        table = read_hllset_rows(
            store,
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
                pc.less_equal(table.column("patch_count"), max_patches),
            )
        )
        if table.num_rows:
            out.append((key, table))
    return out


def load_stored_span(
    store: Warehouse, article_id: str, span_index: int = -1
) -> tuple[hs.HLLSet, int]:
    """(HLLSet, patch_count) of an article_hllsets row (searching every shard on disk).

    Only the ``article_id``/``span_index`` columns of a shard are decoded to find the row, then
    the hit shard's batches up to that row: the HLLSet layers of other rows and shards (most of
    the asset's bytes once decoded) are never decoded; every file read is still verified.
    """
    for key in hllset_shards(store):
        ids = read_hllset_rows(store, key, columns=["article_id", "span_index"])
        mask = pc.and_(
            pc.equal(ids.column("article_id"), article_id),
            pc.equal(ids.column("span_index"), span_index),
        )
        hits = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if not hits.size:
            continue
        row, seen = int(hits[0]), 0
        for batch in store.iter_batches(ARTICLE_HLLSETS.name, key, batch_size=256):
            if row < seen + batch.num_rows:
                r = batch.slice(row - seen, 1).to_pylist()[0]
                return hllset_of_row(r), int(r["patch_count"])
            seen += batch.num_rows
    raise KeyError(
        f"article_hllsets has no row for article {article_id!r}, span_index {span_index}"
    )


# ---------------------------------------------------------------------------------------------
# adjacency / adjacency_merged: node table + csr.safetensors + context.safetensors
# ---------------------------------------------------------------------------------------------


def write_adjacency(
    store: Warehouse,
    asset: AssetContract,
    partition: str | None,
    graph: adj.Adjacency,
    context: cm.ContextCounts,
) -> None:
    with store.partition_writer(asset.name, partition) as writer:
        writer.write_table(graph.node_table())
        writer.write_tensors(CSR_STEM, graph.tensors(), graph.tensor_metadata())
        writer.write_tensors(CONTEXT_STEM, context.tensors(), context.tensor_metadata())


def load_adjacency(store: Warehouse, asset: AssetContract, partition: str | None) -> adj.Adjacency:
    """The graph of an adjacency / adjacency_merged partition."""
    nodes = store.read_table(asset.name, partition)
    arrays, meta = store.read_tensors(asset.name, partition, CSR_STEM)
    if arrays["indptr"].size != nodes.num_rows + 1:
        raise ContractError(
            asset.name,
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


def load_context(
    store: Warehouse, asset: AssetContract, partition: str | None
) -> cm.ContextCounts | None:
    """The context counts of an adjacency partition (None if it was written without them)."""
    if not store.has_file(asset.name, partition, f"{CONTEXT_STEM}.safetensors"):
        return None
    arrays, meta = store.read_tensors(asset.name, partition, CONTEXT_STEM)
    try:
        return cm.ContextCounts.from_tensors(arrays, meta)
    except ValueError as exc:
        raise ContractError(asset.name, partition, CONTEXT_STEM, str(exc)) from exc


# ---------------------------------------------------------------------------------------------
# restore (CLI ``sphere restore`` and the restore_quality check)
# ---------------------------------------------------------------------------------------------


RESTORE_CACHE_KIND = "restore_index"  # <warehouse cache root>/restore_index/p<P>-<key>.safetensors


def restore_sources(store: Warehouse) -> list[tuple[str, str]]:
    """(asset, file) of every stored file a restore index is derived from."""
    files = [
        (NGRAM_VOCABULARY.name, PARQUET_PART_NAME),
        (NGRAM_VOCABULARY.name, f"{LOOKUP_STEM}.safetensors"),
    ]
    if store.exists(ADJACENCY_MERGED.name, None):
        files += [
            (ADJACENCY_MERGED.name, PARQUET_PART_NAME),
            (ADJACENCY_MERGED.name, f"{CSR_STEM}.safetensors"),
        ]
        if store.has_file(ADJACENCY_MERGED.name, None, f"{CONTEXT_STEM}.safetensors"):
            files.append((ADJACENCY_MERGED.name, f"{CONTEXT_STEM}.safetensors"))
    return files


def restore_cache_name(store: Warehouse, p: int) -> str:
    """The cache file name of the restore index at precision ``p``: the index format, ``p`` and
    the manifest digest + identity (device, inode, size, mtime, ctime) of every source file, so
    any re-materialization or rewrite of a source makes a new name (and a rebuild)."""
    import hashlib

    h = hashlib.sha256(f"{rs.INDEX_FORMAT}|p={p}".encode())
    for asset, name in restore_sources(store):
        h.update(f"|{asset}/{name}={store.file_identity(asset, None, name)}".encode())
    return f"p{p}-{h.hexdigest()[:32]}"


def vocabulary_p(store: Warehouse) -> int:
    """The HLLSet precision ngram_vocabulary's lookup was built for (header only)."""
    _, meta = store.open_tensors_mmap(NGRAM_VOCABULARY.name, None, LOOKUP_STEM)
    return int(meta["p"])


def build_restore_index(store: Warehouse, p: int | None = None) -> rs.RestoreIndex:
    """RestoreIndex built in memory from ngram_vocabulary (+ adjacency_merged weights and context
    counts when materialized), every byte read and verified: O(corpus) time and memory. ``p``
    defaults to the vocabulary's."""
    table = load_vocabulary_table(store)
    if p is None:
        p = vocabulary_p(store)
    graph = context_counts = None
    if store.exists(ADJACENCY_MERGED.name, None):
        graph = load_adjacency(store, ADJACENCY_MERGED, None)
        context_counts = load_context(store, ADJACENCY_MERGED, None)
    return rs.RestoreIndex.build(table, p, graph, context=context_counts)


def load_restore_index(store: Warehouse, p: int | None = None) -> rs.RestoreIndex:
    """The restore index at precision ``p`` (default: the vocabulary's), opened lazily.

    The first call after the sources change builds it (:func:`build_restore_index`, O(corpus))
    and writes its arrays once to the warehouse's cache (``Warehouse.write_derived_tensors``,
    named by :func:`restore_cache_name`); the ``restore_quality`` check of adjacency_merged
    makes that call at materialization time.  Every later call maps the cached arrays and
    adjacency_merged's context counts read-only (``open_tensors_mmap``): O(1) in the corpus
    size, a query reads only the pages it looks up.  Integrity: the sources were verified
    byte for byte when the cache was built, the cache and the context file are verified once
    per file identity (:mod:`sphere_resources.mapped`); a damaged cache file is rebuilt from
    the warehouse (with a warning), a damaged warehouse file is a DamagedFileError.  Without a
    writable cache the index is built in memory on every call, as before.
    """
    import warnings

    p = vocabulary_p(store) if p is None else hs.check_p(p)
    name = restore_cache_name(store, p)
    try:
        opened = store.open_derived_tensors_mmap(RESTORE_CACHE_KIND, name)
    except DamagedFileError as exc:
        warnings.warn(f"{exc}; rebuilding the restore index", stacklevel=2)
        opened = None
    if opened is None:
        index = build_restore_index(store, p)
        store.write_derived_tensors(RESTORE_CACHE_KIND, name, *index.arrays())
        return index
    arrays, meta = opened
    context = None
    if int(meta.get("context_order", 0)):
        counts, counts_meta = store.open_tensors_mmap(ADJACENCY_MERGED.name, None, CONTEXT_STEM)
        if counts_meta.get("format") != cm.FORMAT:
            raise ContractError(
                ADJACENCY_MERGED.name, None, CONTEXT_STEM, f"format {counts_meta.get('format')!r}"
            )
        context = (counts["hashes"], counts["counts"])
    try:
        return rs.RestoreIndex.from_arrays(arrays, meta, context)
    except (KeyError, ValueError) as exc:
        raise DamagedFileError(
            f"cache:{RESTORE_CACHE_KIND}", None, Path(name), f"not a restore index ({exc})"
        ) from None
