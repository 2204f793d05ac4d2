"""Chunked inference of the entropy model: hidden states, next-byte entropies and losses.

Pure torch/numpy (no Dagster, no file I/O). :func:`iter_hidden_chunks` runs the trunk over a
token sequence chunk by chunk (O(chunk) memory) with every position given the context a
full-sequence pass gives it; the head then turns row blocks of hidden states into entropies
(:func:`entropies_from_hidden`) or next-byte losses (:func:`nll_from_hidden`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sphere_assets.lib.text.entropy_model import (
    ByteEntropyModel,
    EntropyModelConfig,
    receptive_field,
)


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
