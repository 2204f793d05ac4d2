"""Chunked inference: entropies and hidden states against full-forward float64 references."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from sphere_assets.lib.text import entropy_inference as ei
from sphere_assets.lib.text import entropy_model as em
from tests.lib.text.micro_models import micro

# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_entropy_from_logits_matches_scipy():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, em.VOCAB_SIZE, generator=gen) * 4
    expected = scipy.stats.entropy(scipy.special.softmax(logits.double().numpy(), axis=-1), axis=-1)
    np.testing.assert_allclose(
        ei.entropy_from_logits(logits).numpy(), expected, rtol=1e-5, atol=1e-6
    )
    uniform = torch.zeros(1, em.VOCAB_SIZE)
    assert float(ei.entropy_from_logits(uniform)[0]) == pytest.approx(math.log(260), rel=1e-6)


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
        for start, h in ei.iter_hidden_chunks(model, tokens, chunk, context):
            out[start : start + len(h)] = ei.entropies_from_hidden(model, h, block=7).numpy()
            hid[start : start + len(h)] = h.numpy()
        return out, hid

    rf = em.receptive_field(cfg)
    # default: keys/values carried between chunks; context=N: overlapping recomputation
    for chunk, context in [(c, None) for c in (1, 2, window - 1, window, 7, 50, 121, 1000)] + [
        (1, rf),
        (7, ei.default_context(cfg)),
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
        # (tests/lib/text/test_entropy_kernel.py checks that on exact float32 logits)
        for block in (1, 7, 512, 4096):
            got = ei.entropies_from_hidden(model, hidden, block).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5, err_msg=str(block))
        np.testing.assert_allclose(
            ei.entropies_from_hidden_torch(model, hidden).numpy(), expected, rtol=1e-5, atol=2e-5
        )
    assert min(seen) < 0.1 and max(seen) > 5.0
