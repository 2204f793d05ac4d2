"""θ-calibration sample (lib.text.calibration_sample): windows from every shard, uniform over
bytes, entropies equal to the in-article ones; θ from it hits the target on the whole corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_assets.lib.text import calibration_sample as cs
from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import entropy_training as et
from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.lib.text.entropy_inference import default_context
from tests.lib.text.micro_models import micro


def bundled_shards(n: int) -> dict[str, list[tuple[str, bytes]]]:
    from pydoc_data.topics import topics

    shards: dict[str, list[tuple[str, bytes]]] = {str(k): [] for k in range(n)}
    for key, text in sorted(topics.items()):
        article_id = f"pydoc:{key}"
        shards[str(shard_of(article_id, n))].append((article_id, text.encode()))
    return shards


@pytest.fixture(scope="module")
def trained():
    """A micro model trained for a few seconds on the bundled corpus (entropies that vary)."""
    torch.set_num_threads(1)
    shards = bundled_shards(4)
    cfg = micro(dim=32, n_layers=1, window=16, seq_len=64, batch_size=16, steps=80, lr=1e-2)
    sample = et.sample_training_bytes((a for v in shards.values() for a in v), cfg)
    model, _ = et.train_entropy_model(sample, cfg, "cpu")
    return model.eval(), shards


def test_window_entropies_equal_the_in_article_values(trained, one_torch_thread):
    model, shards = trained
    data = max((d for v in shards.values() for _, d in v), key=len)
    full = pt.article_entropies(model, data)
    ctx = default_context(model.config)
    for start, stop in [(0, 50), (1, 300), (5000, 7048), (len(data) - 10, len(data))]:
        got = cs.window_entropies(model, data, start, stop, ctx)
        assert got.shape == (stop - start + 1,)
        np.testing.assert_allclose(got, full[start : stop + 1], atol=1e-4)


def test_plan_covers_every_shard_whole_or_by_windows():
    sizes = {"0": 1000, "1": 50_000, "2": 0, "3": 200_000}
    plans = {p.shard: p for p in cs.plan_windows(sizes, 40_000, 1000, seed=3)}
    assert plans["0"].whole and plans["2"].whole  # within their 10 KB share
    for key in ("1", "3"):
        p = plans[key]
        assert not p.whole and p.offsets.size == 10
        assert np.all(np.diff(p.offsets) >= 0) and p.offsets.min() >= 0
        assert p.offsets.max() < sizes[key]
    again = {p.shard: p for p in cs.plan_windows(sizes, 40_000, 1000, seed=3)}
    assert all(np.array_equal(again[k].offsets, plans[k].offsets) for k in sizes)
    with pytest.raises(ValueError, match="no shards"):
        cs.plan_windows({}, 10, 10)


def test_offsets_are_uniform_over_bytes():
    (plan,) = cs.plan_windows({"7": 10_000_000}, 4_000_000, 1000)
    assert plan.offsets.size == 4000
    # a uniform sample: each tenth of the shard holds ~10% of the windows
    counts = np.histogram(plan.offsets, bins=10, range=(0, 10_000_000))[0]
    assert counts.min() > 300 and counts.max() < 500


def test_sample_statistics_and_theta_hit_the_target_on_the_corpus(trained, one_torch_thread):
    model, shards = trained
    sizes = {k: sum(len(d) for _, d in v) for k, v in shards.items()}
    plans = cs.plan_windows(sizes, 128 * 1024, 512)
    segments, stats = cs.sample_segments(model, plans, lambda k: iter(shards[k]), 512)
    assert stats.shards == 4 and stats.shards_whole == 0
    assert stats.windows == len(segments) == 256
    assert set(stats.segment_shard) == {0, 1, 2, 3}
    assert stats.bytes == sum(len(s) - 1 for s in segments) <= 128 * 1024
    assert stats.corpus_bytes == sum(sizes.values())
    meta = stats.as_metadata()
    assert meta["calibration_share_of_corpus"] == round(stats.bytes / stats.corpus_bytes, 6)
    theta = pt.calibrate_threshold(segments, 4.5).threshold
    # the whole corpus (~4x the sample) patched with that θ
    everything = [pt.article_entropies(model, d) for v in shards.values() for _, d in v]
    assert abs(pt.mean_patch_size(everything, theta) - 4.5) / 4.5 < 0.05


def test_small_shards_are_taken_whole(trained, one_torch_thread):
    model, shards = trained
    sizes = {k: sum(len(d) for _, d in v) for k, v in shards.items()}
    plans = cs.plan_windows(sizes, 10_000_000, 2048)
    segments, stats = cs.sample_segments(model, plans, lambda k: iter(shards[k]))
    assert stats.shards_whole == 4 and stats.windows == 0
    assert stats.articles == sum(len(v) for v in shards.values())
    assert stats.bytes == stats.corpus_bytes
    assert len(segments) == stats.articles
    first = shards[plans[0].shard][0][1]
    assert np.array_equal(segments[0], pt.article_entropies(model, first))


def test_micro_model_is_untrained_safe():
    # plan_windows alone is pure numpy: no model needed
    torch.manual_seed(0)
    model = em.build_model(micro()).eval()
    segments, stats = cs.sample_segments(
        model, cs.plan_windows({"0": 3}, 10, 10), lambda k: iter([("a", b"abc")])
    )
    assert stats.articles == 1 and len(segments) == 1 and segments[0].shape == (4,)
