"""HLLSet hashing, register/run bits, set algebra and cardinality vs independent references
(the mmh3 C extension, hand-computed bits, brute-force integer arithmetic, sets of known size)."""

import math

import mmh3
import numpy as np
import pytest

from sphere_assets.lib.sketch import hllset as hs

RNG = np.random.default_rng(20240605)


# --- hashing -----------------------------------------------------------------------------------


def test_known_answer_hashes():
    assert hs.hash64(b"hello") == 14688674573012802306
    assert hs.hash64(b"tid0") == 2892634914804110692
    got = hs.hash64_keys([b"hello", b"tid0"])
    assert got.dtype == np.uint64
    assert got.tolist() == [14688674573012802306, 2892634914804110692]


def test_vectorised_hash_matches_mmh3_for_every_tail_and_block_count():
    # lengths 0..70 cover every tail length (0..15) with 0..4 full 16-byte blocks
    keys = [RNG.bytes(n) for n in range(71) for _ in range(3)] + [b"\x00" * 17, b"\xff" * 33]
    ref = [mmh3.hash64(k, seed=0, signed=False)[0] for k in keys]
    assert hs.hash64_keys(keys).tolist() == ref
    assert hs.hash64_keys(keys, threads=3).tolist() == ref


def test_hash_of_sliced_arrow_array_and_empty_input():
    import pyarrow as pa

    keys = [b"a", b"bb", b"hello", b"tid0"]
    arr = pa.array(keys, type=pa.binary()).slice(2, 2)
    assert hs.hash64_keys(arr).tolist() == [hs.hash64(b"hello"), hs.hash64(b"tid0")]
    assert hs.hash64_keys([]).size == 0
    with pytest.raises(ValueError, match="null"):
        hs.hash64_keys(pa.array([b"a", None], type=pa.binary()))


# --- register / run / bit ----------------------------------------------------------------------


def reference_reg_run(h: int, p: int) -> tuple[int, int]:
    x = h >> p
    if x == 0:
        return h & ((1 << p) - 1), 31
    ctz = (x & -x).bit_length() - 1
    return h & ((1 << p) - 1), min(ctz, 31)


@pytest.mark.parametrize(
    "h, p, reg, run",
    [
        (0, 10, 0, 31),  # h >> P == 0 → 31
        (1023, 10, 1023, 31),  # only register bits set → h >> P == 0 → 31
        (1 << 10, 10, 0, 0),
        ((1 << 15) | 7, 10, 7, 5),
        (1 << 40, 10, 0, 30),
        (1 << 41, 10, 0, 31),  # ctz = 31 exactly
        (1 << 63, 10, 0, 31),  # ctz = 53 capped
        (2**64 - 1, 10, 1023, 0),
        (2**64 - 1, 16, 65535, 0),
        ((1 << 16) * 12, 16, 0, 2),
    ],
)
def test_reg_run_edge_cases(h, p, reg, run):
    r, u = hs.reg_run(np.array([h], dtype=np.uint64), p)
    assert (int(r[0]), int(u[0])) == (reg, run)
    assert int(hs.bits_of(np.array([h], dtype=np.uint64), p)[0]) == reg * 32 + run


@pytest.mark.parametrize("p", [4, 10, 12, 16])
def test_reg_run_matches_integer_reference(p):
    h = RNG.integers(0, 2**64, 5000, dtype=np.uint64)
    # make the h >> P == 0 and very long runs appear
    h[:50] = RNG.integers(0, 1 << p, 50, dtype=np.uint64)
    h[50:100] = np.uint64(1) << RNG.integers(p, 64, 50).astype(np.uint64)
    reg, run = hs.reg_run(h, p)
    ref = [reference_reg_run(int(x), p) for x in h]
    assert reg.tolist() == [r for r, _ in ref]
    assert run.tolist() == [u for _, u in ref]


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        hs.reg_run(np.zeros(1, np.uint64), 3)
    with pytest.raises(ValueError, match="precision"):
        hs.HLLSet.empty(40)


# --- layers, serialization ---------------------------------------------------------------------


def test_words_from_bits_and_little_endian_layout():
    p = 4
    words = hs.words_from_bits(np.array([0, 33, 33, 32 * 15 + 31]), p)
    assert words.dtype == np.uint32 and words.shape == (16,)
    assert words[0] == 1 and words[1] == 2 and words[15] == 1 << 31
    h = hs.HLLSet(p, np.stack([words, np.zeros(16, np.uint32), words]))
    blobs = h.layer_bytes()
    assert blobs[0][:8] == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert blobs[0][-4:] == b"\x00\x00\x00\x80"
    assert hs.HLLSet.from_layer_bytes(blobs, p) == h
    assert hs.set_bits(words).tolist() == [0, 33, 32 * 15 + 31]
    with pytest.raises(ValueError, match="bytes"):
        hs.HLLSet.from_layer_bytes([b"\x00" * 3] * 3, p)


def test_grouped_words_equal_per_group_words():
    p = 6
    groups = RNG.integers(0, 5, 400)
    bits = RNG.integers(0, 32 << p, 400)
    out = hs.grouped_words(groups, bits, 5, p)
    for g in range(5):
        assert np.array_equal(out[g], hs.words_from_bits(bits[groups == g], p))


# --- set algebra -------------------------------------------------------------------------------


def random_set(n: int, p: int = 8) -> hs.HLLSet:
    return hs.HLLSet.from_hashes([RNG.integers(0, 2**64, n, dtype=np.uint64) for _ in range(3)], p)


