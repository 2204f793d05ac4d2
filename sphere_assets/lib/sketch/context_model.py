"""Higher-order patch context counts: the corpus memory that ranks restore candidates.

Why
    An HLLSet records *which* 1-/2-/3-grams occur in a span, not how often nor in which order.
    When a span repeats a 2-gram (whitespace runs, ``", "``, ``"\\n   "`` …) several orderings
    explain the same set — segments between two occurrences of the repeated 2-gram can swap —
    and every complete trail of the 3-gram graph has the *same* adjacency score (the same
    edges, in another order).  The corpus that was ingested does know the order: its longer
    n-grams.  Counting patch n-grams of order 3..N (default N = 6) once at ingest time lets
    restore score a candidate ordering with a backed-off N-gram model, which is what turns a
    set back into the ordering it came from.

Keys
    A token's hash is the 64-bit hash of its 2-/3-gram key piece (``mmh3.hash64(piece, seed=0,
    signed=False)[0]`` of the escaped patch, or of ``_START_`` / ``_END_`` — see
    :mod:`sphere_assets.lib.sketch.ngrams`), so it depends only on bytes.  An n-gram's context key
    is the concatenation of its n token hashes as little-endian uint64 (8·n bytes) and its
    context hash is MurmurHash3 of that key (same function).  Different orders have keys of
    different lengths.  Hashes are 64-bit: with M distinct entries a false match has
    probability about M²/2⁶⁵ (≈ 2·10⁻⁹ for 280k entries) and would only perturb a ranking.

Counts
    Over every sequence padded once with ``_START_``/``_END_`` (as for the n-gram index), every
    window of n = 3..N tokens that does not run past the sequence's ``_END_`` is counted.  The
    table is (sorted distinct hashes, counts); shards merge by adding counts of equal hashes,
    which is associative and commutative, so shard + merge equals counting everything at once.

Score (stupid backoff, Brants et al. 2007)
    Appending token c after history h: for n = N down to 4, the first n whose n-gram
    ``h[-(n-1):] + c`` was seen scores ``ln(count(h[-(n-1):] + c) / count(h[-(n-1):])) +
    (N - n)·ln 0.4``; when none was seen it scores the 3-gram adjacency weight (the smoothed
    ``ln P(c | a, b)``) ``+ (N - 3)·ln 0.4``.  Every occurrence of an n-gram is also an
    occurrence of its (n-1)-prefix, so the ratio is a probability in (0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import mmh3
import numpy as np
import pyarrow as pa

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng

MIN_ORDER = 3  # order-3 counts are the denominators of order-4 probabilities
DEFAULT_MAX_ORDER = 6
MAX_MAX_ORDER = 16
BACKOFF = 0.4
LOG_BACKOFF = math.log(BACKOFF)
FORMAT = "sphere.context.counts/v1"
_MEMO_LIMIT = 1 << 20


def check_max_order(max_order: int) -> int:
    if not isinstance(max_order, int | np.integer) or not (
        max_order == 0 or 4 <= int(max_order) <= MAX_MAX_ORDER
    ):
        raise ValueError(
            f"context max_order must be 0 (off) or an int in [4, {MAX_MAX_ORDER}], "
            f"got {max_order!r}"
        )
    return int(max_order)


def token_hashes(tokens: pa.Array) -> np.ndarray:
    """uint64 hash of every token id's key piece (START/END sentinels, escaped patches)."""
    return hs.hash64_keys(ng.escaped_tokens(tokens))


def context_hashes(piece_hashes: np.ndarray) -> np.ndarray:
    """Context hash of each row of ``piece_hashes (W, n)``: MurmurHash3 of the row's 8·n
    little-endian bytes."""
    rows = np.ascontiguousarray(piece_hashes, dtype="<u8")
    width = rows.shape[1] * 8
    offsets = np.arange(rows.shape[0] + 1, dtype=np.int64) * width
    return hs.hash64_buffer(rows.view(np.uint8).reshape(-1), offsets)


