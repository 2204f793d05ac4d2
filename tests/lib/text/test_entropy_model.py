"""Entropy model: attention/RoPE/norm against references, the model file's tensors round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_resources.store import canonical_safetensors, read_safetensors
from tests.lib.text.micro_models import micro

# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_entropy_model(model, path, extra_metadata=None) -> None:
    """The model file as the patching family writes it (``model_file_tensors`` serialized by
    the storage layer's one safetensors writer)."""
    path.write_bytes(canonical_safetensors(*em.model_file_tensors(model, extra_metadata)))


def load_entropy_model(path, device="cpu"):
    """The model rebuilt from a model file read by the storage layer's safetensors reader."""
    return em.model_from_file_tensors(*read_safetensors(path), device)


def naive_window_attention(q, k, v, window):
    """Per-query loop over the allowed keys (numpy float64)."""
    q, k, v = (x.double().numpy() for x in (q, k, v))
    out = np.zeros_like(q)
    d = q.shape[-1]
    for t in range(q.shape[-2]):
        lo = max(0, t - window + 1)
        s = q[..., t : t + 1, :] @ np.swapaxes(k[..., lo : t + 1, :], -1, -2) / math.sqrt(d)
        p = scipy.special.softmax(s, axis=-1)
        out[..., t, :] = (p @ v[..., lo : t + 1, :])[..., 0, :]
    return out


@pytest.mark.parametrize(("seq_len", "window"), [(5, 8), (8, 8), (9, 8), (37, 8), (33, 7), (20, 1)])
def test_windowed_attention_matches_naive_loop(seq_len, window):
    gen = torch.Generator().manual_seed(seq_len * 31 + window)
    q, k, v = torch.randn(3, 2, 3, seq_len, 6, generator=gen).unbind(0)
    got = em.windowed_causal_attention(q, k, v, window).double().numpy()
    np.testing.assert_allclose(got, naive_window_attention(q, k, v, window), atol=2e-6)


@pytest.mark.parametrize(
    ("seq_len", "window", "masked"), [(1, 4, 3), (4, 4, 0), (9, 4, 2), (37, 8, 8)]
)
def test_prefixed_windowed_attention_matches_naive_loop(seq_len, window, masked):
    """A carried prefix of `window` keys/values (the first `masked` before the sequence start)
    gives what the naive loop computes over prefix + sequence."""
    gen = torch.Generator().manual_seed(seq_len * 7 + window + masked)
    q, k, v = torch.randn(3, 2, 3, window + seq_len, 6, generator=gen).unbind(0)
    got = em.windowed_causal_attention(q[:, :, window:], k, v, window, None, True, masked)
    full = naive_window_attention(q[:, :, masked:], k[:, :, masked:], v[:, :, masked:], window)
    np.testing.assert_allclose(got.double().numpy(), full[:, :, window - masked :], atol=2e-6)


def test_sliding_window_mask_reference():
    mask = em.sliding_window_mask(6, 3).numpy()
    expected = np.array([[1 if 0 <= t - s < 3 else 0 for s in range(6)] for t in range(6)], bool)
    np.testing.assert_array_equal(mask, expected)


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 8
    cos, sin = em.rope_tables(40, head_dim, 10000.0)
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, head_dim, generator=gen).unbind(0)

    def score(pq, pk):
        qr = em.apply_rope(q[None], cos[pq : pq + 1], sin[pq : pq + 1])
        kr = em.apply_rope(k[None], cos[pk : pk + 1], sin[pk : pk + 1])
        return float((qr * kr).sum())

    assert score(7, 3) == pytest.approx(score(30, 26), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 5), abs=1e-3)
    # rotation preserves norms and position 0 is the identity
    np.testing.assert_allclose(em.apply_rope(q[None], cos[:1], sin[:1])[0], q, atol=1e-7)
    rotated = em.apply_rope(q[None], cos[9:10], sin[9:10])
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-6)


def test_rmsnorm_formula():
    norm = em.RMSNorm(5, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0]))
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5, 0.0]])
    expected = x.numpy() / np.sqrt((x.numpy() ** 2).mean() + 1e-5) * norm.weight.detach().numpy()
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-6)


