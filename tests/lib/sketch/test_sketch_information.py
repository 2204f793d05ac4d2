"""The Fisher information of sketch registers against its closed form and against the spread of
maximum-likelihood estimates on simulated registers (brute force)."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import sketch_information as si


def test_bitmap_information_tends_to_its_closed_form():
    info = si.mean_information(si.bitmap_register_information)
    assert info == pytest.approx(math.pi**2 / (6 * math.log(2)), rel=1e-6)
    assert si.relative_standard_error(info, 1) == pytest.approx(0.6491, abs=1e-4)


def _bitmap_words(rng, load: float, m: int) -> np.ndarray:
    """[m] uint32 bitmap registers of a Poissonized sketch at ``load`` keys per register."""
    p = si.bitmap_rank_probabilities()
    bits = rng.random((m, p.size)) < -np.expm1(-load * p)
    return (
        (bits * (np.uint64(1) << np.arange(p.size, dtype=np.uint64))).sum(axis=1).astype(np.uint32)
    )


def test_the_projects_cardinality_estimator_sits_on_the_bitmap_floor():
    """hllset's estimator is the Poisson ML: its spread over simulated sketches matches the
    Cramér–Rao floor computed from the information (and is not below it)."""
    rng = np.random.default_rng(7)
    p_bits, load, reps = 10, 50.0, 300
    m = 1 << p_bits
    n = load * m
    est = np.array([hs.cardinality(_bitmap_words(rng, load, m), p_bits) for _ in range(reps)])
    rsd = float(np.std(est / n - 1, ddof=1))
    floor = si.relative_standard_error(si.bitmap_register_information(load), m)
    assert abs(float(np.mean(est)) / n - 1) < 4 * floor / math.sqrt(reps)  # unbiased
    assert rsd == pytest.approx(floor, rel=0.12)  # 300 reps: the s.d. is known to ±4%


def test_max_register_information_matches_ml_spread_on_simulated_registers():
    rng = np.random.default_rng(11)
    load, m, reps = 40.0, 2048, 200
    k = np.arange(0, 65, dtype=np.float64)

    def loglik_grad(lam: float, counts: np.ndarray) -> float:
        cdf = np.exp(-lam * 0.5**k)
        dcdf = -(0.5**k) * cdf
        pmf, dpmf = np.diff(cdf, prepend=0.0), np.diff(dcdf, prepend=0.0)
        keep = counts > 0
        return float(np.sum(counts[keep] * dpmf[keep] / pmf[keep]))

    estimates = []
    for _ in range(reps):
        # max rank of Poisson(load) keys, by inverting P(max <= k) = exp(-load 2^-k)
        u = rng.random(m)
        ranks = np.ceil(np.log2(np.maximum(-load / np.log(u), 1e-300))).clip(0, 64).astype(int)
        counts = np.bincount(ranks, minlength=65).astype(np.float64)
        estimates.append(brentq(loglik_grad, load / 4, load * 4, args=(counts,)))
    rsd = float(np.std(np.array(estimates) / load - 1, ddof=1))
    floor = si.relative_standard_error(si.max_register_information(load), m)
    assert rsd == pytest.approx(floor, rel=0.15)
    assert si.mean_information(si.max_register_information) == pytest.approx(0.930, abs=0.002)


def test_equal_memory_floor_favours_eight_bit_max_registers_over_32_bit_bitmaps():
    """Why no estimator over this sketch reaches datasketch's RMSE at equal memory (issue 17)."""
    bitmap = si.memory_variance_product(si.mean_information(si.bitmap_register_information), 32)
    hll8 = si.memory_variance_product(si.mean_information(si.max_register_information), 8)
    assert bitmap == pytest.approx(13.48, abs=0.01) and hll8 == pytest.approx(8.60, abs=0.01)
    assert math.sqrt(bitmap / hll8) == pytest.approx(1.252, abs=0.002)
