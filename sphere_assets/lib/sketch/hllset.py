"""HLLSet sketches: 64-bit MurmurHash3 keys → (register, run) bits → per-layer bitmaps.

Hash
    ``h = MurmurHash3_x64_128(key, seed=0)`` low 64 bits, i.e. exactly
    ``mmh3.hash64(key, seed=0, signed=False)[0]``.  :func:`hash64_keys` / :func:`hash64_buffer`
    compute the same function over many keys in compiled code
    (:mod:`sphere_assets.lib.sketch.key_kernels`, no per-key Python work); :func:`hash64` is the
    scalar reference.

Bit of a hash
    ``reg = h & (2^P - 1)``, ``run = min(ctz(h >> P), 31)`` (31 when ``h >> P == 0``),
    ``bit = reg * 32 + run``.  Computed in compiled code
    (:func:`sphere_assets.lib.sketch.key_kernels.hash_bits`) as ``ctz((h >> P) | 2^31)``, which
    is the capped count, also for ``h >> P == 0``.

HLLSet
    Three layers (n-gram order n = 1, 2, 3), each ``2^P`` uint32 words; word ``reg`` has bit
    ``run`` set when some key of that layer hashed to ``(reg, run)``.  Serialized as
    little-endian uint32 words, one binary blob per layer.  Union / intersection / difference are
    word-wise OR / AND / AND-NOT.  The union is exact (sketch(A ∪ B) == sketch(A) | sketch(B));
    intersection and difference of sketches are the usual bitmap approximations.

Cardinality (Horvitz–Thompson)
    Cell ``c = (reg, j)`` receives a given distinct key with probability
    ``q_j = p_j / m`` where ``m = 2^P``, ``p_j = 2^-(j+1)`` for ``j < 31`` and ``p_31 = 2^-31``
    (the run is capped).  Under Poissonization the number of keys in a cell is
    ``Poisson(n q_j)`` and the cell is set (observed) with inclusion probability
    ``π_j(n) = 1 - exp(-n q_j)``.  The Horvitz–Thompson estimate of the population total
    ``n = Σ_c y_c`` (``y_c`` = keys in cell ``c``) weights each observed cell by its expected
    content given that it is observed, ``E[y_c | y_c ≥ 1] = n q_j / π_j(n)``; requiring the
    estimate to reproduce ``n`` gives the fixed point

        Σ_j B_j · q_j / (1 - exp(-n q_j)) = 1,         B_j = #registers with bit j set,

    whose left side is strictly decreasing in ``n``; its root is unique, at least the number of
    set bits, and coincides with the Poisson maximum-likelihood estimate (Ertl 2017).  It is
    solved by Newton's method started at the number of set bits (the function is convex and
    decreasing, so the iterates increase monotonically to the root).  An empty layer gives 0; a
    fully saturated layer gives ``inf``.  Relative standard error is about ``0.6 / sqrt(m)``
    (measured in tests/lib/sketch/test_hllset.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mmh3
import numpy as np
import pyarrow as pa

from sphere_assets.core.lazy import lazy_module

# numba (~200 ms, ~20 MB) loads on the first kernel call, not when the code location is loaded
# (every Dagster step process does that); compilation and its on-disk cache are unchanged.
kk = lazy_module("sphere_assets.lib.sketch.key_kernels")

SEED = 0
DEFAULT_P = 10
MIN_P = 4
MAX_P = 24
RUN_CAP = 31
WORD_BITS = 32
NUM_LAYERS = 3

# below this many keys a second hashing thread costs more than it saves (~15 ns per key)
_PARALLEL_MIN_KEYS = 50_000


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------


def hash64(key: bytes) -> int:
    """Scalar reference: low 64 bits of MurmurHash3_x64_128(key, seed=0), unsigned."""
    return mmh3.hash64(key, seed=SEED, signed=False)[0]


def check_p(p: int) -> int:
    if not isinstance(p, int | np.integer) or not MIN_P <= int(p) <= MAX_P:
        raise ValueError(f"HLLSet precision P must be an int in [{MIN_P}, {MAX_P}], got {p!r}")
    return int(p)


def hash64_buffer(
    data: np.ndarray, offsets: np.ndarray, *, threads: int | None = None
) -> np.ndarray:
    """Hash keys stored back to back in ``data`` (uint8); key i is ``data[offsets[i]:offsets[i+1]]``.

    Returns uint64 hashes equal to ``mmh3.hash64(key, seed=0, signed=False)[0]`` (compiled
    kernel :func:`sphere_assets.lib.sketch.key_kernels.hash_keys`).  ``threads`` (default: up to
    2, only for large batches) splits the keys; the kernel releases the GIL.
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    # the kernel reads raw memory: keys must lie inside data
    if offsets[0] < 0 or offsets[-1] > data.size or np.any(offsets[1:] < offsets[:-1]):
        raise ValueError("key offsets must be non-decreasing and within the data buffer")
    out = np.empty(n, dtype=np.uint64)
    if threads is None:
        threads = min(2, os.cpu_count() or 1) if n >= _PARALLEL_MIN_KEYS else 1
    split_range(n, threads, lambda lo, hi: kk.hash_keys(data, offsets, out, lo, hi))
    return out


