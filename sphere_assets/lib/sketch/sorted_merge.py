"""Out-of-core merges of sorted shards: byte order keys for n-grams and a batched k-way merge.

Why
    The global merges (``ngram_vocabulary``, ``adjacency_merged``) add the counts of equal
    n-grams over every shard and write the rows in canonical order.  Every shard is already in
    canonical order, so the merge is a k-way merge of sorted streams: it needs one batch per
    shard in memory, never the whole corpus.

Order key
    Canonical order (:mod:`sphere_assets.lib.sketch.ngrams`) compares n-grams as tuples of token
    ids, ``_START_`` < ``_END_`` < patches by their raw bytes.  :func:`order_keys` maps a stored
    key to bytes whose plain byte order is that order: each part becomes ``0x00`` (``_START_``),
    ``0x01`` (``_END_``) or ``0x02 + raw bytes with 0x00 -> 0x00 0xFF + 0x00 0x00`` (a patch).
    The codes are prefix-free and order-preserving per part, so their concatenation compares
    like the tuple.  The first byte is the order n, so one key orders a whole ngram_index file
    (rows by n, then canonical).

Merge
    :func:`merge_sorted` reads a batch from every stream, emits every buffered row whose key is
    <= the smallest "last key" among the streams not yet exhausted (nothing unread can sort
    before it), sorted, and repeats; a run of equal keys is never split across two emitted
    tables.  Each stream must be strictly increasing (checked: a shard out of order or with a
    duplicate row raises :class:`StreamOrderError` naming the stream).  Memory: one batch per
    stream plus the emitted table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import ngrams as ng

ORDER_KEY = "_order_key"
# part codes (module docstring); scalars are made per call: pa.scalar imports pandas, which
# the code location must not pay for at import time
_START_CODE, _END_CODE, _PATCH_PREFIX, _PATCH_END = b"\x00", b"\x01", b"\x02", b"\x00\x00"


def _bin(value: bytes) -> pa.Scalar:
    return pa.scalar(value, pa.binary())


class StreamOrderError(ValueError):
    """A stream of a k-way merge is not strictly increasing in its order key."""

    def __init__(self, stream: int, message: str):
        super().__init__(f"stream {stream}: {message}")
        self.stream = stream


def _part_codes(parts: pa.Array, *, sentinels: bool) -> pa.Array:
    """Order-preserving, prefix-free code of every part (raw patch bytes, or escaped key
    parts with bare sentinels when ``sentinels``)."""
    if sentinels:
        is_start = pc.equal(parts, pa.scalar(ng.START, pa.binary()))
        is_end = pc.equal(parts, pa.scalar(ng.END, pa.binary()))
        raw = ng._unescape_array(parts)  # escaped parts back to raw patch bytes
    else:
        raw = parts
    code = pc.binary_join_element_wise(
        _bin(_PATCH_PREFIX),
        pc.replace_substring(raw, b"\x00", b"\x00\xff"),
        _bin(_PATCH_END),
        _bin(b""),
    )
    if sentinels:
        code = pc.if_else(is_start, _bin(_START_CODE), code)
        code = pc.if_else(is_end, _bin(_END_CODE), code)
    return code


def order_keys(n: int, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """(k,) binary: byte-comparable canonical order key of every stored n-gram key of order n
    (1-gram keys are raw patches; 2-/3-gram keys are escaped parts joined with 0x00)."""
    keys = ng.as_binary_array(keys)
    if n == 1:
        parts = _part_codes(keys, sentinels=False)
    else:
        split = pc.split_pattern(keys, pattern=ng.SEP)
        lens = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        if np.any(lens != n):
            bad = int(np.flatnonzero(lens != n)[0])
            raise ValueError(f"{n}-gram key {keys[bad].as_py()!r} does not have {n} parts")
        parts = _part_codes(pc.list_flatten(split), sentinels=True)
    offsets = pa.array(np.arange(0, (len(keys) + 1) * n, n, dtype=np.int32)[: len(keys) + 1])
    per_row = pa.ListArray.from_arrays(offsets, parts)
    joined = pc.binary_join(per_row, _bin(b""))
    return pc.binary_join_element_wise(_bin(bytes([n])), joined, _bin(b"")).cast(pa.binary())


def layered_order_keys(orders: np.ndarray, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`order_keys` of rows holding several orders (``orders`` per row), in row order."""
    keys = ng.as_binary_array(keys)
    orders = np.asarray(orders)
    pieces, where = [], []
    for n in ng.ORDERS:
        sel = np.flatnonzero(orders == n)
        if sel.size:
            pieces.append(order_keys(n, keys.take(pa.array(sel))))
            where.append(sel)
    if len(where) == 1 and where[0].size == len(keys):
        return pieces[0]
    if len(keys) and sum(w.size for w in where) != len(keys):
        raise ValueError("n-gram order must be 1, 2 or 3")
    if not pieces:
        return pa.array([], pa.binary())
    back = np.empty(len(keys), np.int64)
    back[np.concatenate(where)] = np.arange(len(keys))
    return pa.concat_arrays(pieces).take(pa.array(back))


