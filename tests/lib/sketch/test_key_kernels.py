"""Compiled key kernels vs independent references: the mmh3 C extension (one call per key),
pyarrow's dictionary_encode / sort_indices, Python dicts and sorted(), numpy's stable argsort."""

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import key_kernels as kk

RNG = np.random.default_rng(20251123)


def mmh3_loop(keys):
    return [mmh3.hash64(k, seed=0, signed=False)[0] for k in keys]


def exact_buffers(keys):
    """(data, offsets) with no slack after the last key: tails at the end of the buffer are
    read byte by byte, elsewhere as one masked word — both paths get exercised."""
    data = np.frombuffer(b"".join(keys), dtype=np.uint8).copy()
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)
    return data, offsets


def kernel_hashes(keys):
    data, offsets = exact_buffers(keys)
    out = np.empty(len(keys), dtype=np.uint64)
    kk.hash_keys(data, offsets, out, 0, len(keys))
    return out.tolist()


EDGE_KEYS = (
    [b"", b"\x00", b"\xff", b"hello", b"tid0"]
    + [bytes(range(1, n + 1)) for n in range(1, 41)]  # every tail length mod 16, 0..2 blocks
    + [b"\x00" * n for n in range(1, 41)]
    + [b"\xff" * n for n in range(1, 41)]
    + [bytes([0x80 + (i % 128) for i in range(n)]) for n in range(1, 41)]  # high bytes
    + [b"a\x00b\x00c", b"\x00\x00\x00\x00\x00\x00\x00\x01", b"x" * 16 + b"\x00"]
)


def test_known_answers():
    assert kernel_hashes([b"hello", b"tid0"]) == [14688674573012802306, 2892634914804110692]
    assert hs.hash64_keys([b"hello", b"tid0"]).tolist() == [
        14688674573012802306,
        2892634914804110692,
    ]


@pytest.mark.parametrize("last", range(len(EDGE_KEYS)))
def test_hash_keys_edge_cases_at_end_of_buffer(last):
    # each edge key once as the last key of its buffer (byte-wise tail) ...
    keys = EDGE_KEYS[: last + 1]
    assert kernel_hashes(keys) == mmh3_loop(keys)


def test_hash_keys_edge_cases_with_slack_and_random_keys():
    # ... and once followed by other bytes (masked-word tail)
    keys = EDGE_KEYS + [RNG.bytes(int(n)) for n in RNG.integers(0, 100, 3000)] + [b"end"]
    assert kernel_hashes(keys) == mmh3_loop(keys)
    assert hs.hash64_keys(keys, threads=2).tolist() == mmh3_loop(keys)
    assert hs.hash64_keys(keys, threads=5).tolist() == mmh3_loop(keys)


def test_hash64_buffer_rejects_offsets_outside_the_data():
    data = np.zeros(4, dtype=np.uint8)
    with pytest.raises(ValueError, match="offsets"):
        hs.hash64_buffer(data, np.array([0, 5]))
    with pytest.raises(ValueError, match="offsets"):
        hs.hash64_buffer(data, np.array([0, 3, 2]))


@pytest.mark.parametrize("n", [2, 3])
def test_hash_joined_equals_mmh3_of_joined_keys(n):
    pieces = (
        [b"_START_", b"_END_", b"", b"\x00", b"\xff" * 9]
        + [RNG.bytes(int(k)) for k in RNG.integers(0, 30, 300)]
        + [b"last!", b"a long last piece"]
    )
    for tail in ([b"end"], [b"a long piece at the very end"]):  # last piece short / long
        all_pieces = pieces + tail
        data, offsets = exact_buffers(all_pieces)
        packed = kk.pack_pieces(data, offsets)
        rows = RNG.integers(0, len(all_pieces), (2000, n)).astype(np.int32)
        rows[0] = len(all_pieces) - 1  # the piece at the end of the buffer
        rows[1] = 2  # the empty piece
        out = np.empty(rows.shape[0], dtype=np.uint64)
        kk.hash_joined(data, offsets, packed, rows, out, 0, rows.shape[0])
        keys = [b"\x00".join(all_pieces[j] for j in row) for row in rows.tolist()]
        assert out.tolist() == mmh3_loop(keys)
        part = np.zeros(rows.shape[0], dtype=np.uint64)
        kk.hash_joined(data, offsets, packed, rows, part, 100, 300)  # a row range only
        assert np.array_equal(part[100:300], out[100:300]) and not part[:100].any()


def test_hash_bits_match_integer_reference():
    hashes = np.concatenate(
        [RNG.integers(0, 2**64, 5000, dtype=np.uint64), np.array([0, 1, 2**64 - 1], np.uint64)]
    )
    for p in (4, 10, 24):
        reg = np.empty(hashes.size, np.uint32)
        run = np.empty(hashes.size, np.uint8)
        kk.hash_bits(hashes, p, reg, run)
        for h, r, u in zip(hashes.tolist(), reg.tolist(), run.tolist(), strict=True):
            x = h >> p
            assert r == h & ((1 << p) - 1)
            assert u == (min((x & -x).bit_length() - 1, 31) if x else 31)


def dictionary_reference(strings):
    encoded = pc.dictionary_encode(pa.array(strings, pa.binary()))
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


