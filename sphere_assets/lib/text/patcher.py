"""BLT entropy patching: per-byte entropies from the entropy model and BLT's patch-start rule.

Pure numpy/torch (no Dagster).

Tokens and entropies
    An article of ``n`` bytes is tokenized as ``x = [BOS] + [b + 4 for b in utf8]`` (``T = n+1``
    tokens; token position ``p >= 1`` holds byte offset ``p - 1``, :func:`token_to_byte_offset`).
    ``H_t = -Σ_v softmax(z_t)_v · log_softmax(z_t)_v`` (nats, over all 260 logits) is the
    entropy of the model's prediction of token ``t+1`` after reading ``x_0..x_t``. So the entropy
    *of byte* ``i`` (the uncertainty before it was seen) is ``H_i`` (:func:`byte_entropies`).
    ``H`` is computed chunk by chunk, each layer's keys/values carried into the next chunk
    (``entropy_inference.iter_hidden_chunks``): every position gets its full context, memory stays
    O(chunk) however long the article.

Many articles (:func:`patch_articles`)
    In this process, or spread over worker processes that each hold a model copy
    (``model_workers``), in batches of whole articles; results come back in input order and
    bit-identical either way.

Patch-start rule (BLT ``find_entropy_patch_start_ids``, reproduced exactly)
    Token positions 0 and 1 always start patches. With ``E = H[1:]`` (``E_j = H_{j+1}``):

    * global mode:     ``start at j+2  iff  E_j > θ``
    * monotonic mode:  ``start at j+2  iff  E_j - E_{j-1} > θ`` for ``j >= 1``, and always for
      ``j = 0`` (BLT sets ``mask[:, 0] = True`` in ``patch_start_mask_from_entropy_with_
      monotonicity``, so token 2 always starts a patch in this mode)

    Starts at ``T`` or beyond (from ``E_{T-2}``, which predicts past the end) are dropped.
    Then ``max_patch_length`` splits every longer patch into ``[m, m, ..., rest]`` (BLT's
    ``split_large_numbers``), i.e. extra starts at ``s + k·m``.
    The BOS token forms its own one-token patch (positions 0 and 1 are both starts); dropping it
    and shifting by one gives the byte patches: byte 0 always starts; byte ``i >= 1`` starts iff
    ``H_i > θ`` (global) or, in monotonic mode, ``i = 1`` or ``H_i - H_{i-1} > θ``.
    Default mode: **global** (the BLT paper's entropy patching); monotonic is selectable.

Threshold calibration (:func:`calibrate_threshold`)
    The mean patch size ``n_bytes / n_patches`` is a non-decreasing step function of θ (a higher
    θ removes starts; removing a start never increases the count of max-length pieces). It only
    changes at the candidate values (``E_j`` or ``E_j - E_{j-1}``), so bisection over the sorted
    unique candidates finds the step closest to the target in O(log n) evaluations; θ is put
    midway between adjacent candidates so it is robust on new text.

Text of a patch
    ``patch`` keeps the exact bytes (concatenating an article's patches reproduces it). ``text``
    is ``patch.decode("utf-8", errors="replace")``: a patch that splits a multi-byte character
    shows U+FFFD for the partial sequence on each side; reassembly must use ``patch``.

Per-patch statistics over the patch's byte entropies: mean, max and first (``H`` at the patch's
first byte, the value that triggered the boundary in global mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sphere_assets.lib.text.entropy_inference import entropies_from_hidden, iter_hidden_chunks
from sphere_assets.lib.text.entropy_model import ByteEntropyModel, bytes_to_tokens
from sphere_assets.lib.text.model_workers import MAX_BATCH_BYTES, ModelWorkers, map_articles

PATCHING_MODES = ("global", "monotonic")
DEFAULT_MODE = "global"
DEFAULT_TARGET_MEAN_PATCH_BYTES = 4.5
DEFAULT_MAX_PATCH_LENGTH = 128

SIZE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("<=4", 1, 4),
    ("5-12", 5, 12),
    ("13-24", 13, 24),
    ("25-48", 25, 48),
    ("49-127", 49, 127),
    (">=128", 128, None),
)


def _check_mode(mode: str) -> None:
    if mode not in PATCHING_MODES:
        raise ValueError(f"patching mode must be one of {PATCHING_MODES}, got '{mode}'")


# ---------------------------------------------------------------------------------------------
# Offsets
# ---------------------------------------------------------------------------------------------


def token_to_byte_offset(position: np.ndarray | int) -> np.ndarray | int:
    """Token position ``p >= 1`` -> byte offset ``p - 1`` (position 0 is BOS, no byte)."""
    if np.any(np.asarray(position) < 1):
        raise ValueError("token position 0 is BOS and has no byte offset")
    return position - 1


def byte_to_token_position(offset: np.ndarray | int) -> np.ndarray | int:
    """Byte offset ``i`` -> token position ``i + 1``."""
    if np.any(np.asarray(offset) < 0):
        raise ValueError("byte offsets are non-negative")
    return offset + 1


# ---------------------------------------------------------------------------------------------
# Entropies
# ---------------------------------------------------------------------------------------------


def token_entropies(
    model: ByteEntropyModel,
    tokens: np.ndarray,
    chunk_size: int | None = None,
    context: int | None = None,
) -> np.ndarray:
    """``H_t`` in nats for every token position, float32 ``[T]``, in bounded memory."""
    out = np.empty(len(tokens), dtype=np.float32)
    for start, hidden in iter_hidden_chunks(model, tokens, chunk_size, context):
        ent = entropies_from_hidden(model, hidden)
        out[start : start + ent.shape[0]] = ent.cpu().numpy()
    return out


def article_entropies(
    model: ByteEntropyModel,
    data: bytes,
    chunk_size: int | None = None,
    context: int | None = None,
) -> np.ndarray:
    """Token entropies ``H`` (length ``len(data) + 1``) of ``[BOS] + data``."""
    return token_entropies(model, bytes_to_tokens(data, dtype=np.uint16), chunk_size, context)


def byte_entropies(token_entropy: np.ndarray) -> np.ndarray:
    """Entropy of each byte's prediction: byte ``i`` <- ``H_i`` (``H`` without its last value)."""
    return np.asarray(token_entropy)[:-1]