def split_range(n: int, threads: int, work) -> None:
    """Run ``work(lo, hi)`` on ``threads`` consecutive slices of ``range(n)``, one per thread
    (the calling thread takes the first); ``work`` should release the GIL."""
    threads = max(1, min(int(threads), n))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64).tolist()
    if threads == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(max_workers=threads - 1) as pool:
        rest = [pool.submit(work, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True)]
        work(bounds[0], bounds[1])
        for future in rest:
            future.result()


def binary_buffers(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8, offsets int64) of a binary/large_binary Arrow array without copying data."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if keys.null_count:
        raise ValueError(f"cannot hash {keys.null_count} null key(s)")
    if pa.types.is_binary(keys.type) or pa.types.is_string(keys.type):
        off_dtype = np.int32
    elif pa.types.is_large_binary(keys.type) or pa.types.is_large_string(keys.type):
        off_dtype = np.int64
    else:
        raise TypeError(f"keys must be a binary Arrow array, got {keys.type}")
    _, off_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(off_buf, dtype=off_dtype)[keys.offset : keys.offset + len(keys) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    return data, offsets.astype(np.int64)


def hash64_keys(keys: pa.Array | list[bytes], *, threads: int | None = None) -> np.ndarray:
    """Vectorised ``mmh3.hash64(key, seed=0, signed=False)[0]`` over many keys."""
    if not isinstance(keys, pa.Array | pa.ChunkedArray):
        keys = pa.array(keys, type=pa.binary())
    data, offsets = binary_buffers(keys)
    return hash64_buffer(data, offsets, threads=threads)


# ---------------------------------------------------------------------------------------------
# Register / run / bit
# ---------------------------------------------------------------------------------------------


def reg_run(hashes: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """``reg = h & (2^P-1)`` (uint32) and ``run = min(ctz(h >> P), 31)`` (uint8)."""
    p = check_p(p)
    h = np.asarray(hashes, dtype=np.uint64)
    flat = np.ascontiguousarray(h.reshape(-1))
    reg = np.empty(flat.size, dtype=np.uint32)
    run = np.empty(flat.size, dtype=np.uint8)
    kk.hash_bits(flat, p, reg, run)  # compiled: one pass, no temporaries
    return reg.reshape(h.shape), run.reshape(h.shape)


def bits_of(hashes: np.ndarray, p: int) -> np.ndarray:
    """``bit = reg * 32 + run`` as int64, in ``[0, 32 * 2^P)``."""
    reg, run = reg_run(hashes, p)
    return reg.astype(np.int64) * WORD_BITS + run


def words_from_bits(bits: np.ndarray, p: int) -> np.ndarray:
    """One layer (2^P uint32 words) with the given bits set."""
    p = check_p(p)
    bits = np.asarray(bits, dtype=np.int64)
    words = np.zeros(1 << p, dtype=np.uint32)
    if bits.size:
        np.bitwise_or.at(
            words, bits >> 5, np.left_shift(np.uint32(1), (bits & 31).astype(np.uint32))
        )
    return words


def grouped_words(groups: np.ndarray, bits: np.ndarray, n_groups: int, p: int) -> np.ndarray:
    """Layers for many groups at once: ``out[g]`` has the bits of every ``(g, bit)`` pair set."""
    p = check_p(p)
    m = 1 << p
    out = np.zeros((n_groups, m), dtype=np.uint32)
    if bits.size:
        flat = np.asarray(groups, dtype=np.int64) * m + (np.asarray(bits, dtype=np.int64) >> 5)
        np.bitwise_or.at(
            out.reshape(-1), flat, np.left_shift(np.uint32(1), (bits & 31).astype(np.uint32))
        )
    return out


def set_bits(words: np.ndarray) -> np.ndarray:
    """Indices ``reg * 32 + run`` of the set bits of one layer, ascending."""
    regs = np.flatnonzero(words)  # sparse layers: unpack only the non-zero words
    w = np.ascontiguousarray(words[regs], dtype="<u4")
    unpacked = np.unpackbits(w.view(np.uint8), bitorder="little").reshape(regs.size, WORD_BITS)
    reg_idx, run = np.nonzero(unpacked)
    return regs[reg_idx].astype(np.int64) * WORD_BITS + run


# ---------------------------------------------------------------------------------------------
# Cardinality
# ---------------------------------------------------------------------------------------------


def run_probabilities() -> np.ndarray:
    """``p_j = P(run = j)`` for j = 0..31 (capped geometric)."""
    p = np.ldexp(1.0, -np.arange(1, WORD_BITS + 1))
    p[RUN_CAP] = np.ldexp(1.0, -RUN_CAP)
    return p


def bit_level_counts(words: np.ndarray) -> np.ndarray:
    """``B[..., j]`` = number of registers (last axis) whose bit j is set."""
    w = np.asarray(words, dtype=np.uint32)
    return np.stack(
        [((w >> np.uint32(j)) & np.uint32(1)).sum(axis=-1, dtype=np.int64) for j in range(32)],
        axis=-1,
    )


def cardinality_from_levels(levels: np.ndarray, p: int, *, max_iter: int = 200) -> np.ndarray:
    """Horvitz–Thompson / Poisson-ML estimate from per-level set-register counts (…, 32)."""
    p = check_p(p)
    m = float(1 << p)
    levels = np.asarray(levels, dtype=np.float64)
    batch_shape = levels.shape[:-1]
    levels = levels.reshape(-1, WORD_BITS)
    q = run_probabilities() / m
    set_total = levels.sum(axis=-1)
    saturated = np.all(levels >= m, axis=-1)
    n = np.maximum(set_total, 1.0)
    live = (set_total > 0) & ~saturated
    for _ in range(max_iter):
        if not live.any():
            break
        nq = n[live, None] * q
        incl = -np.expm1(-nq)  # π_j(n) = 1 - exp(-n q_j)
        b = levels[live]
        f = (b * q / incl).sum(axis=-1) - 1.0
        # d/dn [q / (1 - e^{-nq})] = -q^2 e^{-nq} / (1 - e^{-nq})^2
        df = -(b * q * q * np.exp(-nq) / (incl * incl)).sum(axis=-1)
        step = -f / df
        new = n[live] + step
        done = np.abs(step) <= 1e-12 * np.maximum(new, 1.0)
        n[live] = new
        idx = np.flatnonzero(live)
        live[idx[done]] = False
    out = np.where(saturated, np.inf, np.where(set_total > 0, n, 0.0))
    return out.reshape(batch_shape)


def cardinality(words: np.ndarray, p: int) -> np.ndarray | float:
    """Estimated number of distinct keys of a layer (…, 2^P) — float, or array for batches."""
    est = cardinality_from_levels(bit_level_counts(words), p)
    return float(est) if np.ndim(est) == 0 else est


# ---------------------------------------------------------------------------------------------
# HLLSet
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HLLSet:
    """Three layers (1-, 2-, 3-grams) of ``2^P`` uint32 words."""

    p: int
    words: np.ndarray  # (3, 2^P) uint32

    def __post_init__(self) -> None:
        check_p(self.p)
        w = np.asarray(self.words)
        if w.shape != (NUM_LAYERS, 1 << self.p) or w.dtype != np.uint32:
            raise ValueError(
                f"HLLSet words must be uint32 of shape (3, {1 << self.p}), got {w.dtype} {w.shape}"
            )

    # construction / serialization -----------------------------------------------------------
    @classmethod
    def empty(cls, p: int = DEFAULT_P) -> HLLSet:
        return cls(p, np.zeros((NUM_LAYERS, 1 << check_p(p)), dtype=np.uint32))

    @classmethod
    def from_hashes(cls, layer_hashes: list[np.ndarray], p: int = DEFAULT_P) -> HLLSet:
        if len(layer_hashes) != NUM_LAYERS:
            raise ValueError(f"need {NUM_LAYERS} layers of hashes, got {len(layer_hashes)}")
        return cls(p, np.stack([words_from_bits(bits_of(h, p), p) for h in layer_hashes]))

    @classmethod
    def from_layer_bytes(cls, layers: list[bytes], p: int) -> HLLSet:
        p = check_p(p)
        size = 4 << p
        for n, blob in enumerate(layers, start=1):
            if len(blob) != size:
                raise ValueError(f"HLLSet layer n={n}: {len(blob)} bytes, expected {size} (P={p})")
        return cls(p, np.stack([np.frombuffer(b, dtype="<u4").astype(np.uint32) for b in layers]))

    def layer_bytes(self) -> list[bytes]:
        """Little-endian uint32 words, one blob per layer."""
        return [self.words[i].astype("<u4").tobytes() for i in range(NUM_LAYERS)]

    # algebra ----------------------------------------------------------------------------------
    def _check(self, other: HLLSet) -> None:
        if not isinstance(other, HLLSet):
            raise TypeError(f"expected HLLSet, got {type(other).__name__}")
        if other.p != self.p:
            raise ValueError(f"HLLSet precision mismatch: P={self.p} vs P={other.p}")

    def union(self, other: HLLSet) -> HLLSet:
        self._check(other)
        return HLLSet(self.p, self.words | other.words)

    def intersection(self, other: HLLSet) -> HLLSet:
        self._check(other)
        return HLLSet(self.p, self.words & other.words)

    def difference(self, other: HLLSet) -> HLLSet:
        self._check(other)
        return HLLSet(self.p, self.words & ~other.words)

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HLLSet)
            and other.p == self.p
            and bool(np.array_equal(self.words, other.words))
        )

    def __hash__(self) -> int:  # content hash, stable across processes
        return hash64(self.words.astype("<u4").tobytes() + bytes([self.p]))

    # queries ---------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.words.any()

    def n_set_bits(self) -> np.ndarray:
        return np.bitwise_count(self.words).sum(axis=1, dtype=np.int64)

    def set_bits(self, layer: int) -> np.ndarray:
        """Set bit indices of layer ``layer`` (0-based: 0 → 1-grams)."""
        return set_bits(self.words[layer])

    def cardinality(self) -> np.ndarray:
        """Estimated distinct keys per layer (3,)."""
        return cardinality(self.words, self.p)

    def compare(self, other: HLLSet, method: str = "joint-ml") -> list:
        """Per layer, |A∖B|, |B∖A|, |A∩B|, Jaccard and BSS τ, ρ of ``self`` (A) and ``other`` (B)
        with standard errors (:mod:`sphere_assets.lib.sketch.hll_estimators`; the word-wise
        ``&`` / ``-`` above are bitmaps, biased as cardinality estimates)."""
        from sphere_assets.lib.sketch import hll_estimators  # imports this module

        self._check(other)
        return hll_estimators.compare_layers(self.words, other.words, self.p, method)