def test_forward_returns_logits_and_prenorm_hidden():
    model = em.build_model(micro()).eval()
    tokens = torch.from_numpy(em.bytes_to_tokens(b"hello, world"))[None]
    with torch.no_grad():
        logits, hidden = model(tokens)
        assert logits.shape == (1, 13, em.VOCAB_SIZE)
        assert hidden.shape == (1, 13, 16)
        manual = model.output(model.norm(hidden))
    torch.testing.assert_close(logits, manual, rtol=0, atol=0)
    # pre-norm: per-position norms vary; after the final RMSNorm they would be ~sqrt(dim)
    assert float(hidden.norm(dim=-1).std()) > 0


def test_model_is_causal_and_limited_to_its_receptive_field():
    cfg = micro(window=3, n_layers=2)
    model = em.build_model(cfg).eval()
    rf = em.receptive_field(cfg)  # 4
    tokens = torch.from_numpy(em.bytes_to_tokens(b"abcdefghijklmnop"))
    changed = tokens.clone()
    changed[5] = 200
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(changed)
    diff = (a - b).abs().amax(-1)[0]
    assert torch.all(diff[:5] == 0)  # causal
    assert torch.all(diff[5 : 5 + rf + 1] > 0)  # inside the receptive field
    assert torch.all(diff[5 + rf + 1 :] == 0)  # beyond it: windowed attention


def test_tables_built_under_inference_mode_serve_training():
    """RoPE tables are cached per device as one prefix table: a table first built by an
    inference pass must still work for a training step (no inference tensors saved for
    backward) and equal the table built for the shorter length."""
    cfg = micro()
    model = em.build_model(cfg)
    with torch.inference_mode():
        model(torch.arange(40)[None] % 200 + 4)
    logits, _ = model(torch.arange(16)[None] % 200 + 4)
    logits.sum().backward()
    cos, sin, _ = model._tables(16, "cpu")
    cos16, sin16 = em.rope_tables(16, cfg.head_dim, cfg.rope_theta)
    assert torch.equal(cos, cos16) and torch.equal(sin, sin16)


def test_save_load_roundtrip_identical_logits(tmp_path):
    cfg = micro(dim=24, n_heads=2)
    model = em.build_model(cfg).eval()
    path = tmp_path / "model.safetensors"
    save_entropy_model(model, path, {"heldout_bits_per_byte": "2.5"})
    loaded, meta = load_entropy_model(path)
    assert loaded.config == cfg
    assert meta["format"] == em.MODEL_FORMAT and meta["heldout_bits_per_byte"] == "2.5"
    tokens = torch.from_numpy(em.bytes_to_tokens("ünïcode bytes".encode()))
    with torch.no_grad():
        a, ha = model(tokens)
        b, hb = loaded(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ha, hb, rtol=0, atol=0)
    # byte-identical serialization, readable by the safetensors library itself
    again = tmp_path / "again.safetensors"
    save_entropy_model(model, again, {"heldout_bits_per_byte": "2.5"})
    assert path.read_bytes() == again.read_bytes()
    from safetensors.torch import load_file

    state = load_file(str(path))
    assert set(state) == set(model.state_dict())
    with pytest.raises(ValueError, match="reserved"):
        save_entropy_model(model, again, {"config": "x"})


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(canonical_safetensors({"a": np.zeros(2, np.float32)}, {"format": "other"}))
    with pytest.raises(ValueError, match="not an entropy model"):
        load_entropy_model(path)


def test_config_json_roundtrip_and_validation():
    cfg = em.EntropyModelConfig.base()
    assert em.EntropyModelConfig.from_json(cfg.to_json()) == cfg
    assert cfg.hidden_dim == 704 and em.receptive_field(cfg) == 4 * 511
    with pytest.raises(ValueError, match="divisible"):
        em.EntropyModelConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown"):
        em.EntropyModelConfig.from_json('{"bogus": 1}')
    with pytest.raises(ValueError, match="holdout_fraction"):
        em.EntropyModelConfig(holdout_fraction=0.0)


def test_model_file_writer_reads_back_with_library():
    from safetensors.numpy import load

    arrays = {"b": np.arange(5, dtype=np.int32), "a": np.ones((2, 3), np.float32)}
    payload = canonical_safetensors(arrays, {"z": "1", "a": "2"})
    back = load(payload)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
