"""Patch n-grams: keys, compiled extraction and counting, merging and HLLSets of sequences.

Tokens are BLT patches (their bytes).  A *sequence* is one article's (or one span's) patches in
order.

Keys
    * 1-gram: the patch bytes, unchanged.
    * 2-/3-gram: the sequence is padded once with ``_START_`` in front and ``_END_`` behind and
      consecutive parts are joined with one 0x00 byte, e.g. ``b"_START_\\x00Hel\\x00lo"``.
      Inside 2-/3-gram keys a patch is *escaped* (never rejected) so that keys stay injective:
      0x01 → 0x01 0x01, then 0x00 → 0x01 0x02; a patch spelled exactly ``_START_`` or ``_END_``
      gets the prefix 0x01 0x03.  Escaped parts contain no 0x00, so splitting a key on 0x00
      recovers the parts, and a bare ``_START_``/``_END_`` part is always the sentinel.  Patches
      without 0x00/0x01 (all text) are their own escape.
    * A sequence of L ≥ 1 patches has L 1-grams, L+1 2-grams and L 3-grams (occurrences).  An
      empty sequence contributes nothing.

Token ids
    Within an :class:`NgramTable`, id 0 is ``_START_``, id 1 is ``_END_`` and ids 2.. are the
    distinct patches in ascending byte order.  n-grams are rows of ids, sorted lexicographically:
    this *canonical order* depends only on the bytes (START < END < patches by bytes), so tables
    built per shard and merged equal the table built over everything at once.

Counting is deduplicate-then-hash, in compiled kernels (:mod:`sphere_assets.lib.sketch.key_kernels`,
numba): patches are deduplicated by a hash table on their bytes, 2- and 3-grams become integer
codes ``a*T + b`` / ``(a*T + b)*T + c`` (``T`` token ids) deduplicated by a hash table on the
codes, and only the distinct n-grams are hashed with MurmurHash3 — their keys are assembled from
the escaped pieces ``a, 0x00, b[, 0x00, c]`` in a scratch buffer, never materialised.  The 2- and
3-grams are deduplicated on two threads, and hashing splits the rows over two threads (the
kernels release the GIL).  Nothing loops over occurrences in Python.  ``canonical=False`` skips
the two sorts (patch bytes, distinct codes; both compiled radix sorts) and keeps
first-occurrence order — deterministic for a given input order, used where only the content
matters.  The first call in a process loads the kernels from numba's on-disk cache (compiling
them, a few seconds, when the cache is missing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.core.lazy import lazy_module
from sphere_assets.lib.sketch import hllset as hs

kk = lazy_module("sphere_assets.lib.sketch.key_kernels")  # numba on first use (see hllset)

START = b"_START_"
END = b"_END_"
SEP = b"\x00"
ESC = 0x01
START_ID = 0
END_ID = 1
FIRST_PATCH_ID = 2
ORDERS = (1, 2, 3)
# below this many occurrences (or rows to hash) a helper thread costs more than it saves
# (~0.1 ms to start; the compiled kernels do ~10^4 of them in ~0.2 ms)
_PARALLEL_MIN = 10_000
# with fewer token ids, a 3-gram code (a*T + b)*T + c fits in 63 bits
_NARROW_TOKENS = 2_097_152


# ---------------------------------------------------------------------------------------------
# Keys (scalar reference + escaping)
# ---------------------------------------------------------------------------------------------


def escape_part(patch: bytes) -> bytes:
    """Escape one patch for use inside a 2-/3-gram key (see module docstring)."""
    if patch == START or patch == END:
        return b"\x01\x03" + patch
    if b"\x00" in patch or b"\x01" in patch:
        return patch.replace(b"\x01", b"\x01\x01").replace(b"\x00", b"\x01\x02")
    return patch


def unescape_part(part: bytes) -> bytes:
    """Inverse of :func:`escape_part` (sentinel spellings must be handled by the caller)."""
    if part.startswith(b"\x01\x03"):
        return part[2:]
    if b"\x01" not in part:
        return part
    out = bytearray()
    i = 0
    while i < len(part):
        byte = part[i]
        if byte == ESC:
            if i + 1 >= len(part) or part[i + 1] not in (0x01, 0x02):
                raise ValueError(f"malformed escape in n-gram key part {part!r}")
            out.append(0x01 if part[i + 1] == 0x01 else 0x00)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def reference_keys(patches: Sequence[bytes]) -> dict[int, list[bytes]]:
    """Keys of every n-gram occurrence of one sequence, in order (slow, obviously-correct)."""
    if not patches:
        return {1: [], 2: [], 3: []}
    parts = [START] + [escape_part(p) for p in patches] + [END]
    return {
        1: list(patches),
        2: [SEP.join(parts[i : i + 2]) for i in range(len(parts) - 1)],
        3: [SEP.join(parts[i : i + 3]) for i in range(len(parts) - 2)],
    }


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


def as_binary_array(patches: pa.Array | pa.ChunkedArray | Sequence[bytes]) -> pa.Array:
    if isinstance(patches, pa.ChunkedArray):
        patches = patches.combine_chunks()
    if not isinstance(patches, pa.Array):
        patches = pa.array(list(patches), type=pa.binary())
    if pa.types.is_large_binary(patches.type) or pa.types.is_string(patches.type):
        patches = patches.cast(pa.binary())
    if not pa.types.is_binary(patches.type):
        raise TypeError(f"patches must be binary, got {patches.type}")
    if patches.null_count:
        raise ValueError(f"patches contain {patches.null_count} null value(s)")
    return patches


def tokenize(patches: pa.Array, *, canonical: bool = True) -> tuple[np.ndarray, pa.Array]:
    """(token id per patch int32, token table) with START/END at 0/1 and the patches after.

    canonical=True orders the patches by bytes; otherwise by first occurrence (cheaper, still
    deterministic for a given input order).
    """
    data, offsets = hs.binary_buffers(patches)
    local_ids, first = kk.dedupe_binary(data, offsets)  # compiled hash table
    distinct = patches.take(pa.array(first))
    if not canonical:
        tokens = pa.concat_arrays([pa.array([START, END], type=pa.binary()), distinct])
        local_ids += FIRST_PATCH_ID
        return local_ids, tokens
    order = kk.sort_binary(*hs.binary_buffers(distinct))  # compiled; = pc.sort_indices
    rank = np.empty(order.size, dtype=np.int32)
    rank[order] = np.arange(order.size, dtype=np.int32) + FIRST_PATCH_ID
    tokens = pa.concat_arrays([pa.array([START, END], type=pa.binary()), distinct.take(order)])
    return rank[local_ids], tokens


def escaped_tokens(tokens: pa.Array) -> pa.Array:
    """Tokens as they appear inside 2-/3-gram keys (sentinels at ids 0/1 stay bare)."""
    data, offsets = hs.binary_buffers(tokens)
    suspicious = np.flatnonzero(data <= ESC)
    needs = set()
    if suspicious.size:
        needs.update(np.searchsorted(offsets, suspicious, side="right") - 1)
    patches = tokens.slice(FIRST_PATCH_ID)
    for spelling in (START, END):
        hit = pc.equal(patches, pa.scalar(spelling, pa.binary()))
        needs.update(np.flatnonzero(hit.to_numpy(zero_copy_only=False)) + FIRST_PATCH_ID)
    needs.discard(START_ID)
    needs.discard(END_ID)
    if not needs:
        return tokens
    values = tokens.to_pylist()
    for i in needs:
        values[int(i)] = escape_part(values[int(i)])
    return pa.array(values, type=pa.binary())


def with_separator(escaped: pa.Array) -> pa.Array:
    """The piece table for key building: entry ``i`` is ``escaped[i] + 0x00`` (a part that is
    followed by another), entry ``T + i`` is ``escaped[i]`` (the last part); T = len(escaped)."""
    empty = pa.array([b""] * len(escaped), type=pa.binary())
    followed = pc.binary_join_element_wise(escaped, empty, SEP)
    return pa.concat_arrays([followed.cast(pa.binary()), escaped])


def key_buffers(pieces: pa.Array, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8, offsets int64) of the 2-/3-gram keys of ``grams`` rows, back to back.

    ``pieces`` is :func:`with_separator` of the escaped tokens.  One gather of ``n`` pieces per
    key (``a+0x00, b+0x00, c`` for a 3-gram): gathered pieces lie contiguously, so every n-th
    piece boundary is a key boundary.
    """
    n = grams.shape[1]
    idx = grams.astype(np.int32, copy=True)
    idx[:, -1] += len(pieces) // 2
    taken = pieces.take(pa.array(idx.reshape(-1)))
    data, piece_offsets = hs.binary_buffers(taken)
    return data[piece_offsets[0] : piece_offsets[-1]], piece_offsets[::n] - piece_offsets[0]


