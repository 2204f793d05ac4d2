"""Entropy model: attention/RoPE/norm against references, training determinism, save/load."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from sphere_assets.lib.text import entropy_model as em


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP sync between 2 threads costs more
    than it gains for these micro models (timings only; results are thread-independent here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MICRO = dict(dim=16, n_layers=2, n_heads=2, window=4, seq_len=16, batch_size=4, steps=6)


def micro(**kw) -> em.EntropyModelConfig:
    return em.EntropyModelConfig.tiny(**{**MICRO, **kw})


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


def test_entropy_from_logits_matches_scipy():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, em.VOCAB_SIZE, generator=gen) * 4
    expected = scipy.stats.entropy(scipy.special.softmax(logits.double().numpy(), axis=-1), axis=-1)
    np.testing.assert_allclose(
        em.entropy_from_logits(logits).numpy(), expected, rtol=1e-5, atol=1e-6
    )
    uniform = torch.zeros(1, em.VOCAB_SIZE)
    assert float(em.entropy_from_logits(uniform)[0]) == pytest.approx(math.log(260), rel=1e-6)


def entropies_float64(model, hidden: torch.Tensor) -> np.ndarray:
    """Independent reference: float64 head + scipy entropy of the softmax."""
    with torch.no_grad():
        n = torch.nn.functional.rms_norm(
            hidden.double(), (hidden.shape[-1],), model.norm.weight.double(), model.norm.eps
        )
        logits = (n @ model.output.weight.double().T).numpy()
    return scipy.stats.entropy(scipy.special.softmax(logits, axis=-1), axis=-1)


@pytest.mark.parametrize("window", [5, 8])
def test_chunked_inference_matches_full_forward(window):
    cfg = micro(window=window, n_layers=3)
    model = em.build_model(cfg).eval()
    tokens = em.bytes_to_tokens(bytes(random.Random(0).randbytes(120)))
    with torch.no_grad():
        logits, hidden = model(torch.from_numpy(tokens))
    full_h = entropies_float64(model, hidden[0])

    def chunked(chunk, context=None):
        out = np.empty(len(tokens), np.float32)
        hid = np.empty((len(tokens), cfg.dim), np.float32)
        for start, h in em.iter_hidden_chunks(model, tokens, chunk, context):
            out[start : start + len(h)] = em.entropies_from_hidden(model, h, block=7).numpy()
            hid[start : start + len(h)] = h.numpy()
        return out, hid

    rf = em.receptive_field(cfg)
    # default: keys/values carried between chunks; context=N: overlapping recomputation
    for chunk, context in [(c, None) for c in (1, 2, window - 1, window, 7, 50, 121, 1000)] + [
        (1, rf),
        (7, em.default_context(cfg)),
        (50, rf),
    ]:
        got, hid = chunked(chunk, context)
        np.testing.assert_allclose(hid, hidden[0].numpy(), atol=2e-5, err_msg=f"{chunk} {context}")
        np.testing.assert_allclose(got, full_h, atol=5e-5, err_msg=f"{chunk} {context}")
    # without context the chunk starts lose it: carried state or overlap is what fixes it
    _, no_ctx = chunked(7, context=0)
    assert np.abs(no_ctx - hidden[0].numpy()).max() > 1e-2
    # a sequence that fits one chunk is exactly the plain trunk
    with torch.inference_mode():
        first, carry = model.trunk_continued(torch.from_numpy(tokens)[None], None, keep=False)
        assert carry is None
        assert torch.equal(first, model.trunk(torch.from_numpy(tokens)[None]))


def test_entropies_from_hidden_matches_float64_reference_and_torch_path():
    cfg = micro(dim=32)
    model = em.build_model(cfg).eval()
    hidden = torch.randn(1000, cfg.dim, generator=torch.Generator().manual_seed(1))
    seen = []
    for scale in (1.0, 20.0, 50.0):  # near-uniform to peaked distributions
        with torch.no_grad():
            model.output.weight.mul_(scale)
        expected = entropies_float64(model, hidden)
        seen += [expected.min(), expected.max()]
        # float32 logits (|z| up to ~30 nats) bound the agreement, not the entropy kernel
        # (tests/compute/test_entropy_kernel.py checks that on exact float32 logits)
        for block in (1, 7, 512, 4096):
            got = em.entropies_from_hidden(model, hidden, block).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5, err_msg=str(block))
        np.testing.assert_allclose(
            em.entropies_from_hidden_torch(model, hidden).numpy(), expected, rtol=1e-5, atol=2e-5
        )
    assert min(seen) < 0.1 and max(seen) > 5.0


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


def test_sample_is_deterministic_order_independent_and_budgeted():
    rng = random.Random(5)
    articles = [(f"a{i}", bytes(rng.randbytes(rng.randint(50, 400)))) for i in range(60)]
    cfg = micro(sample_bytes=5000, holdout_fraction=0.2, max_eval_bytes=10**6)
    first = em.sample_training_bytes(articles, cfg)
    shuffled = articles[:]
    rng.shuffle(shuffled)
    second = em.sample_training_bytes(shuffled, cfg)
    np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
    assert first.heldout_article_ids == second.heldout_article_ids
    assert set(first.train_article_ids).isdisjoint(first.heldout_article_ids)
    chosen = set(first.train_article_ids) | set(first.heldout_article_ids)
    total = sum(len(d) for i, d in articles if i in chosen)
    assert total <= 5000
    # it is the longest prefix of the hash order that fits the budget
    order = sorted(articles, key=lambda a: em.stable_hash(a[0], cfg.seed))
    sizes = np.cumsum([len(d) for _, d in order])
    n_fit = int((sizes <= 5000).sum())
    assert chosen == {i for i, _ in order[:n_fit]}
    # every training article starts with BOS and its bytes are offset by 4
    assert first.train_tokens[0] == em.BOS_ID
    assert first.train_bytes + len(first.train_article_ids) == len(first.train_tokens)


def test_sample_single_article_falls_back_to_byte_split():
    cfg = micro(holdout_fraction=0.1)
    sample = em.sample_training_bytes([("only", b"x" * 1000)], cfg)
    assert sample.train_bytes == 900 and sample.heldout_bytes == 100
    with pytest.raises(ValueError, match="no non-empty article"):
        em.sample_training_bytes([("e", b"")], cfg)
    with pytest.raises(ValueError, match="duplicate article_id"):
        em.sample_training_bytes([("d", b"ab"), ("d", b"cd")], cfg)


def test_unigram_baseline_by_hand():
    train = em.bytes_to_tokens(b"aab")
    held = [em.bytes_to_tokens(b"ab")]
    cross, entropy = em.unigram_baseline_bits(train, held)
    # add-one: p(a) = 3/259, p(b) = 2/259
    assert cross == pytest.approx(-(math.log2(3 / 259) + math.log2(2 / 259)) / 2)
    assert entropy == pytest.approx(1.0)


def test_lr_schedule_warmup_then_cosine():
    cfg = micro(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    assert [em.lr_at(s, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert em.lr_at(4, cfg) == pytest.approx(1.0)
    assert em.lr_at(9, cfg) == pytest.approx(0.55)
    assert em.lr_at(14, cfg) == pytest.approx(0.1)


def test_training_is_deterministic_and_seed_dependent():
    articles = [(f"t{i}", f"article {i} says hello to the world. ".encode() * 5) for i in range(8)]
    cfg = micro()
    sample = em.sample_training_bytes(articles, cfg)
    threads = torch.get_num_threads()
    assert cfg.num_threads == 1 and threads == 1
    m1, r1 = em.train_entropy_model(sample, cfg)
    m2, r2 = em.train_entropy_model(sample, cfg)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert r1.heldout_bits_per_byte == r2.heldout_bits_per_byte
    m3, _ = em.train_entropy_model(sample, micro(seed=1))
    assert not torch.equal(m1.output.weight, m3.output.weight)
    # the global torch state is restored afterwards
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def pydoc_articles() -> list[tuple[str, bytes]]:
    from pydoc_data.topics import topics

    return [(key, text.encode("utf-8")) for key, text in sorted(topics.items())]


def test_small_training_run_beats_unigram():
    cfg = em.EntropyModelConfig.tiny(
        dim=32,
        n_layers=1,
        n_heads=2,
        window=16,
        seq_len=64,
        batch_size=16,
        steps=100,
        lr=1e-2,
        warmup_steps=10,
        sample_bytes=120_000,
        holdout_fraction=0.2,
        max_eval_bytes=6_000,
        num_threads=1,
    )
    sample = em.sample_training_bytes(pydoc_articles(), cfg)
    model, report = em.train_entropy_model(sample, cfg)
    assert report.unigram_bits_per_byte > 4.0  # English text
    assert report.heldout_bits_per_byte < report.unigram_bits_per_byte - 0.5
    assert report.heldout_bytes > 0 and report.train_bytes > 0


def test_save_load_roundtrip_identical_logits(tmp_path):
    cfg = micro(dim=24, n_heads=2)
    model = em.build_model(cfg).eval()
    path = tmp_path / "model.safetensors"
    em.save_entropy_model(model, path, {"heldout_bits_per_byte": "2.5"})
    loaded, meta = em.load_entropy_model(path)
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
    em.save_entropy_model(model, again, {"heldout_bits_per_byte": "2.5"})
    assert path.read_bytes() == again.read_bytes()
    from safetensors.torch import load_file

    state = load_file(str(path))
    assert set(state) == set(model.state_dict())
    with pytest.raises(ValueError, match="reserved"):
        em.save_entropy_model(model, again, {"config": "x"})


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.safetensors"
    em.atomic_write_bytes(
        path, em.safetensors_bytes({"a": np.zeros(2, np.float32)}, {"format": "other"})
    )
    with pytest.raises(ValueError, match="not an entropy model"):
        em.load_entropy_model(path)


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


def test_safetensors_bytes_reads_back_with_library():
    from safetensors.numpy import load

    arrays = {"b": np.arange(5, dtype=np.int32), "a": np.ones((2, 3), np.float32)}
    payload = em.safetensors_bytes(arrays, {"z": "1", "a": "2"})
    back = load(payload)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)


def test_keep_freed_memory_is_applied_and_harmless():
    import platform

    applied = em.keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert applied
    model = em.build_model(micro()).eval()
    with torch.inference_mode():
        logits, _ = model(torch.arange(40)[None] % 200 + 4)
    assert torch.isfinite(logits).all()
