"""Compiled kernels (numba) over byte-string keys and their integer codes.

Used by :mod:`sphere_assets.lib.sketch.ngrams` (index, dedupe-then-hash) and
:mod:`sphere_assets.lib.sketch.hllset` (hashing, HLLSet bits).  Every kernel is a plain loop
compiled with ``numba.njit(cache=True, nogil=True)``: no per-key Python work, and the GIL is
released so that callers can split big batches over threads.

MurmurHash3
    :func:`hash_keys` and :func:`hash_joined` compute the low 64 bits of
    ``MurmurHash3_x64_128(key, seed=0)``, i.e. exactly ``mmh3.hash64(key, seed=0,
    signed=False)[0]`` (tests compare them with the mmh3 C extension on every tail length):

    * :func:`hash_keys`: keys stored back to back, key ``i`` = ``data[offsets[i]:offsets[i+1]]``;
    * :func:`hash_joined`: keys that are joins of *pieces* (again ``data`` + ``offsets``), key
      ``r`` = ``piece[rows[r, 0]] + 0x00 + piece[rows[r, 1]] [+ 0x00 + piece[rows[r, 2]]]`` —
      the 2-/3-gram keys of :mod:`sphere_assets.lib.sketch.ngrams`, hashed without materialising
      them (each key is assembled in a small scratch buffer, then hashed).

    Both work on a row range ``[lo, hi)``.  :func:`hash_bits` turns hashes into HLLSet
    (register, run) pairs.

Hash tables (first-occurrence deduplication)
    Open addressing with linear probing, load factor at most 1/2; the slot of the key 16 ahead
    is prefetched while a key is looked up, since with few repeats the tables outgrow the caches.

    * :func:`dedupe_binary`: distinct byte strings in order of first occurrence and the id of
      every string — what ``pyarrow.compute.dictionary_encode`` returns.  Strings of at most 8
      bytes are compared inside the table (their bytes are the tag), longer ones by their bytes.
    * :func:`dedupe_windows`: distinct integer codes of n-gram windows ``padded[w : w + n]``
      (code ``((a*T) + b)*T + c``, computed on the fly) in order of first occurrence, the id of
      every window, each code's count and first window.

    Ids depend only on the input order (never on table capacity or hashing).

Sorting
    :func:`radix_sort_pairs` (int64 keys carrying int64 values), :func:`decode_codes` (codes back
    to rows of token ids) and :func:`sort_binary` (byte order of distinct strings, as
    ``pyarrow.compute.sort_indices``) put distinct n-grams into canonical order.

Compilation: the first call of each kernel in a process compiles it (about 10 s for all of
them); ``cache=True`` stores the machine code next to this module (``__pycache__``), so later
processes load it (well under a second in all).  Keys are read as little-endian 64-bit words.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

if sys.byteorder != "little":  # the word loads below read keys as little-endian uint64
    raise ImportError("sphere_assets.lib.sketch.key_kernels needs a little-endian machine")

_U64 = np.uint64
_C1 = _U64(0x87C37B91114253D5)
_C2 = _U64(0x4CF5AD432745937F)
_FMIX1 = _U64(0xFF51AFD7ED558CCD)
_FMIX2 = _U64(0xC4CEB9FE1A85EC53)
_ALL_ONES = _U64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = _U64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: Fibonacci hashing of table slots
_EMPTY = -1  # id of an empty table slot
_MIN_BITS = 10  # smallest hash table: 2^10 slots
_PREFETCH = 16  # look-ahead (keys) of the table prefetch
_PREFETCH_ID = 6  # look-ahead of the second prefetch in dedupe_windows
_RING = 32  # > _PREFETCH, a power of 2
_ID_MASK = 0xFFFFFFFF
_RADIX_BITS = 9  # widest digit of radix_sort_pairs
_INSERTION_MAX = 32  # sort_binary: runs up to this size are insertion-sorted

_jit = numba.njit(cache=True, nogil=True)


# ---------------------------------------------------------------------------------------------
# Raw memory access (LLVM intrinsics)
# ---------------------------------------------------------------------------------------------
# The per-key helpers take a raw byte pointer (from _address), not an array: passing an array
# to a jitted function costs an atomic reference-count increment and decrement per call.


@intrinsic
def _address(typingctx, array):
    """Raw data pointer of a C-contiguous array (valid while the array is alive)."""
    sig = types.CPointer(array.dtype)(array)

    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data

    return sig, codegen


@intrinsic
def _load64(typingctx, ptr, at):
    """Little-endian uint64 of bytes ``ptr[at : at + 8]`` (one unaligned load)."""
    sig = types.uint64(ptr, at)

    def codegen(context, builder, sig, args):
        byte = builder.gep(args[0], [args[1]])
        return builder.load(builder.bitcast(byte, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@intrinsic
def _store64(typingctx, ptr, at, word):
    """Write uint64 ``word`` little-endian to bytes ``ptr[at : at + 8]`` (one unaligned store)."""
    sig = types.void(ptr, at, word)

    def codegen(context, builder, sig, args):
        byte = builder.gep(args[0], [args[1]])
        builder.store(args[2], builder.bitcast(byte, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to fetch the cache line of ``array[index]`` (no effect on results)."""
    sig = types.void(array, index)

    def codegen(context, builder, sig, args):
        address = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        name = "llvm.prefetch." + byte_ptr.intrinsic_name  # p0 (opaque) or p0i8 (typed)
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        # read access, high temporal locality, data cache
        builder.call(
            fn, [builder.bitcast(builder.gep(address, [args[1]]), byte_ptr), i32(0), i32(3), i32(1)]
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _bswap64(typingctx, word):
    """``word`` with its 8 bytes reversed (little- to big-endian)."""
    sig = types.uint64(word)

    def codegen(context, builder, sig, args):
        return builder.bswap(args[0])

    return sig, codegen


# ---------------------------------------------------------------------------------------------
# MurmurHash3_x64_128, low 64 bits
# ---------------------------------------------------------------------------------------------


@_jit
def _rotl(x, r):
    return (x << _U64(r)) | (x >> _U64(64 - r))


@_jit
def _fmix64(k):
    k ^= k >> _U64(33)
    k *= _FMIX1
    k ^= k >> _U64(33)
    k *= _FMIX2
    k ^= k >> _U64(33)
    return k


@_jit
def _load_tail(ptr, at, n, end):
    """Little-endian uint64 of the ``n`` (1..8) bytes ``ptr[at : at + n]``, zero above.

    ``end``: bytes before it may be read; one masked word load when 8 bytes are readable.
    """
    if at + 8 <= end:
        return _load64(ptr, at) & (_ALL_ONES >> _U64(64 - 8 * n))
    word = _U64(0)
    for j in range(n):
        word |= _U64(ptr[at + j]) << _U64(8 * j)
    return word


@_jit
def _copy(src, begin, length, src_end, dst, at):
    """Copy ``length`` bytes ``src[begin:]`` to ``dst[at:]`` in 8-byte words.

    May write up to 7 bytes of garbage behind ``dst[at + length]`` (the caller's buffer has
    room; the bytes are overwritten or ignored); reads no further than ``src_end``.
    """
    k = 0
    while k < length and begin + k + 8 <= src_end:
        _store64(dst, at + k, _load64(src, begin + k))
        k += 8
    while k < length:
        dst[at + k] = src[begin + k]
        k += 1


@_jit
def murmur64(ptr, start, length, end):
    """``mmh3.hash64(bytes(ptr[start : start + length]), seed=0, signed=False)[0]``.

    ``end``: bytes before it may be read (it lets the tail be read as one masked word).
    """
    h1 = _U64(0)
    h2 = _U64(0)
    at = start
    for _ in range(length >> 4):
        k1 = _load64(ptr, at) * _C1
        k2 = _load64(ptr, at + 8) * _C2
        at += 16
        h1 ^= _rotl(k1, 31) * _C2
        h1 = (_rotl(h1, 27) + h2) * _U64(5) + _U64(0x52DCE729)
        h2 ^= _rotl(k2, 33) * _C1
        h2 = (_rotl(h2, 31) + h1) * _U64(5) + _U64(0x38495AB5)
    tail = length & 15
    if tail > 8:
        h2 ^= _rotl(_load_tail(ptr, at + 8, tail - 8, end) * _C2, 33) * _C1
    if tail > 0:
        h1 ^= _rotl(_load_tail(ptr, at, min(tail, 8), end) * _C1, 31) * _C2
    h1 ^= _U64(length)
    h2 ^= _U64(length)
    h1 += h2
    h2 += h1
    h1 = _fmix64(h1)
    h2 = _fmix64(h2)
    return h1 + h2


@_jit
def hash_keys(data, offsets, out, lo, hi):
    """``out[i] = murmur64`` of key ``data[offsets[i]:offsets[i+1]]`` for ``i`` in [lo, hi)."""
    ptr = _address(data)
    for i in range(lo, hi):
        out[i] = murmur64(ptr, offsets[i], offsets[i + 1] - offsets[i], data.size)


@_jit
def pack_pieces(data, offsets):
    """Pairs (first 8 bytes as a little-endian word, length) of the pieces
    ``data[offsets[j]:offsets[j+1]]``: the lookup table of :func:`hash_joined`, where a piece
    of at most 8 bytes then costs one memory access instead of two."""
    ptr = _address(data)
    n = offsets.size - 1
    packed = np.empty(2 * n, dtype=np.uint64)
    for j in range(n):
        length = offsets[j + 1] - offsets[j]
        packed[2 * j] = (
            _load_tail(ptr, offsets[j], min(length, 8), data.size) if length else _U64(0)
        )
        packed[2 * j + 1] = length
    return packed


@_jit
def hash_joined(data, offsets, packed, rows, out, lo, hi):
    """``out[r] = murmur64`` of the pieces ``rows[r, :]`` joined with 0x00, for ``r`` in [lo, hi).

    Piece ``j`` is ``data[offsets[j]:offsets[j+1]]``; ``packed`` is :func:`pack_pieces` of
    them.  The pieces of row ``r + 16`` are prefetched while row ``r`` is hashed (rows point
    anywhere into the pieces).
    """
    n = rows.shape[1]
    longest = 0
    for j in range(offsets.size - 1):
        longest = max(longest, offsets[j + 1] - offsets[j])
    scratch = np.zeros(n * (longest + 1) + 8, dtype=np.uint8)  # + 8: room for word copies
    key = _address(scratch)
    src = _address(data)
    for r in range(lo, hi):
        if r + _PREFETCH < hi:
            for col in range(n):
                _prefetch(packed, 2 * np.int64(rows[r + _PREFETCH, col]))
        size = 0
        for col in range(n):
            if col:
                scratch[size] = 0
                size += 1
            piece = np.int64(rows[r, col])
            length = np.int64(packed[2 * piece + 1])
            if length <= 8:
                _store64(key, size, packed[2 * piece])
            else:
                _copy(src, offsets[piece], length, data.size, key, size)
            size += length
        out[r] = murmur64(key, 0, size, scratch.size)


@_jit
def hash_bits(hashes, p, reg, run):
    """HLLSet bits of every hash: ``reg = h & (2^p - 1)``, ``run = min(ctz(h >> p), 31)``.

    Setting bit 31 first caps the count at 31, including for ``h >> p == 0``.
    """
    mask = (_U64(1) << _U64(p)) - _U64(1)
    for i in range(hashes.size):
        h = hashes[i]
        reg[i] = h & mask
        run[i] = trailing_zeros((h >> _U64(p)) | _U64(1 << 31))


# ---------------------------------------------------------------------------------------------
# First-occurrence deduplication
# ---------------------------------------------------------------------------------------------


@_jit
def _table_bits(n_keys):
    """log2 of the capacity that keeps ``n_keys`` at load factor <= 1/2."""
    bits = _MIN_BITS
    while (1 << bits) < 2 * n_keys:
        bits += 1
    return bits


@_jit
def _tag(ptr, start, length, limit):
    """64-bit table tag of a byte string: its bytes as a little-endian word when it has at most
    8 (with the length, equal tags then mean equal strings), else a hash (equal tags still need
    a byte comparison)."""
    if length <= 8:
        return _load_tail(ptr, start, length, limit) if length else _U64(0)
    h = _U64(length) * _GOLDEN
    at = start
    end = start + length
    while end - at >= 8:
        h = _rotl((h ^ _load64(ptr, at)) * _C1, 29)
        at += 8
    if end > at:
        h = _rotl((h ^ _load_tail(ptr, at, end - at, limit)) * _C2, 29)
    return _fmix64(h)


@_jit
def _slot(key, bits):
    """Fibonacci hashing: the top ``bits`` bits of ``key * 2^64/phi``."""
    return np.int64((key * _GOLDEN) >> _U64(64 - bits))


@_jit
def _same_bytes(ptr, a, b, length):
    k = 0
    while length - k >= 8:
        if _load64(ptr, a + k) != _load64(ptr, b + k):
            return False
        k += 8
    while k < length:
        if ptr[a + k] != ptr[b + k]:
            return False
        k += 1
    return True


@_jit
def _insert_all(table, bits):
    """The slots of ``table`` (pairs: key, value; value -1 = empty) re-inserted into a table
    of ``2^bits`` slots."""
    grown = np.full(2 << bits, _EMPTY, dtype=np.int64)
    mask = (1 << bits) - 1
    for old in range(table.size // 2):
        if table[2 * old + 1] != _EMPTY:
            key = table[2 * old]
            s = _slot(_U64(key), bits)
            while grown[2 * s + 1] != _EMPTY:
                s = (s + 1) & mask
            grown[2 * s] = key
            grown[2 * s + 1] = table[2 * old + 1]
    return grown


@_jit
def dedupe_binary(data, offsets):
    """(id per string int32, index of the first occurrence of every id int64).

    Ids are numbered in order of first occurrence (as Arrow's ``dictionary_encode``).  Slots
    hold (tag, length << 32 | id) side by side, so strings of at most 8 bytes are compared
    without touching their bytes; the slot of string ``i + 16`` is prefetched while string
    ``i`` is looked up (the table outgrows the caches when most strings are distinct).
    """
    ptr = _address(data)
    limit = data.size
    n = offsets.size - 1
    ids = np.empty(n, dtype=np.int32)
    first = np.empty(max(n, 1), dtype=np.int64)
    bits = _table_bits(min(n, 1 << 16))
    table = np.full(2 << bits, _EMPTY, dtype=np.int64)  # slot s: tag at 2s, length|id at 2s+1
    count = 0
    for i in range(n):
        ahead = i + _PREFETCH
        if ahead < n:
            tag = _tag(ptr, offsets[ahead], offsets[ahead + 1] - offsets[ahead], limit)
            _prefetch(table, 2 * _slot(tag, bits))
        start = offsets[i]
        length = offsets[i + 1] - start
        tag = _tag(ptr, start, length, limit)
        key = np.int64(tag)
        mask = (1 << bits) - 1
        slot = _slot(tag, bits)
        while True:
            entry = table[2 * slot + 1]
            if entry == _EMPTY:
                found = count
                table[2 * slot] = key
                table[2 * slot + 1] = (length << 32) | found
                first[found] = i
                count += 1
                break
            if table[2 * slot] == key and (entry >> 32) == length:
                found = entry & 0x7FFFFFFF
                if length <= 8:
                    break
                other = offsets[first[found]]
                if _same_bytes(ptr, other, start, length):
                    break
            slot = (slot + 1) & mask
        ids[i] = found
        if 2 * count > (1 << bits):
            bits += 1
            table = _insert_all(table, bits)
    return ids, first[:count].copy()


@_jit
def _window_code(padded, w, n, n_tokens):
    code = np.int64(padded[w])
    for j in range(1, n):
        code = code * n_tokens + padded[w + j]
    return code


@_jit
def dedupe_windows(padded, windows, n, n_tokens):
    """Distinct codes of the windows ``padded[w : w + n]``, ``w`` in ``windows``.

    Returns (id per window int32, distinct codes int64, counts int64, first window int64), ids
    and codes in order of first occurrence.  The caller guarantees ``n_tokens ** n < 2^63``.

    A slot holds ``fingerprint << 32 | id`` (32 bits of the code's hash; a matching fingerprint
    is confirmed against ``codes[id]``).  The table is sized for every window being distinct
    (it never grows) and is kept small (8 bytes a slot): with few repeats it outgrows the
    caches, so window ``i + 16``'s slot is prefetched, and at ``i + 6`` the code and count of
    the id found there, while window ``i`` is looked up.
    """
    m = windows.size
    ids = np.empty(m, dtype=np.int32)
    codes = np.empty(max(m, 1), dtype=np.int64)
    counts = np.zeros(max(m, 1), dtype=np.int64)
    first = np.empty(max(m, 1), dtype=np.int64)
    bits = _table_bits(m)
    mask = (1 << bits) - 1
    table = np.full(1 << bits, _EMPTY, dtype=np.int64)
    ahead = np.empty(_RING, dtype=np.int64)  # codes of the windows i .. i + _PREFETCH
    for i in range(min(m, _PREFETCH)):
        ahead[i] = _window_code(padded, windows[i], n, n_tokens)
    count = 0
    for i in range(m):
        code = ahead[i & (_RING - 1)]
        if i + _PREFETCH < m:
            later = _window_code(padded, windows[i + _PREFETCH], n, n_tokens)
            ahead[(i + _PREFETCH) & (_RING - 1)] = later
            _prefetch(table, _slot(_U64(later), bits))
        if i + _PREFETCH_ID < m:
            entry = table[_slot(_U64(ahead[(i + _PREFETCH_ID) & (_RING - 1)]), bits)]
            if entry != _EMPTY:
                _prefetch(codes, entry & _ID_MASK)
                _prefetch(counts, entry & _ID_MASK)
        hashed = _U64(code) * _GOLDEN
        slot = np.int64(hashed >> _U64(64 - bits))
        fingerprint = np.int64(hashed & _U64(_ID_MASK)) << 32
        while True:
            entry = table[slot]
            if entry == _EMPTY:
                found = count
                table[slot] = fingerprint | found
                codes[found] = code
                first[found] = i
                count += 1
                break
            if (entry & ~_ID_MASK) == fingerprint and codes[entry & _ID_MASK] == code:
                found = entry & _ID_MASK
                break
            slot = (slot + 1) & mask
        ids[i] = found
        counts[found] += 1
    return ids, codes[:count].copy(), counts[:count].copy(), first[:count].copy()


# ---------------------------------------------------------------------------------------------
# Sorting
# ---------------------------------------------------------------------------------------------


@_jit
def radix_sort_pairs(keys, values, key_bits):
    """(keys ascending, ``values`` in the same order): a stable sort of non-negative int64
    ``keys`` below ``2^key_bits`` that carries ``values`` (int64) along.

    LSD radix sort with digits of at most 9 bits (wider digits thrash the TLB when
    scattering); a digit that is equal in every key is skipped.  Carrying the values avoids
    a random gather afterwards, which costs as much as the sort on 10^6 keys.
    """
    n = keys.size
    current = keys.copy()
    payload = values.copy()
    if n < 2:
        return current, payload
    spare = np.empty(n, dtype=np.int64)
    spare_payload = np.empty(n, dtype=np.int64)
    passes = max(1, -(-key_bits // _RADIX_BITS))
    width = -(-key_bits // passes)
    mask = (1 << width) - 1
    starts = np.empty((1 << width) + 1, dtype=np.int64)
    for step in range(passes):
        shift = step * width
        starts[:] = 0
        for i in range(n):
            starts[((current[i] >> shift) & mask) + 1] += 1
        if starts.max() == n:  # one bucket holds everything: nothing to reorder
            continue
        for b in range(mask + 1):
            starts[b + 1] += starts[b]
        for i in range(n):
            digit = (current[i] >> shift) & mask
            at = starts[digit]
            starts[digit] = at + 1
            spare[at] = current[i]
            spare_payload[at] = payload[i]
        current, spare = spare, current
        payload, spare_payload = spare_payload, payload
    return current, payload


@_jit
def decode_codes(codes, n, n_tokens):
    """(V, n) int32 rows of token ids of the codes ``((a*T) + b)*T + c`` (``T = n_tokens``)."""
    rows = np.empty((codes.size, n), dtype=np.int32)
    for i in range(codes.size):
        rest = codes[i]
        for col in range(n - 1, -1, -1):
            rows[i, col] = rest % n_tokens
            rest //= n_tokens
    return rows


@_jit
def _prefix_word(ptr, start, length, limit):
    """Big-endian uint64 (as int64 bits) of the first ``min(length, 8)`` bytes, zero-padded:
    unsigned word order is the byte order of those (padded) prefixes."""
    if length <= 0:
        return np.int64(0)
    return np.int64(_bswap64(_load_tail(ptr, start, min(length, 8), limit)))


@_jit
def _key_less(a_word, a_class, b_word, b_class):
    """(word unsigned, class) order of two sort keys of :func:`sort_binary`."""
    if a_word != b_word:
        return _U64(a_word) < _U64(b_word)
    return a_class < b_class


@_jit
def sort_binary(data, offsets):
    """Order (int64) of the *distinct* byte strings ``data[offsets[i]:offsets[i+1]]``,
    ascending in byte order (as ``pyarrow.compute.sort_indices``).

    Strings sharing their first ``d`` bytes are ordered by the key (the 8 bytes from ``d`` as
    a zero-padded big-endian word, ``min(remaining length, 9)``): among equal words a string
    with at most 8 bytes left is a prefix of the longer ones, so the length decides.  Only
    runs of equal words whose strings all have 9+ bytes left go one level deeper (``d + 8``).
    Big runs are radix-sorted (stable: by length class, then by the word), small ones
    insertion-sorted.
    """
    ptr = _address(data)
    limit = data.size
    n = offsets.size - 1
    order = np.arange(n)
    words = np.empty(n, dtype=np.int64)
    classes = np.empty(n, dtype=np.int64)
    # stack of runs (lo, hi, depth) still to sort: disjoint, so at most n / 2 of them
    stack = np.empty((n // 2 + 1, 3), dtype=np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, 0
    top = 1 if n > 1 else 0
    while top:
        top -= 1
        lo, hi, depth = stack[top, 0], stack[top, 1], stack[top, 2]
        for k in range(lo, hi):
            start = offsets[order[k]] + depth
            remaining = offsets[order[k] + 1] - start
            words[k] = _prefix_word(ptr, start, remaining, limit)
            classes[k] = min(remaining, 9)
        if hi - lo <= _INSERTION_MAX:
            for k in range(lo + 1, hi):
                i, w, c = order[k], words[k], classes[k]
                j = k - 1
                while j >= lo and _key_less(w, c, words[j], classes[j]):
                    order[j + 1], words[j + 1], classes[j + 1] = order[j], words[j], classes[j]
                    j -= 1
                order[j + 1], words[j + 1], classes[j + 1] = i, w, c
        else:
            _, by_class = radix_sort_pairs(classes[lo:hi], np.arange(hi - lo), 4)
            sorted_words, position = radix_sort_pairs(words[lo:hi][by_class], by_class, 64)
            order[lo:hi] = order[lo:hi][position]
            classes[lo:hi] = classes[lo:hi][position]
            words[lo:hi] = sorted_words
        k = lo
        while k < hi:  # runs of equal words with 9+ bytes left: compare the next 8 bytes
            end = k + 1
            while end < hi and words[end] == words[k] and classes[end] == classes[k]:
                end += 1
            if end - k > 1 and classes[k] == 9:
                stack[top, 0], stack[top, 1], stack[top, 2] = k, end, depth + 8
                top += 1
            k = end
    return order