def test_set_algebra_laws():
    a, b, c = random_set(300), random_set(500), random_set(800)
    assert a | b == b | a and a & b == b & a
    assert (a | b) | c == a | (b | c) and (a & b) & c == a & (b & c)
    assert a | a == a and a & a == a
    assert a | (a & b) == a and a & (a | b) == a  # absorption
    assert a & (b | c) == (a & b) | (a & c) and a | (b & c) == (a | b) & (a | c)
    assert a - (b | c) == (a - b) & (a - c) and a - (b & c) == (a - b) | (a - c)
    assert (a - b) | (a & b) == a and ((a - b) & b).is_empty()
    assert (a - a).is_empty() and a | hs.HLLSet.empty(8) == a
    with pytest.raises(ValueError, match="precision"):
        a | hs.HLLSet.empty(9)


def test_union_of_sketches_is_sketch_of_union_and_intersection_is_a_superset():
    p = 8
    ha = RNG.integers(0, 2**64, 700, dtype=np.uint64)
    hb = np.concatenate([ha[:300], RNG.integers(0, 2**64, 400, dtype=np.uint64)])
    sa, sb = hs.HLLSet.from_hashes([ha] * 3, p), hs.HLLSet.from_hashes([hb] * 3, p)
    union = hs.HLLSet.from_hashes([np.concatenate([ha, hb])] * 3, p)
    assert sa | sb == union
    inter = hs.HLLSet.from_hashes([ha[:300]] * 3, p)
    assert (inter - (sa & sb)).is_empty()


# --- cardinality -------------------------------------------------------------------------------


def test_cardinality_of_empty_and_saturated_layers():
    assert hs.cardinality(np.zeros(1 << 10, np.uint32), 10) == 0.0
    assert hs.cardinality(np.full(1 << 10, 0xFFFFFFFF, np.uint32), 10) == math.inf


def test_cardinality_of_a_single_key_is_one():
    words = hs.words_from_bits(np.array([12345]), 10)
    assert hs.cardinality(words, 10) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("p", [10, 14])
@pytest.mark.parametrize("n", [30, 1_000, 20_000, 300_000])
def test_horvitz_thompson_cardinality_error_on_sets_of_known_size(p, n):
    """Stated error: RMS relative error ≤ 0.6/sqrt(2^P) · 1.5 over 8 sets, each ≤ 4.5σ."""
    sigma = 0.6 / math.sqrt(1 << p)
    words = np.stack(
        [
            hs.words_from_bits(hs.bits_of(RNG.integers(0, 2**64, n, dtype=np.uint64), p), p)
            for _ in range(8)
        ]
    )
    rel = hs.cardinality(words, p) / n - 1.0
    assert np.sqrt(np.mean(rel**2)) <= 1.5 * sigma + 1.0 / n
    assert np.max(np.abs(rel)) <= 4.5 * sigma + 2.0 / n


def test_cardinality_is_monotone_under_union():
    a, b = random_set(5_000, 10), random_set(8_000, 10)
    ua, ub, uab = a.cardinality(), b.cardinality(), (a | b).cardinality()
    assert np.all(uab >= ua) and np.all(uab >= ub)
    assert np.allclose(uab, 13_000, rtol=0.08)


def bss(a: hs.HLLSet, b: hs.HLLSet) -> tuple[np.ndarray, np.ndarray]:
    """BSS of two HLLSets, per layer: ``τ(A, B) = |A ∩ B| / |B|`` (inclusion of B in A) and
    ``ρ(A, B) = |A ∖ B| / |B|``, all cardinalities estimated on the word-wise results; NaN
    where ``|B| = 0``.  (Test-only: the pipeline does not use it.)"""
    card_b = b.cardinality()
    inter = (a & b).cardinality()
    diff = (a - b).cardinality()
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(card_b > 0, inter / np.where(card_b > 0, card_b, 1.0), np.nan)
        rho = np.where(card_b > 0, diff / np.where(card_b > 0, card_b, 1.0), np.nan)
    return tau, rho


def test_bss_tau_and_rho():
    p = 12
    base = RNG.integers(0, 2**64, 20_000, dtype=np.uint64)
    a = hs.HLLSet.from_hashes([base] * 3, p)
    b = hs.HLLSet.from_hashes([base[:5_000]] * 3, p)  # B ⊂ A
    tau, rho = bss(a, b)
    # A ∩ B == B word-wise, so τ = 1 exactly; the word-wise difference drops A's bits that B
    # also sets, so ρ is below the exact |A \ B| / |B| = 3 but well above 1
    assert np.allclose(tau, 1.0, atol=1e-9)
    assert np.all(rho > 1.2) and np.all(rho <= 3.0)
    tau, rho = bss(b, a)  # |B ∩ A| / |A| ≈ 0.25, |B \\ A| = 0
    assert np.allclose(tau, 0.25, atol=0.03) and np.allclose(rho, 0.0, atol=1e-9)
    c = hs.HLLSet.from_hashes([RNG.integers(0, 2**64, 5_000, dtype=np.uint64)] * 3, p)
    tau, rho = bss(c, b)  # disjoint, same size: only bitmap collisions make τ > 0
    assert np.all(tau < 0.35) and np.all(rho > 0.6) and np.all(rho <= 1.0 + 0.05)
    tau, rho = bss(a, hs.HLLSet.empty(p))
    assert np.isnan(tau).all() and np.isnan(rho).all()