def join_keys(escaped: pa.Array, grams: np.ndarray) -> pa.Array:
    """2-/3-gram keys for rows of token ids as a binary Arrow array."""
    data, offsets = key_buffers(with_separator(escaped), grams)
    off_type, off_dtype = (
        (pa.binary(), np.int32) if data.size < 2**31 else (pa.large_binary(), np.int64)
    )
    return pa.Array.from_buffers(
        off_type,
        grams.shape[0],
        [None, pa.py_buffer(offsets.astype(off_dtype)), pa.py_buffer(data)],
    ).cast(pa.binary())


# ---------------------------------------------------------------------------------------------
# Occurrences
# ---------------------------------------------------------------------------------------------


def check_offsets(offsets: np.ndarray, n_patches: int) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != n_patches:
        raise ValueError(
            f"sequence offsets must start at 0 and end at the number of patches ({n_patches})"
        )
    if np.any(np.diff(offsets) < 0):
        raise ValueError("sequence offsets must be non-decreasing")
    return offsets


@dataclass(frozen=True, eq=False)
class Occurrences:
    """Every n-gram occurrence, as windows into the padded token-id sequence.

    ``padded`` holds every non-empty sequence as START, its token ids, END, back to back; the
    occurrences of order n are the windows ``padded[w : w + n]`` for ``w`` in ``windows[n-1]``
    (1-grams: the patches only; 2-/3-grams never straddle two sequences).
    """

    padded: np.ndarray  # int32
    windows: tuple[np.ndarray, np.ndarray, np.ndarray]  # window starts per order, int64
    kept: np.ndarray  # index of every non-empty sequence, in order
    lengths: np.ndarray  # their lengths in patches

    @cached_property
    def sequence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k_n,) int64 sequence index of every occurrence, per order (L, L+1, L windows)."""
        seq = self.kept.astype(np.int64)
        return (
            np.repeat(seq, self.lengths),
            np.repeat(seq, self.lengths + 1),
            np.repeat(seq, self.lengths),
        )

    @property
    def total(self) -> int:
        return sum(w.size for w in self.windows)

    def rows(self, n: int, which: np.ndarray | None = None) -> np.ndarray:
        """(k, n) int32 token ids of the occurrences of order n (or of the ``which`` ones)."""
        w = self.windows[n - 1] if which is None else self.windows[n - 1][which]
        return np.stack([self.padded[w + j] for j in range(n)], axis=1)

    def codes(self, n: int, n_tokens: int) -> np.ndarray:
        """:func:`_gram_codes` of every occurrence of order n, straight from the windows."""
        w = self.windows[n - 1]
        code = self.padded[w].astype(np.int64)
        for j in range(1, n):
            code *= n_tokens
            code += self.padded[w + j]
        return code

    @property
    def grams(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.rows(n) for n in ORDERS)


def occurrences(token_ids: np.ndarray, offsets: np.ndarray) -> Occurrences:
    """Pad every non-empty sequence with START/END and list its 1-, 2- and 3-gram windows."""
    token_ids = np.asarray(token_ids, dtype=np.int32)
    offsets = check_offsets(offsets, token_ids.size)
    lengths = np.diff(offsets)
    keep = np.flatnonzero(lengths > 0)
    lengths = lengths[keep]
    starts = offsets[:-1][keep]
    n_seq = keep.size
    # padded layout: kept sequence s occupies [starts[s] + 2s, starts[s] + 2s + lengths[s] + 2)
    pad_start = starts + 2 * np.arange(n_seq)
    padded = np.full(token_ids.size + 2 * n_seq, END_ID, dtype=np.int32)
    padded[pad_start] = START_ID
    inner = np.ones(padded.size, dtype=bool)
    inner[pad_start] = False
    inner[pad_start + lengths + 1] = False
    w1 = np.flatnonzero(inner)
    padded[w1] = token_ids  # sequences tile the patch array; empty ones hold no patches
    # windows never straddle sequences: a window may not contain an END before its last part
    ok2 = padded[:-1] != END_ID
    ok3 = ok2[:-1] & (padded[1:-1] != END_ID)
    return Occurrences(padded, (w1, np.flatnonzero(ok2), np.flatnonzero(ok3)), keep, lengths)


def _gram_codes(rows: np.ndarray, n_tokens: int) -> np.ndarray:
    """Injective int64 code of id rows, increasing in their lexicographic order.

    The caller guarantees ``n_tokens ** n < 2^63`` (int64 sorts faster than uint64 here).
    """
    code = rows[:, 0].astype(np.int64)
    for col in range(1, rows.shape[1]):
        code *= n_tokens
        code += rows[:, col]
    return code


def _decode(codes: np.ndarray, n: int, n_tokens: int) -> np.ndarray:
    rows = np.empty((codes.size, n), dtype=np.int32)
    rest = codes.astype(np.int64, copy=True)
    for col in range(n - 1, -1, -1):
        rest, rows[:, col] = np.divmod(rest, n_tokens)
    return rows


def _sorted_unique_counts(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes ascending and how often each occurs (one sort, no inverse)."""
    if codes.size == 0:
        return codes.copy(), np.zeros(0, dtype=np.int64)
    ordered = np.sort(codes)
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, ordered.size)).astype(np.int64)
    return ordered[starts], counts