def _strict_increase(keys: pa.Array, stream: int, previous: pa.Scalar | None) -> None:
    if previous is not None and len(keys) and keys[0].as_py() <= previous.as_py():
        raise StreamOrderError(stream, "rows are not in strictly ascending order across batches")
    if len(keys) > 1 and pc.any(pc.less_equal(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py():
        raise StreamOrderError(stream, "rows are not in strictly ascending order (or repeat)")


def merge_sorted(streams: Sequence[Iterable[pa.Table]], key: str) -> Iterator[pa.Table]:
    """Rows of every stream ascending by the binary column ``key`` (ties: stream order), as
    tables that never split a run of equal keys; a ``stream`` column says where each row came
    from.  Every stream must be strictly ascending (:class:`StreamOrderError` otherwise)."""
    iters = [iter(s) for s in streams]
    buffers: list[pa.Table | None] = [None] * len(iters)
    last: list[pa.Scalar | None] = [None] * len(iters)
    done = [False] * len(iters)
    while True:
        for i, it in enumerate(iters):
            while not done[i] and (buffers[i] is None or buffers[i].num_rows == 0):
                batch = next(it, None)
                if batch is None:
                    done[i] = True
                    break
                if batch.num_rows == 0:
                    continue
                keys = batch.column(key).combine_chunks()
                _strict_increase(keys, i, last[i])
                last[i] = keys[len(keys) - 1]
                batch = batch.append_column("stream", pa.array(np.full(len(keys), i, np.int32)))
                buffers[i] = batch
        live = [i for i in range(len(iters)) if buffers[i] is not None and buffers[i].num_rows]
        if not live:
            return
        bounds = [last[i] for i in live if not done[i]]
        cutoff = min((b.as_py() for b in bounds), default=None)
        taken = []
        for i in live:
            buf = buffers[i]
            if cutoff is None:
                take = buf.num_rows
            else:
                mask = pc.less_equal(buf.column(key), pa.scalar(cutoff, pa.binary()))
                take = int(pc.sum(mask).as_py() or 0)  # sorted: the first `take` rows
            if take:
                taken.append(buf.slice(0, take))
                buffers[i] = buf.slice(take)
        out = pa.concat_tables(taken)
        order = pc.sort_indices(out, sort_keys=[(key, "ascending"), ("stream", "ascending")])
        yield out.take(order)


def group_starts(sorted_keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(g,) int64 first row of every run of equal keys in a sorted binary column."""
    keys = ng.as_binary_array(sorted_keys)
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    new = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    rest = np.flatnonzero(new.to_numpy(zero_copy_only=False)) + 1
    return np.concatenate([[0], rest]).astype(np.int64)


def sum_groups(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over every run beginning at ``starts`` (int64)."""
    if starts.size == 0:
        return np.zeros(0, np.int64)
    return np.add.reduceat(np.asarray(values, np.int64), starts).astype(np.int64)


def merge_sorted_counts(
    keys_a: np.ndarray, counts_a: np.ndarray, keys_b: np.ndarray, counts_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys ascending and summed counts of two (key, count) lists, each with distinct
    keys (numeric).  Both strictly ascending (the usual case: stored shards): a linear merge
    that allocates little beyond the result (binary search of b in a, counts of shared keys
    added, the others inserted); otherwise one stable sort of both."""
    counts_a = np.asarray(counts_a, np.int64)
    counts_b = np.asarray(counts_b, np.int64)
    if _strictly_ascending(keys_a) and _strictly_ascending(keys_b):
        pos = np.searchsorted(keys_a, keys_b)
        shared = pos < keys_a.size
        shared[shared] = keys_a[pos[shared]] == keys_b[shared]
        counts = counts_a.copy()
        counts[pos[shared]] += counts_b[shared]
        fresh = ~shared
        keys = np.insert(keys_a, pos[fresh], keys_b[fresh])
        return keys, np.insert(counts, pos[fresh], counts_b[fresh]).astype(np.int64)
    keys = np.concatenate([keys_a, keys_b])
    counts = np.concatenate([counts_a, counts_b])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    if keys.size == 0:
        return keys, counts
    new = np.empty(keys.size, dtype=bool)
    new[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return keys[starts], np.add.reduceat(counts, starts).astype(np.int64)


def _strictly_ascending(keys: np.ndarray) -> bool:
    return bool(keys.size < 2 or np.all(keys[1:] > keys[:-1]))


def rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``tables`` again, in tables of exactly ``rows`` rows (the last may be
    shorter): two streams rechunked alike can be compared table by table."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += table.num_rows
        while held >= rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, rows)
            rest = joined.slice(rows)
            pending, held = ([rest] if rest.num_rows else []), held - rows
    if held:
        yield pa.concat_tables(pending)
