"""BLT-family byte-level entropy model: vocabulary, configuration and the causal byte LM.

Pure torch/numpy (no Dagster, no file I/O). The model follows the Byte Latent Transformer's
entropy model:

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
    Chunked inference (``entropy_inference.iter_hidden_chunks``) carries each layer's keys and
    values of the last ``window`` positions from one chunk into the next (:meth:`ByteEntropyModel.
    trunk_continued`; or, on request, overlaps chunks by the receptive field), so it reproduces
    a full-sequence forward pass in O(chunk) memory.
    The tiny default (dim 64, 2 layers, 2 heads, window 32, SwiGLU hidden 192: 140k params)
    trains in ~40-55 s on one core of this machine and reaches ~2.26 bits/byte on the bundled
    corpus (unigram baseline 4.72).
    :meth:`ByteEntropyModel.forward` returns the logits AND the pre-norm hidden states ``h_L``
    (the input of the final norm), which ``patch_embeddings.py`` pools.

Model file (:func:`model_file_tensors`, :func:`model_from_file_tensors`)
    The float32 state dict plus string metadata ``format``, ``config`` (JSON of
    :class:`EntropyModelConfig`) and any metrics; :func:`model_from_file_tensors` rebuilds the
    exact model from those alone. This module only builds and reads the tensors and metadata;
    the safetensors bytes are written and read by the storage layer
    (``sphere_resources.store``: canonical, byte-deterministic serialization).

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

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

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
# Model file: tensors + metadata (serialized by the storage layer)
# ---------------------------------------------------------------------------------------------


def model_state_arrays(model: ByteEntropyModel) -> dict[str, np.ndarray]:
    """The state dict as float32 numpy arrays on the CPU, keyed by BLT parameter name."""
    return {
        name: t.detach().to("cpu", torch.float32).contiguous().numpy()
        for name, t in model.state_dict().items()
    }


def model_file_tensors(
    model: ByteEntropyModel, extra_metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(float32 weights, string metadata ``format`` + ``config`` JSON + extra strings) of the
    model file; ``format`` and ``config`` are reserved keys."""
    metadata = {"format": MODEL_FORMAT, "config": model.config.to_json()}
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise ValueError(f"metadata key '{key}' is reserved")
        metadata[key] = str(value)
    return model_state_arrays(model), metadata


def model_from_file_tensors(
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    device: str | torch.device = "cpu",
) -> tuple[ByteEntropyModel, dict[str, str]]:
    """Rebuild the exact model (config from the metadata, weights strict by name) in eval mode
    on ``device``; returns it with the metadata."""
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"format '{metadata.get('format')}' is not an entropy model ({MODEL_FORMAT})"
        )
    config = EntropyModelConfig.from_json(metadata["config"])
    model = ByteEntropyModel(config)
    state = {name: torch.from_numpy(np.array(arr, copy=True)) for name, arr in arrays.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device), dict(metadata)