@dataclass(frozen=True, eq=False)
class ContextCounts:
    max_order: int
    hashes: np.ndarray  # (M,) uint64, ascending, distinct
    counts: np.ndarray  # (M,) int64, > 0

    @property
    def size(self) -> int:
        return int(self.hashes.size)

    def equal(self, other: ContextCounts) -> bool:
        return (
            self.max_order == other.max_order
            and np.array_equal(self.hashes, other.hashes)
            and np.array_equal(self.counts, other.counts)
        )

    def tensors(self) -> dict[str, np.ndarray]:
        return {"hashes": self.hashes, "counts": self.counts}

    def tensor_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "min_order": str(MIN_ORDER),
            "max_order": str(self.max_order),
            "entries": str(self.size),
            "key": "mmh3 x64 low 64 of the n token-piece hashes as little-endian uint64",
        }

    @classmethod
    def from_tensors(
        cls, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
    ) -> ContextCounts:
        if metadata.get("format") != FORMAT:
            raise ValueError(f"context counts: format {metadata.get('format')!r}, want {FORMAT}")
        hashes = np.asarray(arrays["hashes"], dtype=np.uint64)
        counts = np.asarray(arrays["counts"], dtype=np.int64)
        if hashes.shape != counts.shape or hashes.ndim != 1:
            raise ValueError("context counts: hashes and counts must be equal-length vectors")
        if hashes.size and (np.any(np.diff(hashes) == 0) or np.any(hashes[1:] < hashes[:-1])):
            raise ValueError("context counts: hashes must be strictly ascending")
        if np.any(counts <= 0):
            raise ValueError("context counts: counts must be positive")
        return cls(check_max_order(int(metadata["max_order"])), hashes, counts)


