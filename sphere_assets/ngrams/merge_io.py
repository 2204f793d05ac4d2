"""Streamed reads and writes of the global merges (ngram_vocabulary, adjacency_merged) and their
checks: the storage side of the out-of-core merges (beside :mod:`sphere_assets.ngrams.io`).

* shard rows come in row-group batches with their canonical order key
  (:func:`iter_keyed_rows`), ready for :func:`sphere_assets.lib.sketch.sorted_merge.merge_sorted`;
* merged rows go out through :class:`RowGroupStream`, which cuts row groups exactly where
  ``pq.write_table`` of the whole table would (so a streamed output is byte-identical to the
  whole-table write it replaces);
* per-shard tensors (CSR, context counts) are read one shard at a time.

Memory: one batch of ``MERGE_BATCH_ROWS`` rows per shard, plus one output row group.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import sorted_merge as sm
from sphere_assets.ngrams.contract import (
    ADJACENCY_MERGED,
    ARTICLE_HLLSETS,
    CONTEXT_STEM,
    CSR_STEM,
    LOOKUP_FORMAT,
    LOOKUP_STEM,
    NGRAM_INDEX_SCHEMA,
    NGRAM_VOCABULARY,
)
from sphere_assets.patching.contract import BLT_PATCHES
from sphere_resources.contracts import AssetContract, ContractError
from sphere_resources.store import Warehouse

MERGE_BATCH_ROWS = 65_536  # rows per shard batch in a k-way merge (memory: one batch per shard)
# pq.write_table's row group (pyarrow: min(rows, 1024 * 1024)); a streamed write that cuts at
# the same rows, with the same chunk boundaries inside, writes the same bytes
ROW_GROUP_ROWS = 1024 * 1024


def iter_keyed_rows(
    store: Warehouse,
    asset: AssetContract,
    shard: str | None,
    columns: list[str],
    order: int | None = None,
    batch_rows: int = MERGE_BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Batches of a partition's rows with their canonical order key (column
    :data:`~sphere_assets.lib.sketch.sorted_merge.ORDER_KEY`); the key column must be ``key``
    and the orders come from column ``n`` unless every row has order ``order``."""
    for batch in store.iter_batches(asset.name, shard, batch_size=batch_rows, columns=columns):
        table = pa.Table.from_batches([batch])
        if order is None:
            orders = table.column("n").to_numpy()
        else:
            orders = np.full(table.num_rows, order, np.int8)
        try:
            keys = sm.layered_order_keys(orders, table.column("key"))
        except ValueError as exc:
            raise ContractError(asset.name, shard, "key", str(exc)) from exc
        yield table.append_column(sm.ORDER_KEY, keys)


def merged_stream(
    streams: list[Iterator[pa.Table]], asset: AssetContract, shards: list[str]
) -> Iterator[pa.Table]:
    """:func:`~sphere_assets.lib.sketch.sorted_merge.merge_sorted` over shard streams, a shard
    out of canonical order reported as a ContractError naming it."""
    try:
        yield from sm.merge_sorted(streams, sm.ORDER_KEY)
    except sm.StreamOrderError as exc:
        raise ContractError(
            asset.name, shards[exc.stream], "key", f"{exc} (rows must be in canonical order)"
        ) from exc


class RowGroupStream:
    """Writes a sequence of tables as the row groups ``pq.write_table`` would cut from their
    concatenation; inside a row group the column chunks break only where ``segment`` (a column
    name, e.g. ``n`` of a table built layer by layer) changes value — as in the whole table."""

    def __init__(self, stream, segment: str | None = None, rows: int = ROW_GROUP_ROWS):
        self._stream = stream
        self._segment = segment
        self._limit = rows
        self._pending: list[pa.Table] = []
        self._rows = 0
        self.rows_written = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._rows += table.num_rows
        while self._rows >= self._limit:
            self._flush(self._limit)

    def close(self, empty: pa.Table) -> None:
        """Write what is pending (``empty``, the schema's empty table, if nothing was written)."""
        if self._rows:
            self._flush(self._rows)
        elif not self.rows_written:
            self._stream.write(empty)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, rows), table.slice(rows)
        self._stream.write(self._chunked(head))
        self._pending = [rest] if rest.num_rows else []
        self._rows -= rows
        self.rows_written += rows

    def _chunked(self, table: pa.Table) -> pa.Table:
        if self._segment is None:
            return table.combine_chunks()
        values = table.column(self._segment).to_numpy()
        cuts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1, [len(values)]])
        return pa.concat_tables(
            [
                table.slice(a, b - a).combine_chunks()
                for a, b in zip(cuts[:-1], cuts[1:], strict=True)
            ]
        )


# ---------------------------------------------------------------------------------------------
# ngram_vocabulary
# ---------------------------------------------------------------------------------------------


def write_vocabulary_streamed(
    store: Warehouse, rows: Iterator[pa.Table], p: int, shards: list[str], lookup_of
) -> int:
    """Stream contract rows (in canonical order) into ngram_vocabulary's Parquet, then write
    ``lookup_of(orders, bits)`` (the bit lookup of every row) beside it; returns the rows."""
    orders, bits = [], []
    with store.partition_writer(NGRAM_VOCABULARY.name, None) as writer:
        with writer.table_stream() as stream:
            groups = RowGroupStream(stream, segment="n")
            for table in rows:
                groups.write(table)
                orders.append(table.column("n").to_numpy())
                bits.append(
                    table.column("reg").to_numpy().astype(np.int64) * hs.WORD_BITS
                    + table.column("run").to_numpy()
                )
            groups.close(NGRAM_INDEX_SCHEMA.empty_table())
        order = np.concatenate(orders) if orders else np.zeros(0, np.int8)
        bit = np.concatenate(bits) if bits else np.zeros(0, np.int64)
        del orders, bits
        writer.write_tensors(
            LOOKUP_STEM,
            lookup_of(order, bit),
            {"format": LOOKUP_FORMAT, "p": str(p), "bit": "reg*32+run", "shards": ",".join(shards)},
        )
        return groups.rows_written