@pytest.mark.parametrize(
    "strings",
    [
        [],
        [b""],
        [b"", b"", b"\x00", b"\x00\x00", b"", b"\x00"],
        # equal first 8 bytes, different lengths / later bytes; 8-byte boundary cases
        [b"abcdefgh", b"abcdefghi", b"abcdefgh\x00", b"abcdefgh", b"abcdefghj", b"abcdefghi"],
        [b"x" * k for k in range(40)] * 3,
    ],
)
def test_dedupe_binary_matches_dictionary_encode(strings):
    data, offsets = exact_buffers(strings)
    ids, first = kk.dedupe_binary(data, offsets)
    ref_ids, ref_distinct = dictionary_reference(strings)
    assert ids.tolist() == ref_ids.tolist()
    assert [strings[i] for i in first.tolist()] == ref_distinct


def test_dedupe_binary_on_random_strings_with_repeats():
    # more than 2^10 distinct strings: the table grows several times
    vocab = [RNG.bytes(int(k)) for k in RNG.integers(0, 24, 6000)]
    strings = [vocab[i] for i in RNG.integers(0, len(vocab), 40000)]
    data, offsets = exact_buffers(strings)
    ids, first = kk.dedupe_binary(data, offsets)
    ref_ids, ref_distinct = dictionary_reference(strings)
    assert np.array_equal(ids, ref_ids)
    assert [strings[i] for i in first.tolist()] == ref_distinct


@pytest.mark.parametrize("n", [2, 3])
def test_dedupe_windows_matches_a_dict(n):
    n_tokens = 50
    padded = RNG.integers(0, n_tokens, 20000).astype(np.int32)
    windows = np.sort(RNG.choice(padded.size - n, 15000, replace=False)).astype(np.int64)
    ids, codes, counts, first = kk.dedupe_windows(padded, windows, n, n_tokens)
    seen: dict = {}
    ref_ids, ref_counts, ref_first = [], [], []
    for i, w in enumerate(windows.tolist()):
        code = 0
        for j in range(n):
            code = code * n_tokens + int(padded[w + j])
        if code not in seen:
            seen[code] = len(seen)
            ref_counts.append(0)
            ref_first.append(i)
        ref_ids.append(seen[code])
        ref_counts[seen[code]] += 1
    assert ids.tolist() == ref_ids
    assert codes.tolist() == list(seen)
    assert counts.tolist() == ref_counts
    assert first.tolist() == ref_first
    empty = kk.dedupe_windows(padded, np.zeros(0, np.int64), n, n_tokens)
    assert [x.size for x in empty] == [0, 0, 0, 0]


@pytest.mark.parametrize("key_bits", [1, 9, 20, 53, 63])
def test_radix_sort_pairs_is_a_stable_sort(key_bits):
    keys = RNG.integers(0, 2**key_bits, 30000, dtype=np.int64)
    keys[::7] = keys[0]  # many equal keys: stability matters
    values = np.arange(keys.size, dtype=np.int64)
    got_keys, got_values = kk.radix_sort_pairs(keys, values, key_bits)
    order = np.argsort(keys, kind="stable")
    assert np.array_equal(got_keys, keys[order])
    assert np.array_equal(got_values, order)


def test_radix_sort_pairs_on_64_bit_patterns_is_unsigned_order():
    words = RNG.integers(0, 2**64, 20000, dtype=np.uint64)
    got, _ = kk.radix_sort_pairs(words.view(np.int64), np.zeros(words.size, np.int64), 64)
    assert np.array_equal(got.view(np.uint64), np.sort(words))


def test_decode_codes_inverts_the_codes():
    n_tokens = 1000
    rows = RNG.integers(0, n_tokens, (5000, 3)).astype(np.int32)
    codes = (rows[:, 0].astype(np.int64) * n_tokens + rows[:, 1]) * n_tokens + rows[:, 2]
    assert np.array_equal(kk.decode_codes(codes, 3, n_tokens), rows)


@pytest.mark.parametrize(
    "strings",
    [
        [],
        [b"a"],
        [b"", b"\x00", b"\x00\x00", b"\xff", b"a", b"ab", b"ab\x00", b"ab" + b"\x00" * 7],
        [b"ab" + b"\x00" * 6 + tail for tail in (b"", b"\x00", b"\x01", b"\x00\x00", b"z" * 9)],
        [b" " * k for k in range(100)] + [b" " * k + b"x" for k in range(100)],  # deep ties
    ],
)
def test_sort_binary_small_cases(strings):
    data, offsets = exact_buffers(strings)
    order = kk.sort_binary(data, offsets)
    assert [strings[i] for i in order.tolist()] == sorted(strings)


def test_sort_binary_matches_arrow_on_random_strings():
    short = {RNG.bytes(int(k)) for k in RNG.integers(0, 9, 50000)}
    low_alphabet = {bytes(RNG.integers(0, 3, int(k)).astype(np.uint8)) for k in range(30)}
    low_alphabet |= {
        bytes(RNG.integers(0, 3, int(k)).astype(np.uint8)) for k in RNG.integers(0, 30, 5000)
    }
    for distinct in (sorted(short), sorted(low_alphabet)):
        strings = [distinct[i] for i in RNG.permutation(len(distinct))]
        data, offsets = exact_buffers(strings)
        expected = pc.sort_indices(pa.array(strings, pa.binary())).to_numpy()
        assert np.array_equal(kk.sort_binary(data, offsets), expected)