def _sum_by_hash(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distinct, inverse = np.unique(hashes, return_inverse=True)
    return distinct.astype(np.uint64), np.bincount(
        inverse.reshape(-1), weights=counts, minlength=distinct.size
    ).astype(np.int64)


def count_contexts(
    token_ids: np.ndarray,
    offsets: np.ndarray,
    tokens: pa.Array,
    max_order: int = DEFAULT_MAX_ORDER,
) -> ContextCounts:
    """Counts of every padded n-gram window, n = 3..max_order, of the sequences
    ``token_ids[offsets[i]:offsets[i+1]]`` (ids into ``tokens``, an n-gram token table)."""
    max_order = check_max_order(max_order)
    if max_order == 0:
        return ContextCounts(0, np.zeros(0, np.uint64), np.zeros(0, np.int64))
    occ = ng.occurrences(token_ids, offsets)
    padded = occ.padded
    piece = token_hashes(tokens)[padded]
    is_end = padded == ng.END_ID
    # a window [w, w+n) stays inside one sequence iff no END precedes its last position
    ok = ~is_end
    hashes, counts = [], []
    for n in range(MIN_ORDER, max_order + 1):
        if padded.size < n:
            break
        inside = ok[: padded.size - n + 1].copy()
        for j in range(1, n - 1):
            inside &= ok[j : padded.size - n + 1 + j]
        starts = np.flatnonzero(inside)
        if starts.size == 0:
            break
        rows = np.stack([piece[starts + j] for j in range(n)], axis=1)
        hashes.append(context_hashes(rows))
        counts.append(np.ones(starts.size, np.int64))
    if not hashes:
        return ContextCounts(max_order, np.zeros(0, np.uint64), np.zeros(0, np.int64))
    distinct, summed = _sum_by_hash(np.concatenate(hashes), np.concatenate(counts))
    return ContextCounts(max_order, distinct, summed)


def window_total(lengths: np.ndarray, max_order: int) -> int:
    """How many windows :func:`count_contexts` counts over sequences of ``lengths`` patches:
    a sequence of L >= 1 patches (L + 2 padded tokens) has max(0, L + 3 - n) windows of order
    n = 3..max_order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    if check_max_order(max_order) == 0:
        return 0
    return int(sum(np.maximum(lengths + 3 - n, 0).sum() for n in range(MIN_ORDER, max_order + 1)))


def count_patch_contexts(
    patches: pa.Array, offsets: np.ndarray, max_order: int = DEFAULT_MAX_ORDER
) -> ContextCounts:
    """:func:`count_contexts` straight from patch bytes (tokenized here)."""
    patches = ng.as_binary_array(patches)
    token_ids, tokens = ng.tokenize(patches, canonical=False)
    return count_contexts(token_ids, offsets, tokens, max_order)


def merge(parts: list[ContextCounts]) -> ContextCounts:
    """Add the counts of equal hashes (associative, commutative)."""
    if not parts:
        raise ValueError("context merge needs at least one part")
    orders = {p.max_order for p in parts}
    if len(orders) != 1:
        raise ValueError(f"context parts were counted with different max orders {sorted(orders)}")
    distinct, summed = _sum_by_hash(
        np.concatenate([p.hashes for p in parts]), np.concatenate([p.counts for p in parts])
    )
    return ContextCounts(orders.pop(), distinct, summed)


class ContextScorer:
    """Backed-off N-gram log-probabilities over the token ids of one token table.

    Counts are looked up by binary search in the sorted context hashes (no table of every
    entry is built, so the arrays may be memory-mapped views and a scorer costs O(1) to make:
    :meth:`from_arrays`); ``step`` is called per beam expansion, so n-gram counts are memoised
    by token-id tuple.
    """

    def __init__(self, counts: ContextCounts, tokens: pa.Array):
        self._init(counts.max_order, token_hashes(tokens), counts.hashes, counts.counts)

    @classmethod
    def from_arrays(
        cls, max_order: int, piece_hashes: np.ndarray, hashes: np.ndarray, counts: np.ndarray
    ) -> ContextScorer:
        """A scorer over given arrays, not copied nor scanned: ``piece_hashes`` (T,) uint64
        (:func:`token_hashes` of the token table), ``hashes`` (M,) uint64 strictly ascending
        and ``counts`` (M,) int64 > 0 (a :class:`ContextCounts`' arrays, as stored)."""
        if hashes.shape != counts.shape or hashes.ndim != 1 or piece_hashes.ndim != 1:
            raise ValueError("context counts: hashes and counts must be equal-length vectors")
        scorer = cls.__new__(cls)
        scorer._init(check_max_order(max_order), piece_hashes, hashes, counts)
        return scorer

    def _init(self, max_order, piece_hashes, hashes, counts) -> None:
        self.max_order = max_order
        self.piece_hashes = np.asarray(piece_hashes, dtype="<u8")
        # 8-byte little-endian pieces sliced straight from the (possibly mapped) buffer
        self._piece_bytes = memoryview(self.piece_hashes).cast("B")
        self._hashes = hashes
        self._counts = counts
        self._memo: dict[tuple[int, ...], int] = {}

    @property
    def history(self) -> int:
        """Tokens of history a step can use."""
        return self.max_order - 1

    def count(self, ids: tuple[int, ...]) -> int:
        """Corpus count of the n-gram of token ids ``ids`` (0 if never seen)."""
        got = self._memo.get(ids)
        if got is None:
            pieces = self._piece_bytes
            key = b"".join([pieces[8 * i : 8 * i + 8] for i in ids])
            h = mmh3.hash64(key, seed=hs.SEED, signed=False)[0]
            pos = int(np.searchsorted(self._hashes, np.uint64(h)))
            found = pos < self._hashes.size and int(self._hashes[pos]) == h
            got = int(self._counts[pos]) if found else 0
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[ids] = got
        return got

    def step(self, history: tuple[int, ...], token: int, base: float) -> float:
        """Log-score of ``token`` after ``history`` (oldest first); ``base`` = 3-gram weight."""
        top = self.max_order
        for n in range(min(top, len(history) + 1), MIN_ORDER, -1):
            context = history[len(history) - (n - 1) :]
            seen = self.count(context + (token,))
            if seen:
                return math.log(seen / self.count(context)) + (top - n) * LOG_BACKOFF
        return base + (top - MIN_ORDER) * LOG_BACKOFF
