"""The sample blt_patches' threshold θ is calibrated on: byte windows from every shard.

Pure numpy/torch (no Dagster, no file I/O).

Why
    θ is set so the mean patch size of a sample hits the target (4.5 bytes), and
    ``mean_patch_size_near_target`` then checks every shard against that target. So the sample
    must look like the text that is patched: the whole corpus, every shard, in proportion to its
    bytes. Calibrating on entropy_model's held-out articles (≤ 64 KB from a 2 MB hash-prefix
    sample) missed it by 10–27% on 28.5 MB and 100 MB corpora: a handful of articles of one kind
    of text, and text the model had never seen while most of a small corpus is its training text.

Sample (:func:`plan_windows`, :func:`sample_segments`)
    Each shard gets an equal share of ``budget`` bytes (at least one window). A shard of at most
    its share is taken whole (every article, whole). A larger shard contributes
    ``ceil(share / window)`` windows of ``window`` bytes whose start offsets are uniform over the
    shard's bytes (its articles concatenated in row order; a seeded generator per shard key, so
    the sample is deterministic): every byte of the shard is equally likely to be sampled,
    whatever the article lengths. A window is cut at its article's end.

Entropies of a window (:func:`window_entropies`)
    The model sees at most ``receptive_field`` earlier tokens (windowed attention, relative
    positions), so the window's token entropies are computed from ``context`` tokens before it
    (the receptive field rounded up to attention windows): they equal the in-article values
    (up to float rounding), without running the model over the article's prefix. The segment
    is ``H_s .. H_e`` for bytes ``[s, e)``, the layout ``patcher.calibrate_threshold`` takes (its
    first byte starts a patch: one forced start per window of ~900 patches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import mmh3
import numpy as np

from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text.entropy_inference import default_context
from sphere_assets.lib.text.entropy_model import ByteEntropyModel, bytes_to_tokens

DEFAULT_BUDGET_BYTES = 1 << 20
DEFAULT_WINDOW_BYTES = 2048


@dataclass(frozen=True)
class ShardPlan:
    """Which bytes of one shard are sampled: all of them (``whole``) or windows at ``offsets``."""

    shard: str
    shard_bytes: int
    whole: bool
    offsets: np.ndarray  # int64, sorted; empty when whole


def plan_windows(
    shard_bytes: Mapping[str, int], budget: int, window: int, seed: int = 0
) -> list[ShardPlan]:
    """One plan per shard (see the module docstring)."""
    if budget < 1 or window < 1:
        raise ValueError(f"calibration budget and window must be >= 1, got {budget}, {window}")
    if not shard_bytes:
        raise ValueError("no shards to sample the calibration text from")
    share = max(window, budget // len(shard_bytes))
    plans = []
    for shard, size in shard_bytes.items():
        if size <= share:
            plans.append(ShardPlan(shard, size, True, np.zeros(0, dtype=np.int64)))
            continue
        n = math.ceil(share / window)
        rng = np.random.default_rng(mmh3.hash64(f"calibration:{shard}", seed, signed=False)[0])
        offsets = np.sort(rng.integers(0, size, n, dtype=np.int64))
        plans.append(ShardPlan(shard, size, False, offsets))
    return plans


def window_entropies(
    model: ByteEntropyModel, data: bytes, start: int, stop: int, context: int
) -> np.ndarray:
    """Token entropies ``H_start .. H_stop`` (``stop - start + 1`` values) of the article
    ``data``, computed from ``context`` tokens before the window."""
    lo = max(0, start - context)
    tokens = bytes_to_tokens(data[max(0, lo - 1) : stop], dtype=np.uint16)
    if lo > 0:
        tokens = tokens[1:]  # no BOS: the slice starts inside the article (token lo = byte lo-1)
    h = pt.token_entropies(model, tokens)
    return h[start - lo :]


@dataclass
class SampleStats:
    """How representative the sample is."""

    shards: int = 0
    shards_whole: int = 0
    articles: int = 0
    windows: int = 0
    bytes: int = 0
    corpus_bytes: int = 0
    segment_shard: list[int] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int | float]:
        return {
            "calibration_shards_covered": self.shards,
            "calibration_shards_whole": self.shards_whole,
            "calibration_articles": self.articles,
            "calibration_windows": self.windows,
            "calibration_bytes": self.bytes,
            "calibration_corpus_bytes": self.corpus_bytes,
            "calibration_share_of_corpus": round(self.bytes / max(self.corpus_bytes, 1), 6),
        }


def sample_segments(
    model: ByteEntropyModel,
    plans: list[ShardPlan],
    articles_of: Callable[[str], Iterable[tuple[str, bytes]]],
    window: int = DEFAULT_WINDOW_BYTES,
) -> tuple[list[np.ndarray], SampleStats]:
    """Token-entropy segments of the planned sample and its statistics; ``articles_of(shard)``
    streams a shard's ``(article_id, bytes)`` in row order."""
    context = default_context(model.config)
    stats = SampleStats()
    segments: list[np.ndarray] = []
    for plan in plans:
        articles = articles_of(plan.shard)
        stats.corpus_bytes += plan.shard_bytes
        before = len(segments)
        for segs, n_articles in _shard_segments(model, plan, articles, window, context):
            segments.extend(segs)
            stats.articles += n_articles
        added = segments[before:]
        stats.shards += bool(added)
        stats.shards_whole += plan.whole
        stats.windows += 0 if plan.whole else len(added)
        stats.bytes += sum(len(s) - 1 for s in added)
        stats.segment_shard.extend([_shard_number(plan.shard)] * len(added))
    return segments, stats


def _shard_number(shard: str) -> int:
    return int(shard) if shard.lstrip("-").isdigit() else -1


def _shard_segments(
    model: ByteEntropyModel,
    plan: ShardPlan,
    articles: Iterable[tuple[str, bytes]],
    window: int,
    context: int,
) -> Iterator[tuple[list[np.ndarray], int]]:
    """(segments, 1) per sampled article of one shard."""
    offset = 0
    k = 0
    offsets = plan.offsets
    for _, data in articles:
        n = len(data)
        if plan.whole:
            if n:
                yield [pt.article_entropies(model, data)], 1
            offset += n
            continue
        segs = []
        while k < offsets.size and offsets[k] < offset + n:
            s = int(offsets[k]) - offset
            segs.append(window_entropies(model, data, s, min(s + window, n), context))
            k += 1
        if segs:
            yield segs, 1
        offset += n
        if k >= offsets.size:
            break
