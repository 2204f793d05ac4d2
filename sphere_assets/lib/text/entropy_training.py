"""Training of the entropy model on a deterministic byte sample; held-out metrics.

Pure torch/numpy (no Dagster, no file I/O).

Sample (:func:`sample_training_bytes`)
    A deterministic, input-order-independent byte sample of the corpus with held-out articles
    split off (``stable_hash`` of the article ids, never Python's salted ``hash``).

Training (:func:`train_entropy_model`)
    Next-byte cross-entropy on random windows of the sample, AdamW (decoupled weight decay on
    matrices only), linear warmup then cosine decay to ``min_lr_ratio·lr``, global grad-norm
    clipping, fixed seed, ``torch.set_num_threads`` and deterministic algorithms inside the call
    (restored afterwards). Same sample + config + thread count -> bit-identical weights.

Metrics
    held-out bits/byte ``= Σ_t -log2 p(x_{t+1} | x_{≤t}) / #bytes`` over byte targets only, with
    every position given full receptive-field context; the unigram baseline is the held-out
    cross-entropy (bits/byte) of the add-one-smoothed byte histogram of the training split (plus
    the held-out set's own empirical unigram entropy for reference).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import mmh3
import numpy as np
import torch
import torch.nn.functional as F

from sphere_assets.lib.text.entropy_inference import iter_hidden_chunks, nll_from_hidden
from sphere_assets.lib.text.entropy_model import (
    OFFSET,
    ByteEntropyModel,
    EntropyModelConfig,
    build_model,
    bytes_to_tokens,
)
from sphere_assets.lib.text.torch_runtime import torch_runtime

# ---------------------------------------------------------------------------------------------
# Deterministic training sample
# ---------------------------------------------------------------------------------------------


def stable_hash(key: str, seed: int) -> int:
    """Unsigned 64-bit mmh3 x64-128 (low half) of ``key``; never Python's salted ``hash``."""
    return mmh3.hash64(key.encode("utf-8"), seed=seed & 0xFFFFFFFF, signed=False)[0]


@dataclass(frozen=True)
class TrainingSample:
    """Token streams (``[BOS]+bytes`` per article, concatenated) and held-out segments."""

    train_tokens: np.ndarray  # int64 [N]
    heldout_segments: list[np.ndarray]  # each int64 [1 + n_bytes], starts with BOS
    train_article_ids: list[str]
    heldout_article_ids: list[str]

    @property
    def train_bytes(self) -> int:
        return int((self.train_tokens >= OFFSET).sum())

    @property
    def heldout_bytes(self) -> int:
        return int(sum(len(s) - 1 for s in self.heldout_segments))


def sample_training_bytes(
    articles: Iterable[tuple[str, bytes]], config: EntropyModelConfig
) -> TrainingSample:
    """Pick a deterministic, input-order-independent byte sample and split off held-out articles.

    Selection: articles ordered by ``stable_hash(article_id, seed)``; keep the longest prefix of
    that order whose total size fits ``sample_bytes`` (at least one article; an article larger
    than the budget is truncated to it). A bounded max-heap keeps memory at ~``sample_bytes``
    however many articles stream past.
    Split: an article is held out when ``stable_hash(id, seed+1) / 2^64 < holdout_fraction``.
    If that leaves either side empty (tiny corpora), the last ``holdout_fraction`` (at least 2
    bytes) of the concatenated selection is held out instead, as one segment.
    Held-out text is capped at ``max_eval_bytes`` (whole segments first, in hash order).
    """
    budget = config.sample_bytes
    heap: list[tuple[int, str, bytes]] = []  # (-hash, id, data): max-heap on hash
    total = 0
    seen: set[str] = set()
    for article_id, data in articles:
        if article_id in seen:
            raise ValueError(f"duplicate article_id '{article_id}' in the training corpus")
        seen.add(article_id)
        if not data:
            continue
        data = bytes(data[:budget])
        heapq.heappush(heap, (-stable_hash(article_id, config.seed), article_id, data))
        total += len(data)
        while total > budget and len(heap) > 1:
            _, _, dropped = heapq.heappop(heap)
            total -= len(dropped)
    if not heap:
        raise ValueError("entropy-model training corpus has no non-empty article")
    chosen = sorted(heap, key=lambda item: (-item[0], item[1]))
    threshold = config.holdout_fraction * 2.0**64
    train = [(i, d) for _, i, d in chosen if stable_hash(i, config.seed + 1) >= threshold]
    held = [(i, d) for _, i, d in chosen if stable_hash(i, config.seed + 1) < threshold]
    if not train or not held:
        stream = b"".join(d for _, i, d in chosen)
        cut = len(stream) - max(2, int(len(stream) * config.holdout_fraction))
        if cut < 2:
            raise ValueError(f"entropy-model corpus too small to split ({len(stream)} bytes)")
        train_tokens = bytes_to_tokens(stream[:cut])
        held_segments = [bytes_to_tokens(stream[cut:][: config.max_eval_bytes])]
        ids = [i for _, i, _ in chosen]
        return TrainingSample(train_tokens, held_segments, ids, ids[-1:])
    held_segments, held_ids, used = [], [], 0
    for article_id, data in held:
        if used >= config.max_eval_bytes:
            break
        piece = data[: config.max_eval_bytes - used]
        held_segments.append(bytes_to_tokens(piece))
        held_ids.append(article_id)
        used += len(piece)
    train_tokens = np.concatenate([bytes_to_tokens(d) for _, d in train])
    return TrainingSample(train_tokens, held_segments, [i for i, _ in train], held_ids)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, config: EntropyModelConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio·lr``."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainingReport:
    steps: int
    train_seconds: float
    final_train_loss: float
    heldout_bits_per_byte: float
    unigram_bits_per_byte: float
    heldout_unigram_entropy_bits: float
    train_bytes: int
    heldout_bytes: int
    num_parameters: int

    def as_metadata(self) -> dict[str, float | int]:
        return asdict(self)