# ---------------------------------------------------------------------------------------------
# adjacency / adjacency_merged
# ---------------------------------------------------------------------------------------------


def read_node_hashes(store: Warehouse, asset: AssetContract, shard: str | None) -> np.ndarray:
    """(N,) uint64 key hash of every node of an adjacency partition, in node-id order."""
    table = store.read_table(asset.name, shard, columns=["hash"])
    return table.column("hash").to_numpy().astype(np.uint64)


def read_csr(
    store: Warehouse, asset: AssetContract, shard: str | None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(CSR arrays, metadata) of an adjacency partition."""
    return store.read_tensors(asset.name, shard, CSR_STEM)


def write_adjacency_streamed(
    store: Warehouse,
    node_rows: Iterator[pa.Table],
    csr: dict[str, np.ndarray],
    csr_metadata: dict[str, str],
    context: dict[str, np.ndarray],
    context_metadata: dict[str, str],
) -> int:
    """adjacency_merged: node rows streamed (node-id order), then the CSR and context tensors."""
    with store.partition_writer(ADJACENCY_MERGED.name, None) as writer:
        with writer.table_stream() as stream:
            groups = RowGroupStream(stream)
            for table in node_rows:
                groups.write(table)
            groups.close(ADJACENCY_MERGED.schema.empty_table())
        writer.write_tensors(CSR_STEM, csr, csr_metadata)
        writer.write_tensors(CONTEXT_STEM, context, context_metadata)
        return groups.rows_written


# ---------------------------------------------------------------------------------------------
# inputs of the streamed checks
# ---------------------------------------------------------------------------------------------


def iter_rows(
    store: Warehouse,
    asset: AssetContract,
    shard: str | None,
    columns: list[str],
    batch_rows: int = MERGE_BATCH_ROWS,
) -> Iterator[pa.Table]:
    """A partition's rows in row-group batches (only ``columns``)."""
    for batch in store.iter_batches(asset.name, shard, batch_size=batch_rows, columns=columns):
        yield pa.Table.from_batches([batch])


def article_lengths(store: Warehouse, shard: str) -> tuple[pa.Array, np.ndarray]:
    """(article ids, patches per article) of a blt_patches shard, streamed (ids sorted)."""
    counts: dict[str, int] = {}
    for table in iter_rows(store, BLT_PATCHES, shard, ["article_id"]):
        for row in pc.value_counts(table.column("article_id").combine_chunks()).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    ids = sorted(counts)
    return pa.array(ids, pa.string()), np.array([counts[i] for i in ids], np.int64)


def article_patches(store: Warehouse, shard: str, article_ids: list[str]) -> dict[str, list[bytes]]:
    """The patches (in patch_index order) of a few articles of a blt_patches shard, streamed."""
    wanted = pa.array(article_ids, pa.string())
    found: dict[str, list[tuple[int, bytes]]] = {a: [] for a in article_ids}
    for table in iter_rows(store, BLT_PATCHES, shard, ["article_id", "patch_index", "patch"]):
        hit = table.filter(pc.is_in(table.column("article_id"), value_set=wanted))
        for row in hit.to_pylist():
            found[row["article_id"]].append((row["patch_index"], row["patch"]))
    return {a: [patch for _, patch in sorted(rows)] for a, rows in found.items()}


def span_counts(store: Warehouse, max_patches: int) -> list[tuple[str, int]]:
    """(shard, number of span HLLSets of <= max_patches patches) per article_hllsets shard."""
    out = []
    for key in store.partitions(ARTICLE_HLLSETS.name):
        n = 0
        for table in iter_rows(store, ARTICLE_HLLSETS, key, ["span_index", "patch_count"]):
            n += int(pc.sum(_span_mask(table, max_patches)).as_py() or 0)
        out.append((key, n))
    return out


def _span_mask(table: pa.Table, max_patches: int) -> pa.Array:
    return pc.and_(
        pc.greater_equal(table.column("span_index"), 0),
        pc.less_equal(table.column("patch_count"), max_patches),
    )


def selected_spans(
    store: Warehouse, shard: str, max_patches: int, positions: np.ndarray
) -> pa.Table:
    """The spans at ``positions`` (indices among the shard's span HLLSets of <= max_patches
    patches, in file order) with their layer columns, streamed."""
    columns = ["article_id", "span_index", "patch_start", "patch_count", "p"]
    columns += ["layer1", "layer2", "layer3"]
    picked, seen = [], 0
    for table in iter_rows(store, ARTICLE_HLLSETS, shard, columns):
        spans = table.filter(_span_mask(table, max_patches))
        local = positions[(positions >= seen) & (positions < seen + spans.num_rows)] - seen
        if local.size:
            picked.append(spans.take(pa.array(local)))
        seen += spans.num_rows
    return pa.concat_tables(picked) if picked else None
