"""Deterministic stand-in patching of text into 1–8 byte patches (tests and benchmarks).

The real tokens are BLT entropy patches (asset ``blt_patches``); until those exist — and for
unit tests that must not train a model — texts are cut deterministically:

* ``mode="content"`` (default): content-defined like BLT, so the same text always gives the same
  patches: a patch is one whitespace byte followed by a run of non-whitespace bytes (a word
  with its leading space), a bare word, or a run of whitespace (leaving the last whitespace
  byte to the next word); pieces longer than 8 bytes are cut into 8-byte patches.
* ``mode="random"``: lengths drawn uniformly from 1..8 by ``numpy.random.default_rng`` seeded
  with ``seed`` and the mmh3 hash of the article id (position-independent of other articles).

The bundled corpus is CPython's ``pydoc_data.topics`` (article ids ``pydoc:<topic>``, as in
raw_articles).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mmh3
import numpy as np
import pyarrow as pa

from sphere_assets.lib.sketch.ngrams import sequence_offsets

MAX_PATCH = 8
_CONTENT_PATTERN = re.compile(rb"\s+(?=\s[^\s])|\s?[^\s]+|\s+")


@dataclass(frozen=True)
class PatchedCorpus:
    article_ids: list[str]
    patches: pa.Array  # binary, all articles back to back
    offsets: np.ndarray  # (n_articles + 1,) int64
    source: str

    def article_patches(self, i: int) -> list[bytes]:
        return self.patches.slice(
            self.offsets[i], self.offsets[i + 1] - self.offsets[i]
        ).to_pylist()

    @property
    def n_patches(self) -> int:
        return len(self.patches)


def bundled_articles() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(f"pydoc:{key}", topics[key]) for key in sorted(topics)]


def content_patches(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for match in _CONTENT_PATTERN.finditer(data):
        piece = match.group()
        out.extend(piece[i : i + MAX_PATCH] for i in range(0, len(piece), MAX_PATCH))
    return out


def random_patches(data: bytes, article_id: str, seed: int) -> list[bytes]:
    rng = np.random.default_rng([seed, mmh3.hash(article_id.encode(), signed=False)])
    lengths = rng.integers(1, MAX_PATCH + 1, size=len(data) // 1 + 1)
    ends = np.cumsum(lengths)
    ends = ends[ends < len(data)]
    bounds = [0, *ends.tolist(), len(data)] if data else [0]
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def patch_texts(
    articles: Iterable[tuple[str, str]], *, mode: str = "content", seed: int = 0
) -> PatchedCorpus:
    ids: list[str] = []
    all_patches: list[bytes] = []
    lengths: list[int] = []
    for article_id, text in articles:
        data = text.encode("utf-8", "surrogatepass")
        if mode == "content":
            patches = content_patches(data)
        elif mode == "random":
            patches = random_patches(data, article_id, seed)
        else:
            raise ValueError(f"synthetic patch mode must be 'content' or 'random', got {mode!r}")
        ids.append(article_id)
        all_patches.extend(patches)
        lengths.append(len(patches))
    return PatchedCorpus(
        ids,
        pa.array(all_patches, type=pa.binary()),
        sequence_offsets(lengths),
        f"synthetic:{mode}" + (f":seed={seed}" if mode == "random" else ""),
    )


def bundled_corpus(*, mode: str = "content", seed: int = 0) -> PatchedCorpus:
    """The bundled corpus cut into synthetic patches."""
    return patch_texts(bundled_articles(), mode=mode, seed=seed)


def from_sequences(sequences: Sequence[Sequence[bytes]], source: str = "given") -> PatchedCorpus:
    flat = [p for seq in sequences for p in seq]
    return PatchedCorpus(
        [str(i) for i in range(len(sequences))],
        pa.array(flat, type=pa.binary()),
        sequence_offsets([len(s) for s in sequences]),
        source,
    )