# ---------------------------------------------------------------------------------------------
# Patch-start rule
# ---------------------------------------------------------------------------------------------


def patch_start_mask(e: np.ndarray, threshold: float, mode: str = DEFAULT_MODE) -> np.ndarray:
    """BLT's start mask over ``E = H[1:]``; ``True`` at ``j`` means a start at token ``j+2``."""
    _check_mode(mode)
    e = np.asarray(e)
    if mode == "global":
        return e > threshold
    mask = np.empty(e.shape, dtype=bool)
    if e.size:
        mask[0] = True
        mask[1:] = (e[1:] - e[:-1]) > threshold
    return mask


def token_patch_starts(h: np.ndarray, threshold: float, mode: str = DEFAULT_MODE) -> np.ndarray:
    """Patch start positions over the ``T = len(h)`` tokens (before max-length splitting)."""
    t = len(h)
    mask = patch_start_mask(np.asarray(h)[1:], threshold, mode)
    starts = np.concatenate([np.array([0, 1], dtype=np.int64), np.flatnonzero(mask) + 2])
    return starts[starts < t]


def split_long_patches(starts: np.ndarray, total: int, max_length: int | None) -> np.ndarray:
    """Add starts so no patch exceeds ``max_length``: a patch of length L becomes
    ``[m]*(ceil(L/m)-1) + [rest]`` (BLT's ``split_large_numbers``)."""
    starts = np.asarray(starts, dtype=np.int64)
    if max_length is None or starts.size == 0:
        return starts
    if max_length < 1:
        raise ValueError(f"max_patch_length must be >= 1, got {max_length}")
    lengths = np.diff(np.append(starts, total))
    pieces = -(-lengths // max_length)  # ceil
    if np.all(pieces <= 1):
        return starts
    owner = np.repeat(np.arange(starts.size), pieces)
    k = np.arange(owner.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return starts[owner] + k * max_length


def byte_patch_starts(
    h: np.ndarray,
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
) -> np.ndarray:
    """Byte offsets where patches start, for the ``len(h) - 1`` bytes behind ``h``.

    BLT's token rule, then the BOS patch (token 0 alone) is dropped and positions shifted by
    one; max-length splitting is applied to the byte patches (the BOS patch has length 1, so
    splitting before or after dropping it gives the same result).
    """
    n_bytes = len(h) - 1
    if n_bytes <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = token_patch_starts(h, threshold, mode)
    byte_starts = token_to_byte_offset(starts[1:])
    return split_long_patches(byte_starts, n_bytes, max_patch_length)


def patch_lengths(starts: np.ndarray, total: int) -> np.ndarray:
    return np.diff(np.append(np.asarray(starts, dtype=np.int64), total))


# ---------------------------------------------------------------------------------------------
# Per-article result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArticlePatches:
    """Byte patches of one article (all arrays have one entry per patch, P = len(byte_start))."""

    byte_start: np.ndarray  # int64 [P]
    byte_len: np.ndarray  # int64 [P]
    mean_entropy: np.ndarray  # float32 [P]
    max_entropy: np.ndarray  # float32 [P]
    first_entropy: np.ndarray  # float32 [P]
    byte_entropy: np.ndarray | None  # float32 [n_bytes]; None where the caller dropped it

    @property
    def num_patches(self) -> int:
        return int(self.byte_start.size)


def patch_statistics(
    byte_entropy: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, max, first) of the byte entropies inside each patch; float32 [P] each."""
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.float32)
        return empty, empty.copy(), empty.copy()
    ent = np.asarray(byte_entropy, dtype=np.float64)
    sums = np.add.reduceat(ent, starts)
    mean = (sums / lengths).astype(np.float32)
    peak = np.maximum.reduceat(ent, starts).astype(np.float32)
    first = ent[starts].astype(np.float32)
    return mean, peak, first


def patches_from_entropies(
    h: np.ndarray,
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
) -> ArticlePatches:
    h = np.asarray(h, dtype=np.float32)
    starts = byte_patch_starts(h, threshold, mode, max_patch_length)
    n_bytes = max(len(h) - 1, 0)
    lengths = patch_lengths(starts, n_bytes)
    b_ent = byte_entropies(h) if len(h) else np.zeros(0, dtype=np.float32)
    mean, peak, first = patch_statistics(b_ent, starts, lengths)
    return ArticlePatches(starts, lengths, mean, peak, first, b_ent)


def patch_article(
    model: ByteEntropyModel,
    data: bytes,
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
    chunk_size: int | None = None,
) -> ArticlePatches:
    """Entropies (bounded memory) + BLT rule for one article's bytes."""
    h = article_entropies(model, data, chunk_size)
    return patches_from_entropies(h, threshold, mode, max_patch_length)


def patch_article_without_byte_entropy(
    model: ByteEntropyModel,
    data: bytes,
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
    chunk_size: int | None = None,
) -> ArticlePatches:
    """:func:`patch_article` with ``byte_entropy`` None: 4 bytes per article byte less to send
    back from a worker when only the per-patch values are wanted."""
    res = patch_article(model, data, threshold, mode, max_patch_length, chunk_size)
    return replace(res, byte_entropy=None)


def patch_articles(
    model: ByteEntropyModel,
    articles: Iterable[tuple[str, bytes]],
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
    chunk_size: int | None = None,
    workers: ModelWorkers | None = None,
    batch_bytes: int = MAX_BATCH_BYTES,
    keep_byte_entropy: bool = True,
) -> Iterator[ArticlePatches]:
    """:func:`patch_article` over a stream of ``(article_id, bytes)``, results in input order:
    in this process (``workers`` None) or on a :class:`~sphere_assets.lib.text.model_workers.
    ModelWorkers` pool, in batches of whole articles of ~``batch_bytes`` bytes
    (``keep_byte_entropy=False``: :func:`patch_article_without_byte_entropy`); an error names
    the article."""
    _check_mode(mode)
    yield from map_articles(
        model,
        patch_article if keep_byte_entropy else patch_article_without_byte_entropy,
        articles,
        threshold,
        mode,
        max_patch_length,
        chunk_size,
        action="patching",
        workers=workers,
        batch_bytes=batch_bytes,
    )


def check_reassembly(data: bytes, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Raise unless the patches tile ``data`` exactly: contiguous, in order, positive lengths."""
    n = len(data)
    if n == 0:
        if len(starts):
            raise ValueError("empty article must have no patches")
        return
    if len(starts) == 0 or starts[0] != 0:
        raise ValueError("first patch must start at byte 0")
    if np.any(lengths <= 0):
        raise ValueError("patch lengths must be positive")
    if np.any(starts[1:] != starts[:-1] + lengths[:-1]):
        raise ValueError("patches are not contiguous")
    if int(starts[-1] + lengths[-1]) != n:
        raise ValueError(f"patches cover {int(starts[-1] + lengths[-1])} of {n} bytes")


def patch_texts(data: bytes, starts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """``text`` column: each patch decoded with ``errors="replace"`` (see module docstring)."""
    view = memoryview(data)
    return [
        bytes(view[s : s + n]).decode("utf-8", errors="replace")
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Threshold calibration
# ---------------------------------------------------------------------------------------------


def count_patches(
    segments: Sequence[np.ndarray],
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
) -> tuple[int, int]:
    """(total bytes, total patches) over token-entropy segments (one per article)."""
    n_bytes = n_patches = 0
    for h in segments:
        n_bytes += max(len(h) - 1, 0)
        n_patches += byte_patch_starts(h, threshold, mode, max_patch_length).size
    return n_bytes, n_patches


def mean_patch_size(
    segments: Sequence[np.ndarray],
    threshold: float,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
) -> float:
    n_bytes, n_patches = count_patches(segments, threshold, mode, max_patch_length)
    return n_bytes / n_patches if n_patches else 0.0


def _candidate_values(segments: Sequence[np.ndarray], mode: str) -> np.ndarray:
    """Values of the rule's statistic at which the patch count can change."""
    parts = []
    for h in segments:
        e = np.asarray(h, dtype=np.float32)[1:]
        parts.append(e if mode == "global" else e[1:] - e[:-1])
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return np.unique(values.astype(np.float64))


@dataclass(frozen=True)
class Calibration:
    threshold: float
    achieved_mean_patch_bytes: float
    target_mean_patch_bytes: float
    mode: str
    max_patch_length: int | None
    calibration_bytes: int
    calibration_patches: int
    evaluations: int


def calibrate_threshold(
    segments: Sequence[np.ndarray],
    target_mean_patch_bytes: float = DEFAULT_TARGET_MEAN_PATCH_BYTES,
    mode: str = DEFAULT_MODE,
    max_patch_length: int | None = DEFAULT_MAX_PATCH_LENGTH,
) -> Calibration:
    """θ whose mean patch size on ``segments`` (token entropies per article) is closest to the
    target, by bisection over the sorted unique candidate values (ties -> the smaller θ)."""
    _check_mode(mode)
    if target_mean_patch_bytes < 1:
        raise ValueError("target mean patch size must be >= 1 byte")
    cand = _candidate_values(segments, mode)
    if cand.size == 0 or sum(max(len(h) - 1, 0) for h in segments) == 0:
        raise ValueError("no calibration text (every segment is empty)")
    # thresholds[k]: midway below cand[k] (k < size) or above the largest (k = size)
    gaps = np.diff(cand)
    thresholds = np.concatenate([[cand[0] - 1.0], cand[:-1] + gaps / 2, [cand[-1] + 1.0]])
    evaluations = 0
    cache: dict[int, float] = {}

    def size_at(k: int) -> float:
        nonlocal evaluations
        if k not in cache:
            evaluations += 1
            cache[k] = mean_patch_size(segments, float(thresholds[k]), mode, max_patch_length)
        return cache[k]

    lo, hi = 0, thresholds.size - 1
    if size_at(hi) <= target_mean_patch_bytes:
        best = hi
    elif size_at(lo) >= target_mean_patch_bytes:
        best = lo
    else:
        # invariant: size_at(lo) < target <= size_at(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if size_at(mid) < target_mean_patch_bytes:
                lo = mid
            else:
                hi = mid
        below, above = size_at(lo), size_at(hi)
        best = lo if target_mean_patch_bytes - below <= above - target_mean_patch_bytes else hi
    threshold = float(thresholds[best])
    n_bytes, n_patches = count_patches(segments, threshold, mode, max_patch_length)
    return Calibration(
        threshold=threshold,
        achieved_mean_patch_bytes=n_bytes / n_patches,
        target_mean_patch_bytes=float(target_mean_patch_bytes),
        mode=mode,
        max_patch_length=max_patch_length,
        calibration_bytes=n_bytes,
        calibration_patches=n_patches,
        evaluations=evaluations,
    )


# ---------------------------------------------------------------------------------------------
# Summary statistics
# ---------------------------------------------------------------------------------------------


def size_bucket_counts(lengths: np.ndarray) -> dict[str, int]:
    """Patch counts per size bucket (≤4, 5–12, 13–24, 25–48, 49–127, ≥128 bytes)."""
    lengths = np.asarray(lengths)
    out = {}
    for name, low, high in SIZE_BUCKETS:
        sel = lengths >= low if high is None else (lengths >= low) & (lengths <= high)
        out[name] = int(sel.sum())
    return out


def length_percentiles(lengths: np.ndarray, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return {f"p{int(q)}": 0.0 for q in qs}
    return {f"p{int(q)}": float(np.percentile(lengths, q)) for q in qs}