@dataclass(frozen=True)
class DistinctGrams:
    """Distinct n-grams of one order (rows of token ids) with their occurrence counts."""

    grams: np.ndarray  # (V, n) int32
    counts: np.ndarray  # (V,) int64
    codes: np.ndarray  # (V,) int64 _gram_codes(grams); ascending when the rows are canonical
    occurrence_rows: np.ndarray | None = None  # row of every occurrence, when already known

    def inverse(self, occurrence_grams: np.ndarray, n_tokens: int) -> np.ndarray:
        """Row of every occurrence (binary search of its code in the sorted codes)."""
        if self.occurrence_rows is not None:
            return self.occurrence_rows.astype(np.int64)
        return np.searchsorted(self.codes, _gram_codes(occurrence_grams, n_tokens)).astype(np.int64)


def _distinct_rows(occ: Occurrences, n: int, n_tokens: int, canonical: bool) -> DistinctGrams:
    """Deduplicate the occurrences of order n by their integer codes (compiled hash table,
    :func:`sphere_assets.lib.sketch.key_kernels.dedupe_windows`).

    Distinct codes come in first-occurrence order with the window of their first occurrence;
    only those windows are turned into rows.  canonical=True then sorts the distinct codes
    (ascending code = lexicographic rows).
    """
    windows = occ.windows[n - 1]
    if windows.size == 0:
        empty = np.zeros(0, np.int64)
        return DistinctGrams(np.zeros((0, n), np.int32), empty, empty.copy())
    ids, distinct, counts, first = kk.dedupe_windows(occ.padded, windows, n, n_tokens)
    if not canonical:
        return DistinctGrams(occ.rows(n, first), counts, distinct, ids)
    # sort the codes carrying their counts, then decode the rows: no random gathers
    codes, counts = kk.radix_sort_pairs(distinct, counts, int(n_tokens**n - 1).bit_length())
    return DistinctGrams(kk.decode_codes(codes, n, n_tokens), counts, codes)


