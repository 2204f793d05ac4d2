"""One model pass for patches and vectors (lib.text.shared_pass) against the two-pass reference:
``patcher.patch_article`` then ``patch_embeddings.pool_patch_embeddings`` (bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import model_workers as mw
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text import shared_pass as sp
from tests.lib.text.micro_models import micro

PATCH_FIELDS = ("byte_start", "byte_len", "mean_entropy", "max_entropy", "first_entropy")
VECTOR_FIELDS = ("embeddings", "prominence", "patch_entropy", "byte_entropy")


def same(x: np.ndarray, y: np.ndarray) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return em.build_model(micro()).eval()


def texts() -> list[bytes]:
    from pydoc_data.topics import topics

    docs = [v.encode() for _, v in sorted(topics.items())[:3]]
    return [b"x", b"ab", "Ωμέγα 𝄞".encode(), *docs]


@pytest.mark.parametrize(
    "mode, max_len, chunk, quantile",
    [
        ("global", 128, None, 0.75),
        pytest.param("global", 3, 7, 0.5, marks=pytest.mark.slow),  # tiny chunks: many passes
        ("global", None, 13, 0.9),
        pytest.param("monotonic", 5, 9, 0.7, marks=pytest.mark.slow),
        ("monotonic", None, None, 0.8),
    ],
)
def test_one_pass_equals_two_passes(model, one_torch_thread, mode, max_len, chunk, quantile):
    for data in texts():
        # θ at a quantile of the article's own entropies (or their steps): patches of all sizes
        h = pt.article_entropies(model, data)
        values = h if mode == "global" else np.diff(h)
        threshold = float(np.quantile(values, quantile)) if values.size else 0.0
        ref_p = pt.patch_article(model, data, threshold, mode, max_len, chunk)
        ref_v = pe.pool_patch_embeddings(model, data, ref_p.byte_start, ref_p.byte_len, chunk)
        got = sp.patch_and_pool_article(model, data, threshold, mode, max_len, chunk)
        assert got.patches.byte_entropy is None
        for f in PATCH_FIELDS:
            assert same(getattr(ref_p, f), getattr(got.patches, f)), (data[:20], f)
        for f in VECTOR_FIELDS:
            assert same(getattr(ref_v, f), getattr(got.vectors, f)), (data[:20], f)
        # and the patches really vary: several patches on the longer texts
        if len(data) > 1000:
            assert 1 < got.patches.num_patches < len(data)


@pytest.mark.parametrize("mode", ["global", "monotonic"])
@pytest.mark.parametrize("max_len", [None, 1, 4, 9])
def test_start_stream_equals_blt_rule(mode, max_len):
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 17, 300):
        h = rng.gamma(2.0, 1.0, n + 1).astype(np.float32)
        threshold = 2.0 if mode == "global" else 0.5
        ref = pt.byte_patch_starts(h, threshold, mode, max_len)
        for _ in range(5):
            stream = sp.StartStream(n, threshold, mode, max_len)
            cuts = np.sort(rng.choice(np.arange(1, n + 1), size=min(n, 4), replace=False))
            lo = 0
            for hi in [*cuts.tolist(), n + 1]:
                stream.feed(lo, h[lo:hi])
                # every start below the last fed token is final
                known = ref[ref < min(hi, n)]
                assert np.array_equal(stream.starts(), known), (n, hi)
                lo = hi
            assert np.array_equal(stream.starts(), ref)


@pytest.mark.slow
def test_on_worker_pool_equals_in_process(model, one_torch_thread):
    articles = [(f"a{i}", data) for i, data in enumerate(texts())]
    threshold = float(np.median(pt.article_entropies(model, articles[-1][1])))
    local = list(sp.patch_and_pool_articles(model, articles, threshold, "global", 16, None))
    with mw.ModelWorkers(model, 2, 1) as pool:
        remote = list(
            sp.patch_and_pool_articles(
                model, articles, threshold, "global", 16, None, workers=pool, batch_bytes=1
            )
        )
    assert len(local) == len(remote) == len(articles)
    for a, b in zip(local, remote, strict=True):
        for f in PATCH_FIELDS:
            assert same(getattr(a.patches, f), getattr(b.patches, f))
        for f in VECTOR_FIELDS:
            assert same(getattr(a.vectors, f), getattr(b.vectors, f))


def test_unknown_mode_is_an_error(model):
    with pytest.raises(ValueError, match="got 'sideways'"):
        list(sp.patch_and_pool_articles(model, [("a", b"abc")], 1.0, "sideways"))
