"""The fast landmark search against an independent reference, bit for bit.

The reference is plain numpy, one step at a time: every score a float32 sum over the dimension
in order (numpy rounds each elementwise product and sum to float32, no FMA), every selection
a lexsort on (score descending, index ascending), the weights with Python's ``math.exp`` — no
grouping by list, no blocks, no batches. The kernels must give the same bits for every row,
whatever batch, order or offset the row comes in, including exact ties (duplicated landmarks
and centroids, zero rows, rows equal to a landmark) and degenerate settings (n_probe > lists,
landmarks_k > a list's length). The k = 3 fast path (``top3_scan``) must give the same bits
as the general top-k insert on random and tie-heavy scores.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sphere_assets.lib.sphere import landmark_search as ls
from sphere_assets.lib.sphere import sphere_map as sm
from tests.lib.sphere.test_sphere_map import FAST, clustered


def fixed_order_scores(u: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[N, M] float32: sum_k u[:, k] cols[k] in k order, each step rounded to float32."""
    s = np.zeros((u.shape[0], cols.shape[1]), np.float32)
    for k in range(u.shape[1]):
        s = s + u[:, k : k + 1] * cols[k][None, :]
    return s


def top_by_score(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the top k of one row: score descending, then id ascending."""
    return np.lexsort((ids, -scores))[:k]


def reference_directions(model: sm.SphereMapModel, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    sq = np.zeros(x.shape[0], np.float32)
    for k in range(x.shape[1]):
        sq = sq + x[:, k] * x[:, k]
    inv = np.where(sq > 0, np.float32(1) / np.sqrt(np.where(sq > 0, sq, 1)), np.float32(1))
    u = x * inv.astype(np.float32)[:, None]
    cent = fixed_order_scores(u, model.centroids_t)
    land = fixed_order_scores(u, model.landmarks_t)
    offsets = model.list_offsets
    out = np.empty((x.shape[0], 3))
    for i in range(x.shape[0]):
        lists = top_by_score(cent[i], np.arange(cent.shape[1]), model.n_probe)
        ids = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in lists])
        top = ids[top_by_score(land[i, ids], ids, model.landmarks_k)]
        best = float(land[i, top[0]])
        y = [0.0, 0.0, 0.0]
        for j in top:
            w = math.exp((float(land[i, j]) - best) / model.tau)
            for a in range(3):
                y[a] += w * float(model.positions[j, a])
        norm = math.sqrt(y[0] * y[0] + y[1] * y[1] + y[2] * y[2])
        out[i] = [v / norm for v in y] if norm > 1e-12 else [0.0, 0.0, 1.0]
    return out


@pytest.fixture(scope="module")
def fitted():
    x = clustered(3000)
    return x, sm.fit_sphere_map_model(x, None, FAST)


def test_map_equals_the_fixed_order_reference_bit_for_bit(fitted):
    x, model = fitted
    rows = np.concatenate([x[:400], clustered(400, seed=9)])  # seen and unseen rows
    np.testing.assert_array_equal(sm.map_directions(model, rows), reference_directions(model, rows))


def test_rows_keep_their_bits_in_any_batch_order_and_size(fitted):
    x, model = fitted
    rows = clustered(1500, seed=21)
    alone = sm.map_directions(model, rows)
    rng = np.random.default_rng(4)
    for size in (1, 5, 63, 64, 65, 257, 1500):
        for start in range(0, rows.shape[0], size * 7 + 1):  # batches at many offsets
            part = rows[start : start + size]
            np.testing.assert_array_equal(
                sm.map_directions(model, part), alone[start : start + size]
            )
    order = rng.permutation(rows.shape[0])  # other rows around, other groups per list
    np.testing.assert_array_equal(sm.map_directions(model, rows[order]), alone[order])
    mixed = np.concatenate([clustered(777, seed=22), rows[order][:500], x[:300]])
    np.testing.assert_array_equal(sm.map_directions(model, mixed)[777:1277], alone[order][:500])


def test_exact_ties_and_degenerate_settings_match_the_reference(fitted):
    x, model = fitted
    # duplicated landmarks and centroids: exact score ties broken by the lower index
    land = model.landmarks_t.copy()
    land[:, 1::3] = land[:, 0:-1:3][:, : land[:, 1::3].shape[1]]
    cent = model.centroids_t.copy()
    cent[:, 1] = cent[:, 0]
    tied = replace(model, landmarks_t=land, centroids_t=cent)
    rows = np.concatenate(
        [
            clustered(300, seed=31),
            np.zeros((3, x.shape[1]), np.float32),  # zero rows: every score 0
            land[:, :50].T.copy(),  # rows equal to (duplicated) landmarks
            cent[:, :5].T.copy(),
        ]
    )
    for m in (
        tied,
        replace(tied, n_probe=1),  # the default is 2: one list per row as well
        replace(tied, n_probe=model.centroids_t.shape[1] + 3),  # more probes than lists
        replace(tied, landmarks_k=40, n_probe=1),  # more landmarks wanted than some lists hold
        replace(tied, tau=0.3),
    ):
        np.testing.assert_array_equal(sm.map_directions(m, rows), reference_directions(m, rows))


def test_blocks_hold_each_lists_landmarks_contiguously(fitted):
    _, model = fitted
    index = ls.landmark_index(
        model.centroids_t, model.list_offsets, model.landmarks_t, model.positions
    )
    for c in range(model.centroids_t.shape[1]):
        lo, hi = model.list_offsets[c], model.list_offsets[c + 1]
        block = index.block(c)
        assert block.flags["C_CONTIGUOUS"] and block.base is not None
        assert block.shape[1] % ls.LANES == 0 and block.shape[1] - (hi - lo) < ls.LANES
        np.testing.assert_array_equal(block[:, : hi - lo], model.landmarks_t[:, lo:hi])
        assert not block[:, hi - lo :].any()  # zero padding
    n_lists = model.centroids_t.shape[1]
    assert index.n_lists == n_lists and index.centroids_t.shape[1] % ls.LANES == 0
    np.testing.assert_array_equal(index.centroids_t[:, :n_lists], model.centroids_t)


def test_a_dimension_not_a_multiple_of_the_steps_matches_the_reference(fitted):
    """The last D % STEPS_AT_ONCE terms of every sum are added one at a time."""
    _, model = fitted
    rng = np.random.default_rng(5)
    for dim in (ls.STEPS_AT_ONCE * 4 + 1, ls.STEPS_AT_ONCE * 4 + 3, 2):
        m = replace(
            model,
            centroids_t=rng.standard_normal((dim, model.centroids_t.shape[1])).astype(np.float32),
            landmarks_t=rng.standard_normal((dim, model.landmarks_t.shape[1])).astype(np.float32),
        )
        rows = rng.standard_normal((300, dim)).astype(np.float32)
        index = ls.landmark_index(m.centroids_t, m.list_offsets, m.landmarks_t, m.positions)
        got = np.empty((rows.shape[0], 3))
        ls.landmark_directions(index, rows, m.landmarks_k, m.n_probe, m.tau, got)
        np.testing.assert_array_equal(got, reference_directions(m, rows))


def general_top(scores: np.ndarray, lo: int, start_val, start_id):
    """The general insert over one list's scores (what ``top3_scan`` must equal)."""
    vals, idx = start_val.copy(), start_id.copy()
    for j, v in enumerate(scores):
        ls.top_insert(vals, idx, v, lo + j)
    return vals, idx


def test_top3_scan_equals_the_general_insert_on_random_and_tied_scores():
    rng = np.random.default_rng(7)
    n_land = 10_000
    for trial in range(400):
        w = int(rng.integers(0, 40))
        if trial % 3 == 0:  # tie-heavy: few distinct values, many exact repeats
            scores = rng.choice(np.float32([-1, 0, 0.25, 0.5]), size=w).astype(np.float32)
        else:
            scores = rng.standard_normal(w).astype(np.float32)
        if trial % 4 == 1:  # a pair that already holds a top list from another list
            start_val = np.sort(rng.choice(np.float32([0, 0.25, 0.5]), 3))[::-1].astype(np.float32)
            start_id = np.sort(rng.choice(50, 3, replace=False)).astype(np.int64)
        else:
            start_val = np.full(3, -np.inf, np.float32)
            start_id = np.full(3, n_land, np.int64)
        lo = int(rng.integers(0, 100))
        want_val, want_id = general_top(scores, lo, start_val, start_id)
        sums = np.zeros((2, w), np.float32)
        sums[1] = scores  # row 1 of the sums
        got = ls.top3_scan(sums, 1, w, lo, *start_val, *start_id)
        got_val, got_id = np.array(got[:3], np.float32), np.array(got[3:], np.int64)
        np.testing.assert_array_equal(got_val.view(np.int32), want_val.view(np.int32))
        np.testing.assert_array_equal(got_id, want_id)


@pytest.mark.parametrize("n_probe", [1, 2, 5])
def test_k3_fast_path_gives_the_general_paths_bits(fitted, n_probe):
    x, model = fitted
    assert model.landmarks_k == 3
    land = model.landmarks_t.copy()
    land[:, 1::2] = land[:, 0:-1:2][:, : land[:, 1::2].shape[1]]  # every other landmark a copy
    index = ls.landmark_index(model.centroids_t, model.list_offsets, land, model.positions)
    rng = np.random.default_rng(n_probe)
    rows = np.concatenate(
        [
            rng.standard_normal((500, x.shape[1])).astype(np.float32),  # random
            clustered(500, seed=41),
            land[:, :200].T.copy(),  # rows equal to duplicated landmarks: exact ties
            np.zeros((4, x.shape[1]), np.float32),  # every score 0
        ]
    )
    fast = np.empty((rows.shape[0], 3))
    general = np.empty((rows.shape[0], 3))
    ls.landmark_directions(index, rows, 3, n_probe, model.tau, fast)
    ls.landmark_directions(index, rows, 3, n_probe, model.tau, general, specialise=False)
    np.testing.assert_array_equal(fast.view(np.int64), general.view(np.int64))
    tied = replace(model, landmarks_t=land, n_probe=n_probe)
    np.testing.assert_array_equal(fast, reference_directions(tied, rows))
