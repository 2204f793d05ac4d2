"""Training exports: Librarian byte tensors and LVM windows that stay inside one article."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sphere_assets.lib.sphere import exports


def librarian_export(patches: Sequence[bytes], r, theta, phi, max_len: int | None = None) -> dict:
    """Patches as a list of bytes -> :func:`exports.librarian_export_flat` (the asset passes one
    flat buffer + lengths; this list form only serves the tests)."""
    lengths = np.fromiter((len(p) for p in patches), dtype=np.int64, count=len(patches))
    flat = np.frombuffer(b"".join(bytes(p) for p in patches), dtype=np.uint8)
    return exports.librarian_export_flat(flat, lengths, r, theta, phi, max_len)


def test_librarian_export():
    out = librarian_export([b"ab", b"", b"xyz1"], [1.0, 1.5, 2.0], [0.1, 0.2, 0.3], [1, 2, 3])
    np.testing.assert_array_equal(out["bytes"], [[97, 98, 0, 0], [0, 0, 0, 0], [120, 121, 122, 49]])
    np.testing.assert_array_equal(out["lengths"], [2, 0, 4])
    np.testing.assert_allclose(out["target"], [[1.0, 0.1, 1], [1.5, 0.2, 2], [2.0, 0.3, 3]])
    assert out["bytes"].dtype == np.uint8 and out["target"].dtype == np.float32
    cut = librarian_export([b"abcdef"], [1], [0], [0], max_len=3)
    np.testing.assert_array_equal(cut["bytes"], [[97, 98, 99]])
    assert cut["lengths"][0] == 3
    empty = librarian_export([], [], [], [])
    assert empty["bytes"].shape == (0, 0) and empty["target"].shape == (0, 3)


def test_lvm_windows_stay_inside_articles():
    # rows deliberately shuffled; article "a" has patches 0..6, "b" has 0..2 (too short), "c"
    # has a gap (0,1,2,3,5,6) so no window crosses the gap
    arts = ["a"] * 7 + ["b"] * 3 + ["c"] * 6
    pidx = list(range(7)) + [0, 1, 2] + [0, 1, 2, 3, 5, 6]
    perm = np.random.default_rng(0).permutation(16)
    emb = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    rows = exports.lvm_windows(np.array(arts)[perm], np.array(pidx)[perm], window=5)
    assert rows.shape == (2, 6) and rows.dtype == np.int64  # a: windows starting at 0 and 1
    orig = perm[rows]  # back to the unshuffled row numbers
    np.testing.assert_array_equal(orig, [[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]])
    inputs, target = exports.lvm_gather(emb[perm], rows)
    np.testing.assert_array_equal(inputs, emb[orig[:, :5]])
    np.testing.assert_array_equal(target, emb[orig[:, 5]])
    assert exports.lvm_windows(["a"] * 3, [0, 1, 2]).shape == (0, 6)
