"""HLLSets of articles and of their spans: the content of ``article_hllsets`` rows, format-free.

Every article of a batch gives one set (``span_index`` -1, the whole article) followed by one
set per span of ``span`` patches (``span_index`` k >= 0 covers patches ``[k*span, (k+1)*span)``,
the last span may be shorter); each span is padded with ``_START_``/``_END_`` as a sequence of
its own, so a span's set is the set of that span ingested alone.  ``span = 0``: articles only.

A layer is serialized as its ``2^P`` words, little-endian uint32 (:meth:`SpanSets.layer_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng


@dataclass(frozen=True, eq=False)
class SpanSets:
    """r sets of a batch of articles, each article's own set first, then its spans in order."""

    p: int
    owner: np.ndarray  # (r,) int64: position of the set's article in the batch
    span_index: np.ndarray  # (r,) int64: -1 = the whole article, k >= 0 = span k
    patch_start: np.ndarray  # (r,) int64: first patch covered, counted within the article
    patch_count: np.ndarray  # (r,) int64: patches covered
    words: np.ndarray  # (r, 3, 2^P) uint32: the layers
    cards: np.ndarray  # (r, 3) float64: Horvitz-Thompson cardinality of each layer

    @property
    def size(self) -> int:
        return int(self.owner.size)

    def layer_bytes(self, layer: int) -> bytes:
        """Layer ``layer`` (0-based) of every set, back to back: r × 2^P little-endian uint32."""
        return self.words[:, layer].astype("<u4").tobytes()


def _sequences(offsets: np.ndarray, span: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sequence offsets, article of each sequence, span_index of each): the articles, then
    (``span > 0``) their spans."""
    n_articles = offsets.size - 1
    out = [(offsets, np.arange(n_articles), np.full(n_articles, -1, np.int64))]
    if span > 0:
        out.append(ng.span_offsets(offsets, span))
    return out


def article_span_sets(patches: pa.Array, offsets: np.ndarray, p: int, span: int) -> SpanSets:
    """The sets of articles ``patches[offsets[i]:offsets[i+1]]`` and of their spans, ordered by
    article, then span_index (the article's own set first)."""
    sequences = _sequences(offsets, span)
    words = []
    for bounds, _, _ in sequences:
        indexed = ng.index_sequences(patches, bounds)
        words.append(ng.sequence_hllsets(indexed, bounds.size - 1, p))
    owner = np.concatenate([s[1] for s in sequences])
    span_index = np.concatenate([s[2] for s in sequences])
    starts = np.concatenate([s[0][:-1] for s in sequences]) - offsets[:-1][owner]
    lengths = np.concatenate([np.diff(s[0]) for s in sequences])
    order = np.lexsort((span_index, owner))  # article row first, then its spans
    words_sorted = np.concatenate(words)[order]
    return SpanSets(
        p=p,
        owner=owner[order],
        span_index=span_index[order],
        patch_start=starts[order],
        patch_count=lengths[order],
        words=words_sorted,
        cards=hs.cardinality(words_sorted, p).reshape(-1, 3),
    )


def sets_per_article(offsets: np.ndarray, span: int) -> np.ndarray:
    """(n,) number of sets each article gives: itself plus ceil(patches / span) spans."""
    lengths = np.diff(offsets)
    return 1 + (-(-lengths // span) if span > 0 else np.zeros_like(lengths))


def article_batches(
    offsets: np.ndarray, p: int, span: int, budget_bytes: int
) -> list[tuple[int, int]]:
    """Consecutive article ranges [a, b) whose sets (articles + spans) fit ``budget_bytes`` of
    layer words; an article whose sets alone exceed it is a batch of its own."""
    per_set = hs.NUM_LAYERS * 4 * (1 << p)
    budget = max(1, budget_bytes // per_set)
    sets = sets_per_article(offsets, span)
    out, start, used = [], 0, 0
    for i, s in enumerate(sets.tolist()):
        if used and used + s > budget:
            out.append((start, i))
            start, used = i, 0
        used += s
    if start < sets.size:
        out.append((start, sets.size))
    return out
