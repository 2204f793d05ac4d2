"""One entropy-model pass per article that yields both its BLT patches and its patch vectors.

Pure numpy/torch (no Dagster, no file I/O).

``blt_patches`` needs the next-byte entropies ``H`` (the head over the hidden states) and
``patch_embeddings`` needs the pre-norm hidden states pooled over each patch. Both come from the
same trunk pass (``entropy_inference.iter_hidden_chunks``); :func:`patch_and_pool_article` runs
it once and produces, bit for bit, what ``patcher.patch_article`` and then
``patch_embeddings.pool_patch_embeddings`` on its patches produce with two passes:

* the entropies are ``entropies_from_hidden`` of the same hidden chunks (the same chunks, the
  same row blocks: the same floats);
* patch starts are decided while the chunks stream (:class:`StartStream`): after a chunk whose
  last token is ``K - 1`` every byte ``< K`` has its entropy, so its start is known (global:
  ``H_i > θ``; monotonic: ``H_i - H_{i-1} > θ``; max-length splits ``s + k·m`` of the open patch
  below ``K`` are certain because no later natural start can come before them). The hidden rows
  of that chunk belong to bytes ``<= K - 2``, so each row's patch is known when it arrives and is
  pooled from the chunk (the hidden states are never kept beyond a chunk);
* pooling uses :func:`patch_embeddings.pool_chunk` (the same float64 ``reduceat`` runs, added
  into the same per-patch sums in the same order), so the means and norms are identical;
* at the end the streamed starts are checked against ``patcher.byte_patch_starts`` on the
  article's full entropies, and the per-patch statistics come from
  ``patcher.patches_from_entropies`` itself.

Memory per article: its token entropies (4 bytes per byte) and per-patch float64 sums (as
``pool_patch_embeddings``); the hidden states of one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text.entropy_inference import entropies_from_hidden, iter_hidden_chunks
from sphere_assets.lib.text.entropy_model import ByteEntropyModel, bytes_to_tokens
from sphere_assets.lib.text.model_workers import MAX_BATCH_BYTES, ModelWorkers, map_articles


@dataclass(frozen=True)
class SharedPass:
    """Patches (``byte_entropy`` None: it is ``vectors.byte_entropy``) and vectors of one
    article."""

    patches: pt.ArticlePatches
    vectors: pe.PatchVectors


class StartStream:
    """BLT patch starts (``patcher.byte_patch_starts``) decided byte by byte as token entropies
    arrive in order (see the module docstring)."""

    def __init__(
        self, n_bytes: int, threshold: float, mode: str, max_patch_length: int | None
    ) -> None:
        if mode not in pt.PATCHING_MODES:
            raise ValueError(f"patching mode must be one of {pt.PATCHING_MODES}, got '{mode}'")
        self.n_bytes = n_bytes
        self.threshold = threshold
        self.mode = mode
        self.max_length = max_patch_length
        self.h = np.zeros(n_bytes + 1, dtype=np.float32)  # token entropies H_0..H_n
        self.decided = 0  # bytes [0, decided) have their start decided
        self.last: int | None = None  # the last start emitted
        self._buf = np.empty(n_bytes, dtype=np.int64)  # at most one start per byte
        self.count = 0

    def feed(self, tok_start: int, entropies: np.ndarray) -> None:
        """Token entropies ``H[tok_start : tok_start + len]`` (in order, no gaps)."""
        stop = tok_start + entropies.size
        self.h[tok_start:stop] = entropies
        hi = min(stop, self.n_bytes)
        lo = self.decided
        if hi <= lo:
            return
        i = np.arange(lo, hi)
        h = self.h
        if self.mode == "global":
            natural = i[(i == 0) | (h[i] > self.threshold)]
        else:
            prev = h[np.maximum(i - 1, 0)]
            natural = i[(i <= 1) | ((h[i] - prev) > self.threshold)]
        base = np.array([self.last], dtype=np.int64) if self.last is not None else None
        seq = natural.astype(np.int64) if base is None else np.concatenate([base, natural])
        new = pt.split_long_patches(seq, hi, self.max_length)
        if base is not None:
            new = new[1:]
        if new.size:
            self._buf[self.count : self.count + new.size] = new
            self.count += int(new.size)
            self.last = int(new[-1])
        self.decided = hi

    def starts(self) -> np.ndarray:
        """Every start decided so far (int64, ascending; a view, valid until the next feed)."""
        return self._buf[: self.count]


def patch_and_pool_article(
    model: ByteEntropyModel,
    data: bytes,
    threshold: float,
    mode: str = pt.DEFAULT_MODE,
    max_patch_length: int | None = pt.DEFAULT_MAX_PATCH_LENGTH,
    chunk_size: int | None = None,
) -> SharedPass:
    """``patcher.patch_article`` and ``patch_embeddings.pool_patch_embeddings`` of one article
    from one trunk pass; identical results (see the module docstring)."""
    n = len(data)
    stream = StartStream(n, threshold, mode, max_patch_length)
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    computed = np.zeros(n, dtype=np.float32)
    if n:
        tokens = bytes_to_tokens(data, dtype=np.uint16)
        for tok_start, hidden in iter_hidden_chunks(model, tokens, chunk_size):
            ent = entropies_from_hidden(model, hidden).cpu().numpy()
            stream.feed(tok_start, ent)
            positions = np.arange(tok_start, tok_start + hidden.shape[0])
            has_byte = positions < n
            computed[positions[has_byte]] = ent[has_byte]
            part = pe.pool_chunk(hidden, tok_start, stream.starts())
            if part is not None:
                pooled.append(part)
    patches = pt.patches_from_entropies(stream.h, threshold, mode, max_patch_length)
    if not np.array_equal(patches.byte_start, stream.starts()):
        raise RuntimeError("streamed patch starts differ from the BLT rule on the full entropies")
    sums = np.zeros((patches.num_patches, model.config.dim), dtype=np.float64)
    for ids, contrib in pooled:
        sums[ids] += contrib
    del pooled
    vectors = pe.finish_pooling(sums, patches.byte_start, patches.byte_len, computed)
    return SharedPass(replace(patches, byte_entropy=None), vectors)


def patch_and_pool_articles(
    model: ByteEntropyModel,
    articles: Iterable[tuple[str, bytes]],
    threshold: float,
    mode: str = pt.DEFAULT_MODE,
    max_patch_length: int | None = pt.DEFAULT_MAX_PATCH_LENGTH,
    chunk_size: int | None = None,
    workers: ModelWorkers | None = None,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[SharedPass]:
    """:func:`patch_and_pool_article` over a stream of ``(article_id, bytes)``, results in
    input order, in this process or on a worker pool (``model_workers.map_articles``); an error
    names the article."""
    if mode not in pt.PATCHING_MODES:
        raise ValueError(f"patching mode must be one of {pt.PATCHING_MODES}, got '{mode}'")
    yield from map_articles(
        model,
        patch_and_pool_article,
        articles,
        threshold,
        mode,
        max_patch_length,
        chunk_size,
        action="patching and pooling",
        workers=workers,
        batch_bytes=batch_bytes,
    )
