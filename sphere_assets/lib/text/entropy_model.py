"""BLT-family byte-level entropy model: a small causal byte LM trained inside the pipeline.

Pure torch/numpy (no Dagster). The model follows the Byte Latent Transformer's entropy model:

Vocabulary (260 ids, as in BLT's byte tokenizer)
    ``0`` BOE (reserved, unused here), ``1`` BOS, ``2`` EOS (reserved, unused here),
    ``3`` PAD (BLT uses id 3 as its BPE delimiter; we have no BPE and never pad training
    windows, so it is reserved as padding), byte ``b`` -> token ``b + 4`` (``OFFSET``).
    An article is fed as ``[BOS] + [b + 4 for b in utf8]``.

Architecture (pre-norm decoder, Llama style; weight names follow BLT's ``LMTransformer``)
    ``h_0 = E[x]``;  per layer ``h += Wo·Attn(RoPE(Wq·n), RoPE(Wk·n), Wv·n)`` with
    ``n = RMSNorm(h)``, then ``h += W2·(silu(W1·m) * W3·m)`` with ``m = RMSNorm(h)`` (SwiGLU);
    ``logits = W_out · RMSNorm(h_L)`` with an untied output head.
    ``RMSNorm(x) = x / sqrt(mean(x²) + eps) * g``.
    RoPE rotates channel pairs ``(x_i, x_{i+d/2})`` of each head by ``pos · theta^(-2i/d_head)``
    (rotate-half pairing; BLT pairs interleaved channels, see :func:`apply_rope`).
    Attention is causal and limited to a sliding window: query ``t`` sees keys ``s`` with
    ``t - window < s <= t`` (``window`` keys including itself), computed block-locally in
    O(T·window) (:func:`windowed_causal_attention`). With ``n_layers`` layers the receptive
    field of a position is ``n_layers·(window-1)`` earlier tokens (:func:`receptive_field`).
    Chunked inference (:func:`iter_hidden_chunks`) carries each layer's keys and values of the
    last ``window`` positions from one chunk into the next (:meth:`ByteEntropyModel.
    trunk_continued`; or, on request, overlaps chunks by the receptive field), so it reproduces
    a full-sequence forward pass in O(chunk) memory.
    The tiny default (dim 64, 2 layers, 2 heads, window 32, SwiGLU hidden 192: 140k params)
    trains in ~40-55 s on one core of this machine and reaches ~2.26 bits/byte on the bundled
    corpus (unigram baseline 4.72).
    :meth:`ByteEntropyModel.forward` returns the logits AND the pre-norm hidden states ``h_L``
    (the input of the final norm), which ``patch_embeddings.py`` pools.

Training (:func:`train_entropy_model`)
    Next-byte cross-entropy on random windows of a deterministic byte sample
    (:func:`sample_training_bytes`), AdamW (decoupled weight decay on matrices only), linear
    warmup then cosine decay to ``min_lr_ratio·lr``, global grad-norm clipping, fixed seed,
    ``torch.set_num_threads`` and deterministic algorithms inside the call (restored afterwards).
    Same sample + config + thread count -> bit-identical weights.

Metrics
    held-out bits/byte ``= Σ_t -log2 p(x_{t+1} | x_{≤t}) / #bytes`` over byte targets only, with
    every position given full receptive-field context; the unigram baseline is the held-out
    cross-entropy (bits/byte) of the add-one-smoothed byte histogram of the training split (plus
    the held-out set's own empirical unigram entropy for reference).

Storage
    safetensors with the float32 state dict and string metadata ``format``, ``config`` (JSON of
    :class:`EntropyModelConfig`) and any metrics; :func:`load_entropy_model` rebuilds the exact
    model from the file alone. Serialization is byte-deterministic (:func:`safetensors_bytes`
    sorts header and metadata keys, which ``safetensors.save`` does not guarantee).

BLT checkpoints
    Meta's released BLT entropy checkpoints (``consolidated.pth``) are pickles, which this
    project never loads (no ``torch.load`` of data), so they are not supported directly. The
    parameter names here follow BLT's (``tok_embeddings``, ``layers.N.attention.wq|wk|wv|wo``,
    ``layers.N.feed_forward.w1|w2|w3``, ``attention_norm``, ``ffn_norm``, ``norm``,
    ``output``): a checkpoint already converted to safetensors elsewhere maps by name, with
    ``wq``/``wk`` rows permuted per head for the RoPE pairing (see :func:`apply_rope`) and the
    config written into the file's metadata.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import mmh3
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

BOE_ID = 0
BOS_ID = 1
EOS_ID = 2
PAD_ID = 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET

MODEL_FORMAT = "sphere_blt_entropy_model_v1"


def bytes_to_tokens(data: bytes, add_bos: bool = True, dtype=np.int64) -> np.ndarray:
    """``[BOS] + [b + 4 for b in data]`` (token position ``p`` holds byte ``p - 1``).

    ``dtype=np.uint16`` quarters the memory of long articles; inference widens per chunk.
    """
    out = np.empty(len(data) + int(add_bos), dtype=dtype)
    if add_bos:
        out[0] = BOS_ID
    np.add(np.frombuffer(data, dtype=np.uint8), OFFSET, out=out[int(add_bos) :], dtype=dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntropyModelConfig:
    """Architecture + training settings. ``tiny()`` is the default; ``base()`` for real corpora."""

    # architecture
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    window: int = 32
    ffn_hidden: int = 0  # 0 -> SwiGLU default: round_up(8·dim/3, multiple_of)
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    vocab_size: int = VOCAB_SIZE
    # training
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 400
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    # data sample
    sample_bytes: int = 2_000_000
    holdout_fraction: float = 0.05
    max_eval_bytes: int = 65_536
    # runtime: torch intra-op threads inside training/inference (0 = leave torch's setting).
    # 1 by default: shard partitions run in parallel processes, and on a shared 2-core box two
    # OpenMP threads per process spend more time synchronizing than computing for this model.
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head dim must be even for RoPE")
        if self.window < 1 or self.seq_len < 2 or self.steps < 0:
            raise ValueError("window >= 1, seq_len >= 2 and steps >= 0 are required")
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (256 bytes + {OFFSET} specials)")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                "holdout_fraction must be in (0, 1): bits/byte and threshold "
                "calibration need held-out text"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        raw = int(8 * self.dim / 3)
        return self.multiple_of * math.ceil(raw / self.multiple_of)

    @classmethod
    def tiny(cls, **overrides) -> EntropyModelConfig:
        """Default: ~0.1 M parameters, trains in well under a minute on 2 CPU cores."""
        return replace(cls(), **overrides)

    @classmethod
    def base(cls, **overrides) -> EntropyModelConfig:
        """Bigger preset for real corpora (~3 M parameters; use a GPU or a long CPU budget)."""
        preset = cls(
            dim=256,
            n_layers=4,
            n_heads=8,
            window=512,
            seq_len=1024,
            batch_size=32,
            steps=20_000,
            lr=1e-3,
            warmup_steps=1000,
            sample_bytes=200_000_000,
            max_eval_bytes=2_000_000,
            num_threads=0,
        )
        return replace(preset, **overrides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EntropyModelConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown entropy-model config field(s): {unknown}")
        return cls(**raw)


def receptive_field(config: EntropyModelConfig) -> int:
    """How many earlier tokens can influence a position: ``n_layers · (window - 1)``."""
    return config.n_layers * (config.window - 1)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_tables(
    seq_len: int, head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of ``pos · theta^(-2i/head_dim)`` for i < head_dim/2, each repeated on both
    halves: shape ``[seq_len, head_dim]`` (rotate-half convention)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x_i, x_{i+d/2})`` of ``x [..., T, d]`` by the table's angles.

    BLT's reference code pairs interleaved channels ``(x_2i, x_2i+1)`` instead; attention
    scores are invariant under any channel permutation applied to both q and k, so the two
    conventions differ only by a fixed permutation of the rows of ``wq``/``wk`` per head.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def sliding_window_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """Reference boolean mask ``[T, T]``: True where query t may attend key s."""
    t = torch.arange(seq_len, device=device)[:, None]
    s = torch.arange(seq_len, device=device)[None, :]
    return (s <= t) & (t - s < window)


def band_bias(window: int, device=None) -> torch.Tensor:
    """Additive bias ``[W, 2W]`` (0 allowed / -inf masked) for block-local attention.

    Query ``i`` of block ``b`` (absolute ``b·W+i``) vs key ``j`` of the key band ``[block b-1 |
    block b]`` (absolute ``(b-1)·W+j``) is allowed iff ``0 <= W+i-j < W``, i.e. ``i < j <= W+i``.
    """
    i = torch.arange(window)[:, None]
    j = torch.arange(2 * window)[None, :]
    allowed = (j > i) & (j <= window + i)
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf")).to(device)


def windowed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    bias: torch.Tensor | None = None,
    prefixed: bool = False,
    masked_prefix: int = 0,
) -> torch.Tensor:
    """Causal attention where query t sees keys ``(t-window, t]``; O(T·window) work.

    Sequences longer than the window are split into blocks of ``window`` queries; block ``b``
    attends to the ``2·window`` keys of blocks ``b-1`` and ``b`` (strided views, no copies)
    under :func:`band_bias`; block 0's previous block is zero padding and fully masked. Cost
    and memory grow linearly in T.

    ``prefixed``: ``k`` and ``v`` hold ``window`` more positions than ``q``, first: the keys
    and values of the ``window`` positions before ``q``'s first one (carried over from an
    earlier chunk, :meth:`ByteEntropyModel.trunk_continued`). They form block 0's previous
    block instead of the zero padding; their first ``masked_prefix`` entries are masked (before
    the sequence start).
    """
    batch, heads, seq_len, head_dim = q.shape
    if seq_len <= window and not prefixed:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    n_blocks = math.ceil(seq_len / window)
    pad = n_blocks * window - seq_len
    q_full = F.pad(q, (0, 0, 0, pad)) if pad else q
    qb = q_full.reshape(batch, heads, n_blocks, window, head_dim)
    # keys/values padded by one zero block in front (block -1, unless the prefix is that block)
    # and to whole blocks at the end
    front = 0 if prefixed else window
    if front or pad:
        k, v = F.pad(k, (0, 0, front, pad)), F.pad(v, (0, 0, front, pad))
    k_band = k.unfold(2, 2 * window, window)  # [B,H,nb,d,2W]
    v_band = v.unfold(2, 2 * window, window)
    if bias is None:
        bias = band_bias(window, q.device)
    scores = torch.matmul(qb * head_dim**-0.5, k_band) + bias
    masked = masked_prefix if prefixed else window
    if masked:
        scores[:, :, 0, :, :masked] = float("-inf")
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v_band.transpose(-1, -2))
    return out.reshape(batch, heads, n_blocks * window, head_dim)[:, :, :seq_len]


@dataclass(frozen=True)
class AttentionCarry:
    """One layer's state between chunks: keys (before RoPE) and values ``[B, H, window, d]`` of
    the last ``window`` positions, the first ``masked`` of which precede the sequence start."""

    keys: torch.Tensor
    values: torch.Tensor
    masked: int


class Attention(nn.Module):
    def __init__(self, config: EntropyModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.window = config.window
        self.wq = nn.Linear(config.dim, config.dim, bias=False)
        self.wk = nn.Linear(config.dim, config.dim, bias=False)
        self.wv = nn.Linear(config.dim, config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return self.forward_continued(x, cos, sin, bias, None, keep=False)[0]

    def forward_continued(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor | None,
        carry: AttentionCarry | None,
        keep: bool = True,
    ) -> tuple[torch.Tensor, AttentionCarry | None]:
        """:meth:`forward` for ``x`` continuing the sequence whose last ``window`` keys (before
        RoPE) and values ``carry`` holds (``None``: ``x`` starts the sequence, computed exactly
        as :meth:`forward`). Returns the output and, if ``keep``, the carry for what follows.

        With a carry, the carried positions take RoPE positions ``0..W-1`` and ``x`` takes
        ``W..W+T-1`` (``cos``/``sin`` cover ``W+T`` rows): attention scores depend on position
        differences only, so this frame gives what a full-sequence pass computes.
        """
        batch, seq_len, dim = x.shape
        window = self.window
        # one matmul for q, k, v (the weights stay separate parameters, named as in BLT)
        w_qkv = torch.cat((self.wq.weight, self.wk.weight, self.wv.weight))
        qkv = F.linear(x, w_qkv).view(batch, seq_len, 3, self.n_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, d]
        if carry is None:
            q, k = apply_rope(qkv[:2], cos, sin).unbind(0)
            out = windowed_causal_attention(q, k, qkv[2], window, bias)
            keys, values = qkv[1], qkv[2]
            if keep and seq_len < window:  # carry exactly `window` positions: zeros in front
                keys = F.pad(keys, (0, 0, window - seq_len, 0))
                values = F.pad(values, (0, 0, window - seq_len, 0))
            masked = max(0, window - seq_len)  # of the new carry: positions before the start
        else:
            keys = torch.cat((carry.keys, qkv[1]), dim=2)  # [B, H, W+T, d], before RoPE
            values = torch.cat((carry.values, qkv[2]), dim=2)
            q = apply_rope(qkv[0], cos[window:], sin[window:])
            out = windowed_causal_attention(
                q, apply_rope(keys, cos, sin), values, window, bias, True, carry.masked
            )
            masked = max(0, carry.masked - seq_len)
        out = self.wo(out.transpose(1, 2).reshape(batch, seq_len, dim))
        if not keep:
            return out, None
        following = AttentionCarry(
            keys[:, :, -window:].clone(), values[:, :, -window:].clone(), masked
        )
        return out, following


class FeedForward(nn.Module):
    """SwiGLU: ``W2 · (silu(W1 x) * W3 x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one matmul for W1 and W3 (separate parameters, fused product)
        gate, up = F.linear(x, torch.cat((self.w1.weight, self.w3.weight))).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: EntropyModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.hidden_dim)

    def forward(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return self.forward_continued(h, cos, sin, bias, None, keep=False)[0]

    def forward_continued(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor | None,
        carry: AttentionCarry | None,
        keep: bool = True,
    ) -> tuple[torch.Tensor, AttentionCarry | None]:
        attended, carry = self.attention.forward_continued(
            self.attention_norm(h), cos, sin, bias, carry, keep
        )
        h = h + attended
        return h + self.feed_forward(self.ffn_norm(h)), carry


class ByteEntropyModel(nn.Module):
    """Causal byte LM; ``forward(tokens) -> (logits [B,T,260], pre-norm hidden [B,T,dim])``."""

    def __init__(self, config: EntropyModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self._table_cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) everywhere; residual output projections scaled by 1/sqrt(2·n_layers)."""
        std = 0.02
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(param, std=std)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, T]`` (or ``[T]``) -> ``(logits [B,T,V], pre-norm hidden [B,T,D])``."""
        hidden = self.trunk(tokens)
        return self.head(hidden), hidden

    def trunk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding + all blocks: the pre-norm hidden states (input of the final norm)."""
        return self.trunk_continued(tokens, None, keep=False)[0]

    def trunk_continued(
        self,
        tokens: torch.Tensor,
        carry: list[AttentionCarry] | None = None,
        keep: bool = True,
    ) -> tuple[torch.Tensor, list[AttentionCarry] | None]:
        """:meth:`trunk` for ``tokens [B, T]`` continuing a sequence: ``carry`` (from the call on
        the preceding tokens; ``None`` at the sequence start, which computes exactly
        :meth:`trunk`) holds each layer's keys and values of the last ``window`` positions.
        Returns the hidden states and, if ``keep``, the carry for the next call. Consecutive
        calls give a full-sequence :meth:`trunk` pass (up to float rounding: RoPE angles are
        taken relative to each chunk) in O(chunk) memory, with no recomputed overlap."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        prefix = 0 if carry is None else self.config.window
        cos, sin, bias = self._tables(prefix + tokens.shape[1], tokens.device)
        h = self.tok_embeddings(tokens)
        layer_carries = [None] * len(self.layers) if carry is None else carry
        following = []
        for layer, layer_carry in zip(self.layers, layer_carries, strict=True):
            h, layer_carry = layer.forward_continued(h, cos, sin, bias, layer_carry, keep)
            following.append(layer_carry)
        return h, following if keep else None

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm + untied output projection."""
        return self.output(self.norm(hidden))

    def _tables(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE tables for ``seq_len`` positions and the attention band bias.

        One table per device, for the longest length seen: a shorter sequence uses its prefix
        (row ``p`` depends on ``p`` only, so the prefix equals the shorter table bit for bit).
        Chunked inference mixes lengths (full chunks, chunks with overlap, article tails);
        a table per length would be recomputed whenever a bounded cache evicted it.
        """
        cached = self._table_cache.get(str(device))
        if cached is None or cached[0].shape[0] < seq_len:
            cfg = self.config
            # normal tensors even when first built under inference mode: training reuses them
            with torch.inference_mode(False):
                cos, sin = rope_tables(seq_len, cfg.head_dim, cfg.rope_theta, device)
                bias = band_bias(cfg.window, device)
            cached = self._table_cache[str(device)] = (cos, sin, bias)
        cos, sin, bias = cached
        return cos[:seq_len], sin[:seq_len], bias

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: EntropyModelConfig, device: str | torch.device = "cpu") -> ByteEntropyModel:
    """Deterministic initialization from ``config.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ByteEntropyModel(config)
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# Runtime guards
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_runtime(num_threads: int | None, deterministic: bool = True) -> Iterator[None]:
    """Set ``torch.set_num_threads`` and deterministic algorithms; restore both afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if num_threads:
            torch.set_num_threads(num_threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 1 << 25) -> bool:
    """Process-wide glibc malloc setting: keep freed memory instead of returning it to the OS.

    Each inference chunk allocates and frees activation buffers of several MB. With glibc's
    defaults those are handed back (heap trimming, munmap) and page-faulted in again by the
    next chunk: up to ~1,000 minor faults per 2048-token chunk, and on a VM such faults
    made the tiny model's forward pass (reference and entropy path alike) ~20% slower and
    their timings noisy. Equivalent to ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:
    glibc.malloc.mmap_threshold=...`` set at process start. Affects the whole process (it is
    an opt-in for benchmarks and worker processes, never called implicitly); returns whether
    it was applied (``False`` off glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    )


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available, else cpu)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch device '{device}' requested but CUDA is not available")
    return dev


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


def default_chunk_size(config: EntropyModelConfig) -> int:
    """Inference chunk: ≥2048 tokens and ≥4× the receptive field (so an overlapping context,
    :func:`iter_hidden_chunks` with ``context``, costs ≤25%) while activations stay cache-sized
    (2560 is ~15% slower per token than 1536-2112 for the tiny model); a whole number of
    attention windows."""
    size = max(2048, 4 * receptive_field(config))
    return -(-size // config.window) * config.window


def default_context(config: EntropyModelConfig) -> int:
    """Overlap of inference chunks: the receptive field rounded up to whole attention windows
    (windows of full blocks need no padding copy in :func:`windowed_causal_attention`)."""
    rf = receptive_field(config)
    return -(-rf // config.window) * config.window


HEAD_BLOCK = 512  # rows per head/entropy block: logits stay in L2 cache instead of RAM


def iter_hidden_chunks(
    model: ByteEntropyModel,
    tokens: np.ndarray,
    chunk_size: int | None = None,
    context: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run the trunk over ``tokens`` chunk by chunk; memory O(chunk_size), not O(T).

    Yields ``(start, hidden [n, D])`` (pre-norm hidden states) for positions
    ``start .. start+n`` in order, every position with exactly the context a full-sequence pass
    gives it. By default the chunks do not overlap: each layer's keys and values of the last
    ``window`` positions carry over into the next chunk (:meth:`ByteEntropyModel.
    trunk_continued`), so nothing is recomputed. With ``context`` given, each chunk is instead
    run from ``context`` tokens before its first kept position (:func:`default_context`, the
    receptive field rounded up to whole windows, gives full context for ~3% recomputed tokens;
    0 gives none at chunk starts).
    """
    config = model.config
    chunk = chunk_size or default_chunk_size(config)
    if chunk < 1 or (context is not None and context < 0):
        raise ValueError(f"chunk_size must be >= 1 and context >= 0, got {chunk}, {context}")
    device = next(model.parameters()).device
    total = len(tokens)
    if context is None:
        carry = None
        for start in range(0, total, chunk):
            window = np.ascontiguousarray(tokens[start : start + chunk], dtype=np.int64)
            # inference mode only around the forward: a suspended generator must not leave it on
            with torch.inference_mode():
                hidden, carry = model.trunk_continued(
                    torch.from_numpy(window).to(device)[None], carry, start + chunk < total
                )
            yield start, hidden[0]
        return
    ctx = context
    for start in range(0, total, chunk):
        lo = max(0, start - ctx)
        stop = min(total, start + chunk)
        window = torch.from_numpy(np.ascontiguousarray(tokens[lo:stop], dtype=np.int64))
        # inference mode only around the forward: a suspended generator must not leave it on
        with torch.inference_mode():
            hidden = model.trunk(window.to(device)[None])
        yield start, hidden[0, start - lo :]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis, ``H = -(softmax · log_softmax).sum``.

    Computed as ``H = Σ_i p_i (m - z_i) - log p_max`` with ``p = softmax(z)``, ``m = max z``:
    since ``log p_i = z_i - logsumexp(z)`` and ``logsumexp(z) = m - log p_max``. One fused
    softmax pass (torch's vectorized kernel) instead of a separate exp/log-softmax tensor.
    """
    probs = torch.softmax(logits, dim=-1)
    gap = logits.amax(dim=-1, keepdim=True) - logits  # >= 0
    return torch.linalg.vecdot(probs, gap) - probs.amax(dim=-1).log()


def entropies_from_hidden(
    model: ByteEntropyModel, hidden: torch.Tensor, block: int = HEAD_BLOCK
) -> torch.Tensor:
    """Head + entropy on ``hidden [n, D]`` in row blocks; float32 ``[n]`` nats.

    On CPU each block's logits are computed vocab-major, ``W_out · RMSNorm(h)ᵀ`` (``[V, rows]``,
    the head's products in one matmul), and reduced by the compiled kernel
    :func:`~sphere_assets.lib.text.entropy_kernel.entropy_of_columns` (two vectorized passes,
    nothing but the entropies written; ~2x faster than :func:`entropy_from_logits`). Other
    devices use :func:`entropy_from_logits` on the row-major head output.
    """
    if hidden.device.type != "cpu":
        return entropies_from_hidden_torch(model, hidden, block)
    # imported on first use: numba costs ~0.3 s to import, which only entropy work should pay
    from sphere_assets.lib.text.entropy_kernel import entropy_of_columns

    out = np.empty(hidden.shape[0], dtype=np.float32)
    with torch.inference_mode():
        normed = model.norm(hidden)
        weight = model.output.weight
        for s in range(0, hidden.shape[0], block):
            logits_t = torch.mm(weight, normed[s : s + block].T).float()  # [V, rows], contiguous
            entropy_of_columns(logits_t.numpy(), out[s : s + block])
    return torch.from_numpy(out)


def entropies_from_hidden_torch(
    model: ByteEntropyModel, hidden: torch.Tensor, block: int = HEAD_BLOCK
) -> torch.Tensor:
    """:func:`entropies_from_hidden` in plain torch (any device): head + softmax entropy."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.inference_mode():
        for s in range(0, hidden.shape[0], block):
            out[s : s + block] = entropy_from_logits(model.head(hidden[s : s + block]).float())
    return out


def nll_from_hidden(
    model: ByteEntropyModel, hidden: torch.Tensor, targets: torch.Tensor, block: int = HEAD_BLOCK
) -> torch.Tensor:
    """``-log p(target_t | ≤t)`` in nats for each row of ``hidden [n, D]``; float32 ``[n]``."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.inference_mode():
        for s in range(0, hidden.shape[0], block):
            logits = model.head(hidden[s : s + block]).float()
            out[s : s + block] = F.cross_entropy(logits, targets[s : s + block], reduction="none")
    return out


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


# ---------------------------------------------------------------------------------------------
# Save / load (byte-deterministic safetensors)
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("uint16"): "U16",
    np.dtype("uint32"): "U32",
    np.dtype("uint64"): "U64",
    np.dtype("bool"): "BOOL",
}


def safetensors_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """Serialize numpy arrays in the safetensors format with sorted header/metadata keys.

    Layout: little-endian u64 header length, JSON header padded with spaces to a multiple of
    8 bytes, then the raw little-endian tensor data in header order. ``safetensors.save`` emits
    metadata in hash-map order, which breaks byte-identical re-materialization.
    """
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata values must be str: {bad}")
        header["__metadata__"] = dict(sorted(metadata.items()))
    blobs, offset = [], 0
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if np.dtype(dtype) not in _ST_DTYPES:
            raise TypeError(f"tensor '{name}': unsupported dtype {arr.dtype}")
        blob = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[np.dtype(dtype)],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def model_state_arrays(model: ByteEntropyModel) -> dict[str, np.ndarray]:
    return {
        name: t.detach().to("cpu", torch.float32).contiguous().numpy()
        for name, t in model.state_dict().items()
    }


def entropy_model_bytes(
    model: ByteEntropyModel, extra_metadata: Mapping[str, str] | None = None
) -> bytes:
    """safetensors payload: float32 weights + ``format`` + ``config`` JSON (+ extra strings)."""
    metadata = {"format": MODEL_FORMAT, "config": model.config.to_json()}
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"metadata key '{key}' is reserved")
        metadata[key] = str(value)
    return safetensors_bytes(model_state_arrays(model), metadata)


def save_entropy_model(
    model: ByteEntropyModel,
    path: str | os.PathLike,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    atomic_write_bytes(path, entropy_model_bytes(model, extra_metadata))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return dict(header.get("__metadata__", {}))


def load_entropy_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ByteEntropyModel, dict[str, str]]:
    """Rebuild the exact model (config from the file's metadata) and return it with metadata."""
    from safetensors.numpy import load_file

    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: format '{metadata.get('format')}' is not an entropy model ({MODEL_FORMAT})"
        )
    config = EntropyModelConfig.from_json(metadata["config"])
    model = ByteEntropyModel(config)
    arrays = load_file(str(path))
    state = {name: torch.from_numpy(arr.copy()) for name, arr in arrays.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device), metadata
