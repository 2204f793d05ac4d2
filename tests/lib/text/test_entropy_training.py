"""Entropy-model training: the deterministic sample, the schedule, training determinism, quality."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import entropy_training as et
from tests.lib.text.micro_models import micro

# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sample_is_deterministic_order_independent_and_budgeted():
    rng = random.Random(5)
    articles = [(f"a{i}", bytes(rng.randbytes(rng.randint(50, 400)))) for i in range(60)]
    cfg = micro(sample_bytes=5000, holdout_fraction=0.2, max_eval_bytes=10**6)
    first = et.sample_training_bytes(articles, cfg)
    shuffled = articles[:]
    rng.shuffle(shuffled)
    second = et.sample_training_bytes(shuffled, cfg)
    np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
    assert first.heldout_article_ids == second.heldout_article_ids
    assert set(first.train_article_ids).isdisjoint(first.heldout_article_ids)
    chosen = set(first.train_article_ids) | set(first.heldout_article_ids)
    total = sum(len(d) for i, d in articles if i in chosen)
    assert total <= 5000
    # it is the longest prefix of the hash order that fits the budget
    order = sorted(articles, key=lambda a: et.stable_hash(a[0], cfg.seed))
    sizes = np.cumsum([len(d) for _, d in order])
    n_fit = int((sizes <= 5000).sum())
    assert chosen == {i for i, _ in order[:n_fit]}
    # every training article starts with BOS and its bytes are offset by 4
    assert first.train_tokens[0] == em.BOS_ID
    assert first.train_bytes + len(first.train_article_ids) == len(first.train_tokens)


def test_sample_single_article_falls_back_to_byte_split():
    cfg = micro(holdout_fraction=0.1)
    sample = et.sample_training_bytes([("only", b"x" * 1000)], cfg)
    assert sample.train_bytes == 900 and sample.heldout_bytes == 100
    with pytest.raises(ValueError, match="no non-empty article"):
        et.sample_training_bytes([("e", b"")], cfg)
    with pytest.raises(ValueError, match="duplicate article_id"):
        et.sample_training_bytes([("d", b"ab"), ("d", b"cd")], cfg)


def test_unigram_baseline_by_hand():
    train = em.bytes_to_tokens(b"aab")
    held = [em.bytes_to_tokens(b"ab")]
    cross, entropy = et.unigram_baseline_bits(train, held)
    # add-one: p(a) = 3/259, p(b) = 2/259
    assert cross == pytest.approx(-(math.log2(3 / 259) + math.log2(2 / 259)) / 2)
    assert entropy == pytest.approx(1.0)


def test_lr_schedule_warmup_then_cosine():
    cfg = micro(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    assert [et.lr_at(s, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert et.lr_at(4, cfg) == pytest.approx(1.0)
    assert et.lr_at(9, cfg) == pytest.approx(0.55)
    assert et.lr_at(14, cfg) == pytest.approx(0.1)


def test_training_is_deterministic_and_seed_dependent():
    articles = [(f"t{i}", f"article {i} says hello to the world. ".encode() * 5) for i in range(8)]
    cfg = micro()
    sample = et.sample_training_bytes(articles, cfg)
    threads = torch.get_num_threads()
    assert cfg.num_threads == 1 and threads == 1
    m1, r1 = et.train_entropy_model(sample, cfg)
    m2, r2 = et.train_entropy_model(sample, cfg)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert r1.heldout_bits_per_byte == r2.heldout_bits_per_byte
    m3, _ = et.train_entropy_model(sample, micro(seed=1))
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
    sample = et.sample_training_bytes(pydoc_articles(), cfg)
    model, report = et.train_entropy_model(sample, cfg)
    assert report.unigram_bits_per_byte > 4.0  # English text
    assert report.heldout_bits_per_byte < report.unigram_bits_per_byte - 0.5
    assert report.heldout_bytes > 0 and report.train_bytes > 0