def distinct_grams(
    occ: Occurrences, n_tokens: int, *, canonical: bool = True
) -> tuple[DistinctGrams, ...]:
    """Deduplicate the occurrences of every order.

    Codes are ``a*T + b`` and ``(a*T + b)*T + c`` with ``T`` = number of token ids (so sorted
    codes are lexicographic rows).  When ``T^3`` does not fit in 63 bits, 3-grams are coded as
    ``rank(a, b) * T + c`` and deduplicated by sorting (same order).
    """
    if n_tokens >= 2**31:
        raise ValueError(f"too many distinct patches ({n_tokens}) for int32 token ids")
    # order 1: token ids themselves
    g1 = occ.padded[occ.windows[0]]
    counts1 = np.bincount(g1, minlength=n_tokens).astype(np.int64)
    present = np.flatnonzero(counts1[FIRST_PATCH_ID:]) + FIRST_PATCH_ID
    d1 = DistinctGrams(
        present.astype(np.int32).reshape(-1, 1), counts1[present], present.astype(np.int64)
    )
    narrow = n_tokens < _NARROW_TOKENS  # T^3 < 2^63: orders 2 and 3 are independent
    # the compiled kernels release the GIL: on big inputs do the 3-grams on a second core
    big = occ.windows[2].size >= _PARALLEL_MIN
    pool = ThreadPoolExecutor(max_workers=1) if narrow and big else None
    future = pool.submit(_distinct_rows, occ, 3, n_tokens, canonical) if pool else None
    d2 = _distinct_rows(occ, 2, n_tokens, canonical)
    if future is not None:
        d3 = future.result()
        pool.shutdown()
    elif narrow:
        d3 = _distinct_rows(occ, 3, n_tokens, canonical)
    else:
        g3 = occ.rows(3)
        codes2 = d2.codes if canonical else np.sort(d2.codes)
        if codes2.size * n_tokens >= 2**63:
            raise ValueError("3-gram code space exceeds 63 bits; shard the input further")
        grams2 = _decode(codes2, 2, n_tokens)
        prefix = np.searchsorted(codes2, _gram_codes(g3[:, :2], n_tokens)).astype(np.int64)
        wide, counts3 = _sorted_unique_counts(prefix * n_tokens + g3[:, 2])
        rows3 = np.concatenate(
            [grams2[wide // n_tokens], (wide % n_tokens).astype(np.int32).reshape(-1, 1)],
            axis=1,
        )
        d3 = _WideDistinct(rows3, counts3, wide, None, codes2)
    return d1, d2, d3


@dataclass(frozen=True)
class _WideDistinct(DistinctGrams):
    prefix_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def inverse(self, occurrence_grams: np.ndarray, n_tokens: int) -> np.ndarray:
        prefix = np.searchsorted(self.prefix_codes, _gram_codes(occurrence_grams[:, :2], n_tokens))
        wide = prefix.astype(np.int64) * n_tokens + occurrence_grams[:, 2]
        return np.searchsorted(self.codes, wide).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NgramTable:
    """Distinct 1-, 2-, 3-grams (rows of token ids, canonical order) with occurrence counts."""

    tokens: pa.Array  # binary; [START, END, patches ascending]
    grams: tuple[np.ndarray, np.ndarray, np.ndarray]
    counts: tuple[np.ndarray, np.ndarray, np.ndarray]
    _hash_threads: int | None = field(default=None, repr=False)
    # hashes per order known in advance (stored ones, :meth:`with_hashes`); None = compute them
    known_hashes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def size(self, n: int) -> int:
        return int(self.grams[n - 1].shape[0])

    @cached_property
    def escaped(self) -> pa.Array:
        return escaped_tokens(self.tokens)

    def keys(self, n: int) -> pa.Array:
        """Key bytes of every row of order ``n``."""
        rows = self.grams[n - 1]
        if n == 1:
            first = FIRST_PATCH_ID
            if rows.shape[0] == self.n_tokens - first and (
                rows.shape[0] == 0 or (rows[0, 0] == first and rows[-1, 0] == self.n_tokens - 1)
            ):
                return self.tokens.slice(first)  # every patch occurs: no gather needed
            return self.tokens.take(pa.array(rows[:, 0]))
        return join_keys(self.escaped, rows)

    @cached_property
    def escaped_sep(self) -> pa.Array:
        return with_separator(self.escaped)

    def hash_rows(self, n: int, threads: int | None = None) -> np.ndarray:
        """64-bit hashes of the keys of order ``n``.

        2-/3-gram keys are never materialised: the compiled kernel
        (:func:`sphere_assets.lib.sketch.key_kernels.hash_joined`) joins the escaped pieces
        with 0x00 in a scratch buffer and hashes it.  ``threads`` (default: up to 2 on big
        tables) splits the rows; the kernel releases the GIL.
        """
        threads = self._hash_threads if threads is None else threads
        if n == 1:
            return hs.hash64_keys(self.keys(1), threads=threads)
        rows = np.ascontiguousarray(self.grams[n - 1], dtype=np.int32)
        if threads is None:
            threads = min(2, os.cpu_count() or 1) if rows.shape[0] >= _PARALLEL_MIN else 1
        data, offsets, packed = self.escaped_pieces
        out = np.empty(rows.shape[0], dtype=np.uint64)
        hs.split_range(
            rows.shape[0],
            threads,
            lambda lo, hi: kk.hash_joined(data, offsets, packed, rows, out, lo, hi),
        )
        return out

    @cached_property
    def escaped_pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data, offsets, :func:`~sphere_assets.lib.sketch.key_kernels.pack_pieces`) of
        :attr:`escaped`: the pieces of 2-/3-gram keys, as :meth:`hash_rows` reads them."""
        data, offsets = hs.binary_buffers(self.escaped)
        data = np.ascontiguousarray(data)
        return data, offsets, kk.pack_pieces(data, offsets)

    @cached_property
    def hashes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashes per order: the known ones, else computed (see :meth:`hash_rows`)."""
        if self.known_hashes is not None:
            return self.known_hashes
        return tuple(self.hash_rows(n) for n in ORDERS)

    def with_hashes(self, hashes: Sequence[np.ndarray]) -> NgramTable:
        """This table with its per-order hashes given (e.g. read back from storage) instead of
        computed; each array must have one uint64 per row of its order."""
        known = tuple(np.asarray(h, dtype=np.uint64) for h in hashes)
        if [h.shape for h in known] != [(self.size(n),) for n in ORDERS]:
            raise ValueError(
                f"hashes of sizes {[h.size for h in known]} for "
                f"{[self.size(n) for n in ORDERS]} rows per order"
            )
        return replace(self, known_hashes=known)

    def canonical_equal(self, other: NgramTable) -> bool:
        """Same distinct n-grams (by bytes) with the same counts."""
        return (
            self.tokens.equals(other.tokens)
            and all(np.array_equal(a, b) for a, b in zip(self.grams, other.grams, strict=True))
            and all(np.array_equal(a, b) for a, b in zip(self.counts, other.counts, strict=True))
        )


@dataclass(frozen=True, eq=False)
class IndexedSequences:
    table: NgramTable
    token_ids: np.ndarray  # per patch, ids into table.tokens
    occurrences: Occurrences
    distinct: tuple[DistinctGrams, DistinctGrams, DistinctGrams]

    def inverse(self, n: int) -> np.ndarray:
        """Table row of every occurrence of order ``n``."""
        occ = self.occurrences
        if n == 1:
            return np.searchsorted(self.distinct[0].codes, occ.padded[occ.windows[0]])
        d = self.distinct[n - 1]
        if d.occurrence_rows is not None:
            return d.occurrence_rows.astype(np.int64)
        if isinstance(d, _WideDistinct):
            return d.inverse(occ.rows(n), self.table.n_tokens)
        return np.searchsorted(d.codes, occ.codes(n, self.table.n_tokens)).astype(np.int64)


def index_sequences(
    patches: pa.Array | Sequence[bytes],
    offsets: np.ndarray,
    *,
    canonical: bool = True,
    hash_threads: int | None = None,
) -> IndexedSequences:
    """Count the distinct 1-, 2-, 3-grams of sequences ``patches[offsets[i]:offsets[i+1]]``.

    canonical=False keeps token ids in first-occurrence order (skips sorting the patch bytes);
    the result is then deterministic for the given input order but not comparable across
    inputs.  Hashes are computed lazily (``table.hashes``).
    """
    patches = as_binary_array(patches)
    offsets = check_offsets(offsets, len(patches))
    token_ids, tokens = tokenize(patches, canonical=canonical)
    occ = occurrences(token_ids, offsets)
    distinct = distinct_grams(occ, len(tokens), canonical=canonical)
    table = NgramTable(
        tokens,
        tuple(d.grams for d in distinct),
        tuple(d.counts for d in distinct),
        hash_threads,
    )
    return IndexedSequences(table, token_ids, occ, distinct)


def sequence_offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def span_offsets(offsets: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every sequence into consecutive spans of ``span`` patches (the last may be shorter).

    Returns (span offsets into the same patch array, owning sequence per span, span index within
    its sequence).  Empty sequences have no spans.
    """
    if span < 1:
        raise ValueError(f"span length must be >= 1, got {span}")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n_spans = -(-lengths // span)
    owner = np.repeat(np.arange(lengths.size), n_spans)
    first = np.repeat(np.cumsum(n_spans) - n_spans, n_spans)
    index = np.arange(owner.size) - first
    starts = offsets[:-1][owner] + index * span
    ends = np.minimum(starts + span, offsets[1:][owner])
    bounds = np.concatenate([starts, ends[-1:]]) if owner.size else np.zeros(1, np.int64)
    if owner.size and not np.array_equal(bounds[1:-1], ends[:-1]):
        # spans of consecutive sequences are contiguous only when no sequence is empty-adjacent;
        # they always are, since spans tile each sequence and sequences tile the patches
        raise AssertionError("span tiling is not contiguous")
    return bounds.astype(np.int64), owner.astype(np.int64), index.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def merge_tables(tables: Sequence[NgramTable]) -> NgramTable:
    """Add counts of n-grams with identical bytes (associative, commutative, canonical)."""
    if not tables:
        return empty_table()
    all_tokens = pa.concat_arrays([t.tokens.slice(FIRST_PATCH_ID) for t in tables])
    merged_tokens = pa.concat_arrays(
        [pa.array([START, END], type=pa.binary()), pc.unique(all_tokens).sort()]
    )
    grams_out, counts_out = [], []
    for n in ORDERS:
        rows, counts = [], []
        for t in tables:
            local = t.grams[n - 1]
            if local.shape[0] == 0:
                continue
            to_global = _token_map(t.tokens, merged_tokens)
            rows.append(to_global[local])
            counts.append(t.counts[n - 1])
        if not rows:
            grams_out.append(np.zeros((0, n), np.int32))
            counts_out.append(np.zeros(0, np.int64))
            continue
        g, c = _sum_rows(np.concatenate(rows), np.concatenate(counts))
        grams_out.append(g)
        counts_out.append(c)
    return NgramTable(merged_tokens, tuple(grams_out), tuple(counts_out))


def _token_map(local_tokens: pa.Array, merged_tokens: pa.Array) -> np.ndarray:
    idx = pc.index_in(local_tokens.slice(FIRST_PATCH_ID), value_set=merged_tokens.slice(2))
    return np.concatenate(
        [[START_ID, END_ID], idx.to_numpy(zero_copy_only=False).astype(np.int32) + FIRST_PATCH_ID]
    ).astype(np.int32)


def _sum_rows(rows: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows (lexicographic) with summed counts."""
    if rows.shape[0] == 0:
        return rows.astype(np.int32), np.zeros(0, np.int64)
    order = np.lexsort(rows.T[::-1])
    rows, counts = rows[order], counts[order]
    new = np.ones(rows.shape[0], dtype=bool)
    new[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    return rows[new].astype(np.int32), np.add.reduceat(counts, np.flatnonzero(new)).astype(np.int64)


def empty_table() -> NgramTable:
    return NgramTable(
        pa.array([START, END], type=pa.binary()),
        tuple(np.zeros((0, n), np.int32) for n in ORDERS),
        tuple(np.zeros(0, np.int64) for _ in ORDERS),
    )


def table_from_keys(orders: np.ndarray, keys: pa.Array, counts: np.ndarray) -> NgramTable:
    """Rebuild a table from stored rows (n, key, count) — e.g. ngram_index Parquet.

    Keys are split on 0x00 and unescaped; rows with the same (n, key) are summed.
    """
    orders = np.asarray(orders, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    keys = as_binary_array(keys)
    if not np.isin(orders, ORDERS).all():
        bad = orders[~np.isin(orders, ORDERS)][0]
        raise ValueError(f"n-gram order must be 1, 2 or 3, got {bad}")
    part_lists: list[pa.Array] = []
    for n in ORDERS:
        sel = np.flatnonzero(orders == n)
        sub = keys.take(pa.array(sel))
        if n == 1:
            part_lists.append(sub)
            continue
        split = pc.split_pattern(sub, pattern=SEP)
        lens = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        if sel.size and not np.all(lens == n):
            bad = int(np.flatnonzero(lens != n)[0])
            raise ValueError(f"{n}-gram key {sub[bad].as_py()!r} does not have {n} parts")
        part_lists.append(split)
    # the distinct patch bytes: 1-gram keys and unescaped non-sentinel parts of longer keys
    flat_parts = [part_lists[0]] + [pc.list_flatten(x) for x in part_lists[1:]]
    raw_parts = []
    for i, arr in enumerate(flat_parts):
        if i == 0:
            raw_parts.append(arr)
            continue
        sentinel = pc.or_(
            pc.equal(arr, pa.scalar(START, pa.binary())), pc.equal(arr, pa.scalar(END, pa.binary()))
        )
        raw_parts.append(_unescape_array(arr.filter(pc.invert(sentinel))))
    patches = pc.unique(pa.concat_arrays(raw_parts)) if raw_parts else pa.array([], pa.binary())
    tokens = pa.concat_arrays([pa.array([START, END], type=pa.binary()), patches.sort()])
    grams_out, counts_out = [], []
    for n, parts in zip(ORDERS, flat_parts, strict=True):
        sel = np.flatnonzero(orders == n)
        ids = _part_ids(parts, tokens, escaped=(n > 1)).reshape(-1, n)
        g, c = _sum_rows(ids, counts[sel])
        grams_out.append(g)
        counts_out.append(c)
    return NgramTable(tokens, tuple(grams_out), tuple(counts_out))


def _unescape_array(parts: pa.Array) -> pa.Array:
    data, offsets = hs.binary_buffers(parts)
    suspicious = np.flatnonzero(data == ESC)
    if not suspicious.size:
        return parts
    values = parts.to_pylist()
    for i in set(np.searchsorted(offsets, suspicious, side="right") - 1):
        values[int(i)] = unescape_part(values[int(i)])
    return pa.array(values, type=pa.binary())


def _part_ids(parts: pa.Array, tokens: pa.Array, *, escaped: bool) -> np.ndarray:
    if len(parts) == 0:
        return np.zeros(0, np.int32)
    if not escaped:
        idx = pc.index_in(parts, value_set=tokens.slice(FIRST_PATCH_ID))
        return idx.to_numpy(zero_copy_only=False).astype(np.int32) + FIRST_PATCH_ID
    # escaped parts: match against the escaped spelling of every token (sentinels bare)
    idx = pc.index_in(parts, value_set=escaped_tokens(tokens))
    if idx.null_count:
        raise ValueError("n-gram key part not found among tokens")
    return idx.to_numpy(zero_copy_only=False).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# HLLSets of sequences
# ---------------------------------------------------------------------------------------------


def sequence_hllsets(indexed: IndexedSequences, n_sequences: int, p: int) -> np.ndarray:
    """(n_sequences, 3, 2^P) uint32: the HLLSet of every sequence (empty ones stay zero)."""
    out = np.zeros((n_sequences, hs.NUM_LAYERS, 1 << hs.check_p(p)), dtype=np.uint32)
    for layer, n in enumerate(ORDERS):
        row_bits = hs.bits_of(indexed.table.hashes[layer], p)
        occ_bits = row_bits[indexed.inverse(n)]
        seq = indexed.occurrences.sequence[layer]
        # one (sequence, bit) pair per distinct combination keeps ufunc.at small
        pair = np.unique(seq * (32 << p) + occ_bits)
        out[:, layer, :] = hs.grouped_words(pair // (32 << p), pair % (32 << p), n_sequences, p)
    return out


def hllset_of_patches(patches: Sequence[bytes], p: int = hs.DEFAULT_P) -> hs.HLLSet:
    """HLLSet of one sequence of patches."""
    indexed = index_sequences(list(patches), sequence_offsets([len(patches)]))
    return hs.HLLSet(p, sequence_hllsets(indexed, 1, p)[0])
