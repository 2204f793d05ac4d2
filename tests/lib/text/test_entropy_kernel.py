"""Compiled entropy kernel against float64 references (scipy) and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from sphere_assets.lib.text import entropy_kernel as ek

VOCAB = 260


def reference(logits: np.ndarray) -> np.ndarray:
    """float64 entropy of softmax over the last axis (rows = distributions)."""
    return scipy.stats.entropy(scipy.special.softmax(logits.astype(np.float64), axis=-1), axis=-1)


def kernel(logits: np.ndarray) -> np.ndarray:
    """Run the vocab-major kernel on row-major ``logits [n, V]``."""
    out = np.full(logits.shape[0], np.nan, np.float32)
    ek.entropy_of_columns(np.ascontiguousarray(logits.T, dtype=np.float32), out)
    return out


@pytest.mark.parametrize("scale", [0.01, 1.0, 4.0, 20.0, 300.0])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 515])
def test_matches_float64_reference(scale, n):
    rng = np.random.default_rng(int(scale * 100) + n)
    logits = (rng.standard_normal((n, VOCAB)) * scale + rng.normal(0, 50, (n, 1))).astype(
        np.float32
    )
    np.testing.assert_allclose(kernel(logits), reference(logits), rtol=2e-6, atol=5e-7)


def test_uniform_one_hot_and_extreme_rows():
    logits = np.zeros((5, VOCAB), np.float32)
    logits[1, 7] = 200.0  # one-hot: every other term underflows (exp argument clamped)
    logits[2, :] = -1e4
    logits[2, :2] = 0.0  # two equal winners far above the rest: H = log 2
    logits[3, :] = np.linspace(-80, 0, VOCAB)  # arguments down to the clamp
    logits[4, :] = np.float32(3e4)  # large shared offset
    got = kernel(logits)
    assert got[0] == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert got[1] == pytest.approx(0.0, abs=1e-7)
    assert got[2] == pytest.approx(math.log(2), rel=1e-6)
    np.testing.assert_allclose(got[3], reference(logits[3:4])[0], rtol=2e-6)
    assert got[4] == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_empty_and_other_vocab_sizes():
    out = np.zeros(0, np.float32)
    ek.entropy_of_columns(np.zeros((VOCAB, 0), np.float32), out)
    for vocab in (1, 2, 16, 17, 33):
        logits = np.random.default_rng(vocab).standard_normal((9, vocab)).astype(np.float32) * 3
        np.testing.assert_allclose(kernel(logits), reference(logits), rtol=2e-6, atol=5e-7)


def test_exp_polynomial_accuracy():
    """The inlined float32 exp: relative error within ~1.5 float32 ulps on [-87, 0]."""
    from numba import njit

    @njit
    def exp_all(d, out):
        for i in range(d.size):
            out[i] = ek._exp_nonpositive(d[i])

    d = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -np.logspace(-8, 0, 1001), [0.0]])
    d = d.astype(np.float32)
    out = np.empty_like(d)
    exp_all(d, out)
    exact = np.exp(d.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < 1.0e-7