def _batch_windows(
    stream: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator
) -> torch.Tensor:
    """``batch`` random windows of ``seq_len + 1`` tokens (streams shorter than that: tiled)."""
    need = seq_len + 1
    if stream.numel() < need:
        reps = math.ceil(need / stream.numel())
        stream = stream.repeat(reps)
    starts = torch.randint(0, stream.numel() - need + 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(need)[None, :]
    return stream[idx]


def train_entropy_model(
    sample: TrainingSample,
    config: EntropyModelConfig,
    device: str | torch.device = "cpu",
    log_every: int = 0,
    log=print,
) -> tuple[ByteEntropyModel, TrainingReport]:
    """Train a fresh model on ``sample.train_tokens``; report held-out bits/byte vs unigram."""
    device = torch.device(device)
    with torch_runtime(config.num_threads):
        model = build_model(config, device)
        model.train()
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=1e-8,
            foreach=False,
        )
        gen = torch.Generator().manual_seed(config.seed)
        stream = torch.from_numpy(sample.train_tokens)
        loss_value = float("nan")
        t0 = time.perf_counter()
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            windows = _batch_windows(stream, config.seq_len, config.batch_size, gen).to(device)
            logits, _ = model(windows[:, :-1])
            loss = F.cross_entropy(
                logits.reshape(-1, config.vocab_size), windows[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=False)
            optimizer.step()
            loss_value = float(loss.detach())
            if log_every and (step % log_every == 0 or step == config.steps - 1):
                log(f"step {step:5d}  loss {loss_value:.4f}  lr {lr_at(step, config):.2e}")
        train_seconds = time.perf_counter() - t0
        model.eval()
        bpb = heldout_bits_per_byte(model, sample.heldout_segments)
    unigram, held_entropy = unigram_baseline_bits(sample.train_tokens, sample.heldout_segments)
    report = TrainingReport(
        steps=config.steps,
        train_seconds=train_seconds,
        final_train_loss=loss_value,
        heldout_bits_per_byte=bpb,
        unigram_bits_per_byte=unigram,
        heldout_unigram_entropy_bits=held_entropy,
        train_bytes=sample.train_bytes,
        heldout_bytes=sample.heldout_bytes,
        num_parameters=model.num_parameters(),
    )
    return model, report


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def heldout_bits_per_byte(model: ByteEntropyModel, segments: list[np.ndarray]) -> float:
    """Σ -log2 p(next byte) / #bytes over held-out segments (each ``[BOS] + bytes``)."""
    total_nats, count = 0.0, 0
    device = next(model.parameters()).device
    for tokens in segments:
        if len(tokens) < 2:
            continue
        targets = torch.from_numpy(np.ascontiguousarray(tokens[1:], dtype=np.int64)).to(device)
        for start, hidden in iter_hidden_chunks(model, tokens[:-1]):
            tgt = targets[start : start + hidden.shape[0]]
            nll = nll_from_hidden(model, hidden, tgt)
            byte_mask = tgt >= OFFSET
            total_nats += float(nll[byte_mask].double().sum())
            count += int(byte_mask.sum())
    if count == 0:
        raise ValueError("no held-out bytes to evaluate the entropy model on")
    return total_nats / count / math.log(2)


def unigram_baseline_bits(
    train_tokens: np.ndarray, heldout_segments: list[np.ndarray]
) -> tuple[float, float]:
    """(held-out cross-entropy of the add-one byte unigram of the training split,
    held-out empirical unigram entropy), both in bits/byte."""
    train_bytes = train_tokens[train_tokens >= OFFSET] - OFFSET
    counts = np.bincount(train_bytes, minlength=256).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    held = np.concatenate([s[s >= OFFSET] - OFFSET for s in heldout_segments])
    if held.size == 0:
        raise ValueError("no held-out bytes for the unigram baseline")
    cross = float(-logp[held].mean())
    hc = np.bincount(held, minlength=256).astype(np.float64)
    p = hc[hc > 0] / hc.sum()
    return cross, float(-(p * np.log2(p)).sum())
