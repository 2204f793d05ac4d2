"""Set algebra of HLLSets (lib/sketch/hll_estimators.py) against exact sets: known cases, symmetry,
an independent scipy maximisation of the same likelihood, bias and standard-error calibration on
seeded random pairs, and the old AND-bitmap bias the estimator replaces."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from sphere_assets.lib.sketch import hll_estimators as he
from sphere_assets.lib.sketch import hllset as hs

RNG = np.random.default_rng(20240917)


def parts(a: int, b: int, x: int, p: int, rng=RNG) -> tuple[np.ndarray, np.ndarray]:
    """One layer each of A = (a private + x shared keys) and B = (b private + x shared)."""
    h = rng.integers(0, 2**64, a + b + x, dtype=np.uint64)
    ha, hb, hx = h[:a], h[a : a + b], h[a + b :]
    wa = hs.words_from_bits(hs.bits_of(np.concatenate([ha, hx]), p), p)
    wb = hs.words_from_bits(hs.bits_of(np.concatenate([hb, hx]), p), p)
    return wa, wb


def within(est: he.Estimate, true: float, k: float = 4.0) -> bool:
    return abs(est.value - true) <= k * est.se + 1e-9


# --- known cases -------------------------------------------------------------------------------


def test_identical_sets_have_no_private_part():
    wa, _ = parts(30_000, 0, 0, 10)
    e = he.joint_estimate(wa, wa.copy(), 10)
    assert e.a_only.value == 0.0 and e.b_only.value == 0.0
    assert e.both.value == pytest.approx(hs.cardinality(wa, 10), rel=1e-9)
    assert e.jaccard.value == 1.0 and e.tau.value == 1.0 and e.rho.value == 0.0
    assert within(e.both, 30_000)


def test_nested_sets_estimate_the_outer_part_only():
    p = 12
    base = RNG.integers(0, 2**64, 20_000, dtype=np.uint64)
    outer = hs.words_from_bits(hs.bits_of(base, p), p)
    inner = hs.words_from_bits(hs.bits_of(base[:5_000], p), p)
    e = he.joint_estimate(inner, outer, p)  # A ⊂ B: no register has an A-only bit
    assert e.a_only.value == 0.0
    assert within(e.b_only, 15_000) and within(e.both, 5_000)
    # BSS of the research notes' test: τ(B, A) = |B∩A| / |A| = 1, ρ(B, A) = |B∖A| / |A| = 3
    r = he.joint_estimate(outer, inner, p)
    assert within(r.tau, 1.0) and r.tau.value == 1.0
    assert within(r.rho, 3.0) and abs(r.rho.value - 3.0) < 0.1


def test_disjoint_sets_have_an_intersection_within_its_error():
    for seed in range(5):
        wa, wb = parts(40_000, 40_000, 0, 10, np.random.default_rng(seed))
        e = he.joint_estimate(wa, wb, 10)
        assert within(e.both, 0.0, 3.0)
        assert within(e.a_only, 40_000) and within(e.b_only, 40_000)
        assert e.jaccard.value < 3 * e.jaccard.se + 1e-9


def test_empty_sets():
    p = 10
    empty = np.zeros(1 << p, np.uint32)
    e = he.joint_estimate(empty, empty, p)
    assert e.method == "empty" and e.both.value == 0.0 and e.union.value == 0.0
    assert math.isnan(e.jaccard.value) and math.isnan(e.tau.value)
    wa, _ = parts(5_000, 0, 0, p)
    e = he.joint_estimate(wa, empty, p)  # B empty: everything is A-only; τ, ρ undefined
    assert e.both.value == 0.0 and e.b_only.value == 0.0
    assert e.a_only.value == pytest.approx(hs.cardinality(wa, p), rel=1e-9)
    assert math.isnan(e.tau.value) and e.jaccard.value == 0.0


def test_mismatched_layers_are_an_error():
    with pytest.raises(ValueError, match="differ"):
        he.paired_level_counts(np.zeros(1024, np.uint32), np.zeros(2048, np.uint32))
    a, b = hs.HLLSet.empty(10), hs.HLLSet.empty(12)
    with pytest.raises(ValueError, match="precision mismatch"):
        a.compare(b)
    with pytest.raises(ValueError, match="unknown estimator"):
        a.compare(hs.HLLSet.empty(10), "nope")


# --- symmetry and references -----------------------------------------------------------------


def test_symmetry():
    wa, wb = parts(8_000, 20_000, 3_000, 11)
    ab, ba = he.joint_estimate(wa, wb, 11), he.joint_estimate(wb, wa, 11)
    assert ab.a_only.value == pytest.approx(ba.b_only.value, rel=1e-7)
    assert ab.b_only.value == pytest.approx(ba.a_only.value, rel=1e-7)
    assert ab.both.value == pytest.approx(ba.both.value, rel=1e-7)
    assert ab.both.se == pytest.approx(ba.both.se, rel=1e-7)
    assert ab.jaccard.value == pytest.approx(ba.jaccard.value, rel=1e-7)


def test_level_counts_match_unpacked_bits():
    wa, wb = parts(3_000, 9_000, 1_000, 10)
    bits_a = np.unpackbits(wa.view(np.uint8), bitorder="little").reshape(-1, 32).astype(bool)
    bits_b = np.unpackbits(wb.view(np.uint8), bitorder="little").reshape(-1, 32).astype(bool)
    want = np.stack(
        [
            (~bits_a & ~bits_b).sum(0),
            (bits_a & ~bits_b).sum(0),
            (~bits_a & bits_b).sum(0),
            (bits_a & bits_b).sum(0),
        ],
        axis=1,
    )
    assert np.array_equal(he.paired_level_counts(wa, wb), want)


def reference_negloglik(theta, counts, p):
    """-ℓ written from the four cell probabilities directly (no shared code)."""
    a, b, x = theta
    m = 2.0**p
    q = np.array([2.0 ** -(j + 1) for j in range(31)] + [2.0**-31]) / m
    pa, pb, px = np.exp(-a * q), np.exp(-b * q), np.exp(-x * q)
    probs = np.stack(
        [
            pa * pb * px,
            (1 - pa) * pb * px,
            pa * (1 - pb) * px,
            1 - pa * px - pb * px + pa * pb * px,
        ],
        axis=1,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(np.maximum(probs, 1e-300)), 0.0)
    return -terms.sum()


@pytest.mark.parametrize(
    "sizes", [(20_000, 15_000, 4_000), (2_000, 2_000, 200), (50_000, 3_000, 0)]
)
def test_mle_matches_scipy_on_the_same_likelihood(sizes):
    p = 10
    wa, wb = parts(*sizes, p)
    counts = he.paired_level_counts(wa, wb)
    e = he.joint_from_counts(counts, p)
    theta = np.array([e.a_only.value, e.b_only.value, e.both.value])
    scale = max(sum(sizes), 1)
    ref = minimize(
        lambda t: reference_negloglik(t * scale, counts, p),
        theta / scale + 0.01,
        method="L-BFGS-B",
        bounds=[(0, None)] * 3,
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000},
    )
    assert reference_negloglik(theta, counts, p) <= ref.fun + 1e-6
    assert np.allclose(theta, ref.x * scale, atol=0.02 * e.both.se + 1.0)


def test_inclusion_exclusion_is_the_marginal_cardinalities():
    p = 10
    wa, wb = parts(30_000, 10_000, 6_000, p)
    ca, cb, cu = hs.cardinality(np.stack([wa, wb, wa | wb]), p)
    e = he.inclusion_exclusion(wa, wb, p)
    assert e.both.value == pytest.approx(ca + cb - cu, rel=1e-9)
    assert e.a_only.value == pytest.approx(cu - cb, rel=1e-9)
    assert e.union.value == pytest.approx(cu, rel=1e-9)


# --- bias, error and standard errors on seeded random pairs ---------------------------------


def errors(estimator, a, b, x, p, pairs, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(pairs):
        e = estimator(*parts(a, b, x, p, rng), p)
        rows.append((e.both.value, e.a_only.value, e.jaccard.value, e.both.se))
    return np.array(rows)


@pytest.mark.parametrize("n, jaccard", [(20_000, 0.05), (20_000, 0.3), (3_000, 0.7)])
def test_joint_estimate_is_unbiased_and_its_standard_error_is_calibrated(n, jaccard):
    p, pairs = 10, 60
    x = round(2 * jaccard * n / (1 + jaccard))
    r = errors(he.joint_estimate, n - x, n - x, x, p, pairs, seed=n + int(100 * jaccard))
    for col, true in ((0, x), (1, n - x), (2, x / (2 * n - x))):
        rel = r[:, col] / true - 1
        mc = rel.std(ddof=1) / math.sqrt(pairs)
        assert abs(rel.mean()) <= 3 * mc + 0.01, (col, rel.mean(), mc)
    spread = r[:, 0].std(ddof=1)
    assert 0.7 <= r[:, 3].mean() / spread <= 1.4  # stated s.e. vs observed spread


def test_joint_beats_inclusion_exclusion_and_and_bitmap_at_small_overlap():
    p, pairs, n, jaccard = 10, 40, 50_000, 0.05
    x = round(2 * jaccard * n / (1 + jaccard))
    joint = errors(he.joint_estimate, n - x, n - x, x, p, pairs, seed=5)[:, 0]
    ie = errors(he.inclusion_exclusion, n - x, n - x, x, p, pairs, seed=5)[:, 0]
    andb = errors(he.and_bitmap, n - x, n - x, x, p, pairs, seed=5)[:, 0]
    rmse = {
        k: np.sqrt(np.mean((v / x - 1) ** 2))
        for k, v in (("joint", joint), ("ie", ie), ("and", andb))
    }
    assert rmse["joint"] < 0.75 * rmse["ie"]
    assert np.mean(andb / x - 1) > 1.0  # the old word-wise estimate: > +100% here


def test_hllset_compare_is_per_layer():
    base = RNG.integers(0, 2**64, 9_000, dtype=np.uint64)
    a = hs.HLLSet.from_hashes([base[:6_000], base[:1_000], base[:6_000]], 10)
    b = hs.HLLSet.from_hashes([base[3_000:], base[:1_000], base[8_000:]], 10)
    layers = a.compare(b)
    assert [e.method for e in layers] == ["joint-ml"] * 3
    assert within(layers[0].both, 3_000)
    assert layers[1].a_only.value == 0.0 and layers[1].b_only.value == 0.0
    assert within(layers[2].both, 0.0, 3.0)
