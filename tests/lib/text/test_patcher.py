"""BLT patch rule on hand-made entropies, offsets, calibration, reassembly, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import patcher as pt

ROOT = Path(__file__).resolve().parents[2]


# one intra-op thread for every test here (tests/lib/text/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Hand-made entropy vectors (H over T = n_bytes + 1 token positions)
# ---------------------------------------------------------------------------------------------

# E = H[1:] = [0.4, 1.5, 1.6, 1.7, 0.1, 0.2, 1.9, 2.0, 0.3]
H_RISE = np.array([0.5, 0.4, 1.5, 1.6, 1.7, 0.1, 0.2, 1.9, 2.0, 0.3], dtype=np.float32)


def test_global_mode_by_hand():
    # E_j > 1.0 at j = 1, 2, 3, 6, 7 -> token starts 3, 4, 5, 8, 9 (+ forced 0, 1)
    np.testing.assert_array_equal(
        pt.token_patch_starts(H_RISE, 1.0, "global"), [0, 1, 3, 4, 5, 8, 9]
    )
    starts = pt.byte_patch_starts(H_RISE, 1.0, "global", max_patch_length=None)
    np.testing.assert_array_equal(starts, [0, 2, 3, 4, 7, 8])
    np.testing.assert_array_equal(pt.patch_lengths(starts, 9), [2, 1, 1, 3, 1, 1])


def test_monotonic_mode_by_hand():
    # E_j - E_{j-1} > 1.0 at j = 1 (1.1) and j = 6 (1.7); j = 0 is always a start in BLT
    np.testing.assert_array_equal(pt.token_patch_starts(H_RISE, 1.0, "monotonic"), [0, 1, 2, 3, 8])
    starts = pt.byte_patch_starts(H_RISE, 1.0, "monotonic", max_patch_length=None)
    np.testing.assert_array_equal(starts, [0, 1, 2, 7])
    np.testing.assert_array_equal(pt.patch_lengths(starts, 9), [1, 1, 5, 2])


def test_start_past_the_end_is_dropped():
    # E_{T-2} = H[T-1] is huge: it would start a patch at token T, which does not exist
    h = np.array([0.0, 0.0, 0.0, 9.0], dtype=np.float32)
    np.testing.assert_array_equal(pt.token_patch_starts(h, 1.0, "global"), [0, 1])
    np.testing.assert_array_equal(pt.byte_patch_starts(h, 1.0, "global"), [0])


def test_max_patch_length_splits_from_the_front():
    h = np.zeros(24, dtype=np.float32)  # 23 bytes, only forced starts: one 23-byte patch
    starts = pt.byte_patch_starts(h, 1.0, "global", max_patch_length=10)
    np.testing.assert_array_equal(pt.patch_lengths(starts, 23), [10, 10, 3])
    np.testing.assert_array_equal(pt.split_long_patches(np.array([0, 4]), 13, 4), [0, 4, 8, 12])
    np.testing.assert_array_equal(pt.split_long_patches(np.array([0, 3]), 7, 4), [0, 3])
    # monotonic mode: bytes 0 and 1 forced, then the 22-byte remainder split 10 + 10 + 2
    starts = pt.byte_patch_starts(h, 1.0, "monotonic", max_patch_length=10)
    np.testing.assert_array_equal(pt.patch_lengths(starts, 23), [1, 10, 10, 2])
    with pytest.raises(ValueError):
        pt.split_long_patches(np.array([0]), 5, 0)


def brute_force_byte_starts(h, threshold, mode, max_len):
    """Independent per-byte formulation of the rule (see patcher's docstring)."""
    n = len(h) - 1
    starts = []
    for i in range(n):
        if i == 0:
            is_start = True
        elif mode == "global":
            is_start = h[i] > threshold
        else:
            is_start = i == 1 or (h[i] - h[i - 1]) > threshold
        if not is_start and max_len is not None and i - starts[-1] >= max_len:
            is_start = True
        if is_start:
            starts.append(i)
    return np.array(starts, dtype=np.int64)


@pytest.mark.parametrize("mode", pt.PATCHING_MODES)
@pytest.mark.parametrize("max_len", [None, 1, 3, 7])
def test_vectorized_rule_matches_brute_force(mode, max_len):
    rng = np.random.default_rng(11 + 7 * pt.PATCHING_MODES.index(mode) + (max_len or 0))
    for trial in range(40):
        h = rng.gamma(2.0, 1.0, size=rng.integers(1, 60)).astype(np.float32)
        theta = float(rng.uniform(0.0, 3.0)) if mode == "global" else float(rng.uniform(-1, 2))
        got = pt.byte_patch_starts(h, theta, mode, max_len)
        want = brute_force_byte_starts(h, theta, mode, max_len)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


def test_empty_and_one_byte_articles():
    empty = pt.patches_from_entropies(np.array([3.0], np.float32), 1.0)
    assert empty.num_patches == 0 and empty.byte_entropy.size == 0
    pt.check_reassembly(b"", empty.byte_start, empty.byte_len)
    one = pt.patches_from_entropies(np.array([3.0, 2.0], np.float32), 1.0, "monotonic")
    np.testing.assert_array_equal(one.byte_start, [0])
    np.testing.assert_array_equal(one.byte_len, [1])
    assert one.first_entropy[0] == 3.0  # byte 0's entropy is H_0 (predicted right after BOS)


def test_patch_statistics_match_loops():
    h = np.array([2.0, 0.5, 3.0, 0.1, 0.2, 4.0, 1.0], np.float32)
    res = pt.patches_from_entropies(h, 1.5, "global", max_patch_length=None)
    b = h[:-1]
    for s, n, mean, peak, first in zip(
        res.byte_start,
        res.byte_len,
        res.mean_entropy,
        res.max_entropy,
        res.first_entropy,
        strict=True,
    ):
        assert mean == pytest.approx(b[s : s + n].mean())
        assert peak == b[s : s + n].max()
        assert first == b[s]


def test_size_buckets_and_percentiles():
    lengths = np.array([1, 4, 5, 12, 13, 24, 25, 48, 49, 127, 128, 500])
    assert pt.size_bucket_counts(lengths) == {
        "<=4": 2,
        "5-12": 2,
        "13-24": 2,
        "25-48": 2,
        "49-127": 2,
        ">=128": 2,
    }
    assert pt.length_percentiles(np.array([1, 2, 3, 4, 5]))["p50"] == 3.0
    assert pt.length_percentiles(np.array([]))["p90"] == 0.0


# ---------------------------------------------------------------------------------------------
# Offsets and UTF-8
# ---------------------------------------------------------------------------------------------

TEXT = "naïve café — Ωμέγα 𝄞 ✓ end"


def test_token_byte_offsets_with_multibyte_utf8():
    data = TEXT.encode("utf-8")
    tokens = em.bytes_to_tokens(data)
    assert len(tokens) == len(data) + 1 and tokens[0] == em.BOS_ID
    assert pt.token_to_byte_offset(1) == 0 and pt.byte_to_token_position(0) == 1
    for offset in range(len(data)):
        assert tokens[pt.byte_to_token_position(offset)] - em.OFFSET == data[offset]
    # "𝄞" is 4 bytes: its char index differs from its byte offset
    char_index = TEXT.index("𝄞")
    byte_offset = len(TEXT[:char_index].encode("utf-8"))
    assert byte_offset > char_index
    tok = pt.byte_to_token_position(np.arange(byte_offset, byte_offset + 4))
    assert bytes((tokens[tok] - em.OFFSET).astype(np.uint8)) == "𝄞".encode()
    np.testing.assert_array_equal(
        pt.token_to_byte_offset(tok), np.arange(byte_offset, byte_offset + 4)
    )
    with pytest.raises(ValueError):
        pt.token_to_byte_offset(0)


def test_text_column_replaces_split_characters_but_patch_keeps_bytes():
    data = "aé𝄞b".encode()  # a | c3 a9 | f0 9d 84 9e | b
    starts = np.array([0, 2, 5])  # splits é after its lead byte and 𝄞 in the middle
    lengths = pt.patch_lengths(starts, len(data))
    texts = pt.patch_texts(data, starts, lengths)
    assert texts == ["a\ufffd", "\ufffd\ufffd", "\ufffd\ufffdb"]
    pieces = [data[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    assert b"".join(pieces) == data


def test_reassembly_with_a_model_on_multibyte_text():
    model = em.build_model(em.EntropyModelConfig.tiny(dim=16, n_layers=1, n_heads=2, window=8))
    data = (TEXT * 40).encode("utf-8")
    h = pt.article_entropies(model, data, chunk_size=64)
    assert h.shape == (len(data) + 1,)
    cal = pt.calibrate_threshold([h], 4.5, "global", 16)
    res = pt.patches_from_entropies(h, cal.threshold, "global", 16)
    pt.check_reassembly(data, res.byte_start, res.byte_len)
    assert (
        b"".join(data[s : s + n] for s, n in zip(res.byte_start, res.byte_len, strict=True)) == data
    )
    assert res.byte_len.max() <= 16
    direct = pt.patch_article(model, data, cal.threshold, "global", 16, chunk_size=64)
    np.testing.assert_array_equal(direct.byte_start, res.byte_start)
    with pytest.raises(ValueError, match="contiguous"):
        pt.check_reassembly(data, np.array([0, 5]), np.array([4, len(data) - 5]))
    with pytest.raises(ValueError, match="cover"):
        pt.check_reassembly(data, np.array([0]), np.array([len(data) - 1]))


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", pt.PATCHING_MODES)
def test_calibration_finds_the_closest_achievable_mean(mode):
    rng = np.random.default_rng(7)
    segments = [
        rng.gamma(2.0, 1.0, size=rng.integers(2, 150)).astype(np.float32) for _ in range(10)
    ]
    cal = pt.calibrate_threshold(segments, 4.5, mode, max_patch_length=32)
    # exhaustive reference: every distinct statistic value +- epsilon
    values = np.unique(
        np.concatenate([s[1:] if mode == "global" else np.diff(s[1:]) for s in segments])
    )
    probes = np.concatenate([values - 1e-4, values + 1e-4])
    best = min(abs(pt.mean_patch_size(segments, float(t), mode, 32) - 4.5) for t in probes)
    assert abs(cal.achieved_mean_patch_bytes - 4.5) == pytest.approx(best, abs=1e-9)
    assert abs(cal.achieved_mean_patch_bytes - 4.5) < 0.45  # within 10% on this much text
    assert pt.mean_patch_size(segments, cal.threshold, mode, 32) == cal.achieved_mean_patch_bytes
    assert cal.evaluations < 40  # bisection, not a scan


def test_calibration_is_monotone_in_target_and_validates():
    rng = np.random.default_rng(8)
    segments = [rng.gamma(2.0, 1.0, size=500).astype(np.float32)]
    thetas = [pt.calibrate_threshold(segments, t).threshold for t in (2.0, 3.0, 4.5, 8.0)]
    assert thetas == sorted(thetas)
    with pytest.raises(ValueError, match="no calibration text"):
        pt.calibrate_threshold([np.zeros(1, np.float32)])
    with pytest.raises(ValueError, match="mode"):
        pt.calibrate_threshold(segments, mode="sideways")


# ---------------------------------------------------------------------------------------------
# 5 MB article in bounded memory (subprocess, so the peak RSS is this run's own)
# ---------------------------------------------------------------------------------------------

BIG_ARTICLE_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from sphere_assets.lib.text import entropy_model as em, patcher as pt
    from sphere_assets.lib.text.patch_embeddings import pool_patch_embeddings
    cfg = em.EntropyModelConfig.tiny(dim=16, n_layers=1, n_heads=2, window=8)
    model = em.build_model(cfg).eval()
    unit = "Ωμέγα and ascii text, 𝄞 clef; ".encode() + bytes(range(32, 127))
    data = (unit * (5_000_000 // len(unit) + 1))[:5_000_000]
    cal = pt.calibrate_threshold([pt.article_entropies(model, data[:20000])], 4.5)
    pool_patch_embeddings(model, data[:5000], np.array([0]), np.array([5000]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = pt.patch_article(model, data, cal.threshold, "global", 128, chunk_size=8192)
    pt.check_reassembly(data, res.byte_start, res.byte_len)
    t1 = time.perf_counter()
    vec = pool_patch_embeddings(model, data, res.byte_start, res.byte_len, chunk_size=8192,
                                byte_entropy=res.byte_entropy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kb": base, "peak_kb": peak, "patches": res.num_patches,
                      "patch_s": t1 - t0, "pool_s": time.perf_counter() - t1, "emb": list(vec.embeddings.shape),
                      "finite": bool(np.isfinite(vec.embeddings).all())}))
    """
)


@pytest.mark.slow
@pytest.mark.slow
def test_five_megabyte_article_in_bounded_memory():
    proc = subprocess.run(
        [sys.executable, "-c", BIG_ARTICLE_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    grown_mb = (out["peak_kb"] - out["base_kb"]) / 1024
    # one full-article forward would need 5e6 x 260 float32 logits = 5.2 GB; the streamed run
    # holds O(n) small arrays (tokens, entropies, starts) plus P x 16 float64 sums
    assert grown_mb < 500, out
    assert out["patches"] > 5_000_000 / 128
    assert out["emb"] == [out["patches"], 16] and out["finite"]
