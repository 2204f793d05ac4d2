r"""Placing rows with the sphere map's landmarks, fast and bit-identical per row.

The landmark map of ``sphere_map.py`` (method ``neighbour``): a row u (unit, float32) is
compared with the C inverted-file centroids, the landmarks of its ``n_probe`` most similar
centroids' lists are scored, and its direction is drawn from the top ``k`` of those.

A row's output must depend only on the row and the model, bit for bit, in any batch: every
score is a *fixed-order* float32 sum ``(...((0 + u_0 a_0) + u_1 a_1) + ...) + u_{D-1} a_{D-1}``
(each product and each sum rounded; no FMA, no reassociation, no BLAS: OpenBLAS sgemm gives a
row different bits at another offset in the batch), and every selection is the top k under the
total order (score descending, index ascending), which does not depend on the order the
candidates are visited in.

How it is fast (CPU time per row, 1M synthetic rows, D = 64, 128 lists of 14-310 landmarks,
~282 landmarks scored per row at n_probe 2; 2 shared cores, so only the ratios mean much):
the first, per-row version took 35 us/row, of which the coarse stage 0.6. The landmarks were columns of
one [D, M] matrix, so a list's 64 rows of ~0.5 KB lay 64 KB apart (cache-set and TLB
conflicts, re-read from memory for every row). Contiguous blocks alone: 17 us/row; rows grouped
by list as well: ~3 us/row (coarse ~0.7, landmark scores ~1.1, their top-k ~1). Now ~1.6 us/row
(coarse ~0.4, landmark scores ~0.6, their top 3 ~0.45, merge ~0.13):

* each list's landmarks are one contiguous C-order block [D, w_c padded to LANES with zero
  columns] (``LandmarkIndex``), the centroids likewise, so the vector loops have no scalar tail;
* rows are grouped by probed list, so a block is read once per batch and stays in cache while
  its rows are scored, ``ROWS_AT_ONCE`` rows per pass over it (every score is still its own
  sum in order: the rows are lanes of one loop); the coarse stage scores its rows the same way;
* ``score_group`` adds ``STEPS_AT_ONCE`` terms of each sum per pass (in k order), so a sum is
  loaded and stored once per four multiply-adds (1.4 -> 0.6 us/row);
* each (row, list) pair keeps its own top k; a row's top k is the top k of those (the union
  under the same total order): the same set, values and order as one scan over both lists;
* for k = 3 (the default ``landmarks_k``) the top list of a (row, list) pair is kept in
  registers while the list is scanned (``top3_scan``: the general insert's comparisons, unrolled;
  same bits);
* the small helpers are inlined (``inline="always"``: numba calls another jitted function
  through its full argument list, ~0.3 us/row in calls) and the hot loops index arrays instead of
  slicing them: a view's reference count is an atomic add on the parent's line, which both
  threads write (~0.3 us/row more).

Tried and not kept: float32 GEMM (OpenBLAS) to pick candidates within a proven rounding
margin, rescored in fixed order (same bits; the GEMMs were ~3x faster than these loops, but
picking the candidates cost as much as they saved: ~3.9 us/row); a vectorised lane-maximum
pre-filter for the top-k (no gain); a bound from the lane maxima (the 3rd largest of the 16
maxima of j mod 16) that leaves ~3 candidates per list instead of ~14 inserts (the bound cost
what it saved); skipping chunks of 16 sums below the 3rd best (no gain: most chunks of a
~140-landmark list still hold a new best); 8 terms per pass instead of 4 (no gain); batches of
4K-16K rows so the unit rows stay in L2 (slower: more blocks re-read, more thread starts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

ROW_BLOCK = 64  # rows per scratch block of the per-row loops
ROWS_AT_ONCE = 4  # rows scored together against a list (sums s0..s3 of score_group)
STEPS_AT_ONCE = 4  # terms of the sums over k added per pass over the sums (score_group)
LANES = 16  # float32 lanes of an AVX-512 register: blocks are padded to a multiple of this
TASK_WORK = 1 << 16  # landmark columns x rows per scan task (load balance between threads)

_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True)
_inline = numba.njit(cache=True, nogil=True, inline="always")


@dataclass(frozen=True)
class LandmarkIndex:
    """The model's centroids and landmarks laid out for placement (derived, not stored)."""

    centroids_t: np.ndarray  # float32 [D, C padded to LANES]: zero columns after the C centroids
    n_lists: int  # C
    offsets: np.ndarray  # int64 [C + 1]: landmark ids of list c are offsets[c]:offsets[c + 1]
    columns: np.ndarray  # int64 [C + 1]: list c's block is columns[c]:columns[c + 1] of blocks
    blocks: np.ndarray  # float32 [D * columns[C]]: list c is the C-order block [D, w_c padded
    #   to LANES] at D * columns[c], zero columns after its w_c landmarks
    positions: np.ndarray  # float64 [M, 3] directions of the landmarks

    def block(self, c: int) -> np.ndarray:
        """Landmarks of list c and their zero padding, [D, w_c rounded up to LANES] (a view)."""
        dim = self.centroids_t.shape[0]
        lo, hi = int(self.columns[c]), int(self.columns[c + 1])
        return self.blocks[dim * lo : dim * hi].reshape(dim, hi - lo)


def padded(cols: np.ndarray) -> np.ndarray:
    """[D, w] float32 -> [D, w rounded up to LANES], zero columns appended (C order)."""
    out = np.zeros((cols.shape[0], -(-cols.shape[1] // LANES) * LANES), np.float32)
    out[:, : cols.shape[1]] = cols
    return out


def landmark_index(centroids_t, list_offsets, landmarks_t, positions) -> LandmarkIndex:
    """Lay out a model's centroids [D, C] and landmarks [D, M] (columns grouped by list)."""
    land_t = np.asarray(landmarks_t, np.float32)
    offsets = np.ascontiguousarray(list_offsets, np.int64)
    blocks = [padded(land_t[:, lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)]
    columns = np.concatenate([[0], np.cumsum([b.shape[1] for b in blocks], dtype=np.int64)])
    cent_t = np.asarray(centroids_t, np.float32)
    return LandmarkIndex(
        centroids_t=padded(cent_t),
        n_lists=cent_t.shape[1],
        offsets=offsets,
        columns=columns.astype(np.int64),
        blocks=np.concatenate([*(b.reshape(-1) for b in blocks), np.zeros(0, np.float32)]),
        positions=np.ascontiguousarray(positions, np.float64),
    )


# ---------------------------------------------------------------------------------------------
# fixed-order pieces


@_inline
def top_insert(vals, idx, v, i):  # pragma: no cover - compiled
    """Insert (v, i) into the descending top list (ties: lower index first)."""
    k = vals.shape[0]
    if v < vals[k - 1] or (v == vals[k - 1] and i > idx[k - 1]):
        return
    pos = k - 1
    while pos > 0 and (v > vals[pos - 1] or (v == vals[pos - 1] and i < idx[pos - 1])):
        vals[pos] = vals[pos - 1]
        idx[pos] = idx[pos - 1]
        pos -= 1
    vals[pos] = v
    idx[pos] = i


@_inline
def top_scan(vals, idx, sums, z, w, lo):  # pragma: no cover - compiled
    """``top_insert(vals, idx, sums[z, j], lo + j)`` for j = 0..w-1."""
    for j in range(w):
        top_insert(vals, idx, sums[z, j], lo + j)


@_inline
def top3_scan(sums, z, w, lo, v0, v1, v2, i0, i1, i2):  # pragma: no cover - compiled
    """The top list (v0, v1, v2), (i0, i1, i2) after ``top_scan`` over sums[z, :w], k = 3
    only, the list held in registers: the same comparisons in the same order, so the same
    result bit for bit (the default landmarks_k is 3; the general insert re-reads the list
    from memory for every candidate)."""
    for j in range(w):
        v = sums[z, j]
        i = lo + j
        if v < v2 or (v == v2 and i > i2):
            continue
        if v > v1 or (v == v1 and i < i1):
            v2, i2 = v1, i1
            if v > v0 or (v == v0 and i < i0):
                v1, i1 = v0, i0
                v0, i0 = v, i
            else:
                v1, i1 = v, i
        else:
            v2, i2 = v, i
    return v0, v1, v2, i0, i1, i2


@_inline
def score_group(u, rows, cols, sums):  # pragma: no cover - compiled
    """sums[z, j] <- the fixed-order score of row u[rows[z]] against column j of cols [D, W],
    for the ROWS_AT_ONCE rows (W a multiple of LANES, so the loop over j has no scalar tail).

    STEPS_AT_ONCE terms of every sum are added per pass over the sums, in k order (each a
    rounded product, then a rounded sum: ``a += x * v`` four times), so a sum is loaded and
    stored once per four steps instead of every step; the ROWS_AT_ONCE rows share each load of
    the columns. Every score is still its own sum: the rows and columns are lanes. (Arrays
    are indexed, not sliced: a view's reference count is an atomic add on a line that both
    threads write.)"""
    dim, width = cols.shape
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for j in range(width):
        sums[0, j] = 0.0
        sums[1, j] = 0.0
        sums[2, j] = 0.0
        sums[3, j] = 0.0
    whole = dim - dim % STEPS_AT_ONCE
    for k in range(0, whole, STEPS_AT_ONCE):
        x00, x01, x02, x03 = u[r0, k], u[r0, k + 1], u[r0, k + 2], u[r0, k + 3]
        x10, x11, x12, x13 = u[r1, k], u[r1, k + 1], u[r1, k + 2], u[r1, k + 3]
        x20, x21, x22, x23 = u[r2, k], u[r2, k + 1], u[r2, k + 2], u[r2, k + 3]
        x30, x31, x32, x33 = u[r3, k], u[r3, k + 1], u[r3, k + 2], u[r3, k + 3]
        for j in range(width):
            v0, v1, v2, v3 = cols[k, j], cols[k + 1, j], cols[k + 2, j], cols[k + 3, j]
            a = sums[0, j]
            a += x00 * v0
            a += x01 * v1
            a += x02 * v2
            a += x03 * v3
            sums[0, j] = a
            a = sums[1, j]
            a += x10 * v0
            a += x11 * v1
            a += x12 * v2
            a += x13 * v3
            sums[1, j] = a
            a = sums[2, j]
            a += x20 * v0
            a += x21 * v1
            a += x22 * v2
            a += x23 * v3
            sums[2, j] = a
            a = sums[3, j]
            a += x30 * v0
            a += x31 * v1
            a += x32 * v2
            a += x33 * v3
            sums[3, j] = a
    for k in range(whole, dim):  # the last dim % STEPS_AT_ONCE steps
        x0, x1, x2, x3 = u[r0, k], u[r1, k], u[r2, k], u[r3, k]
        for j in range(width):
            v = cols[k, j]
            sums[0, j] += x0 * v
            sums[1, j] += x1 * v
            sums[2, j] += x2 * v
            sums[3, j] += x3 * v


@_inline
def finish(out, i, y0, y1, y2):  # pragma: no cover - compiled
    """out[i] = y / |y| (float64), the north pole for a zero y."""
    norm = np.sqrt(y0 * y0 + y1 * y1 + y2 * y2)
    if norm > 1e-12:
        out[i, 0], out[i, 1], out[i, 2] = y0 / norm, y1 / norm, y2 / norm
    else:
        out[i, 0], out[i, 1], out[i, 2] = 0.0, 0.0, 1.0


@_pjit
def pca_rows(x, mean, comps, out):  # pragma: no cover - compiled
    """PCA-3 direction of each row [N, D] -> out [N, 3] (fixed order, per row)."""
    n, dim = x.shape
    for i in numba.prange(n):
        sq = np.float32(0.0)
        for k in range(dim):
            sq += x[i, k] * x[i, k]
        inv = np.float32(1.0) / np.sqrt(sq) if sq > 0 else np.float32(1.0)
        y0 = np.float32(0.0)
        y1 = np.float32(0.0)
        y2 = np.float32(0.0)
        for k in range(dim):
            c = x[i, k] * inv - mean[k]
            y0 += c * comps[k, 0]
            y1 += c * comps[k, 1]
            y2 += c * comps[k, 2]
        finish(out, i, np.float64(y0), np.float64(y1), np.float64(y2))


# ---------------------------------------------------------------------------------------------
# the search: coarse stage per row, landmark scans per list


@_pjit
def coarse_rows(x, centroids_t, n_lists, u, probe):  # pragma: no cover - compiled
    """u [B, D] <- the unit rows of x (float32, fixed order; a zero row stays zero) and probe
    [B, n_probe] <- the ids of their n_probe most similar of the n_lists centroids (the first
    n_lists columns of centroids_t; n_lists pads when n_probe > n_lists). ROWS_AT_ONCE rows
    are scored together (``score_group``), as the landmark scan does."""
    n, dim = x.shape
    n_probe = probe.shape[1]
    for blk in numba.prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        sums = np.empty((ROWS_AT_ONCE, centroids_t.shape[1]), np.float32)
        rows = np.empty(ROWS_AT_ONCE, np.int64)
        pv = np.empty(n_probe, np.float32)
        pi = np.empty(n_probe, np.int64)
        lo, hi = blk * ROW_BLOCK, min(blk * ROW_BLOCK + ROW_BLOCK, n)
        for i in range(lo, hi):
            sq = np.float32(0.0)
            for k in range(dim):
                sq += x[i, k] * x[i, k]
            inv = np.float32(1.0) / np.sqrt(sq) if sq > 0 else np.float32(1.0)
            for k in range(dim):
                u[i, k] = x[i, k] * inv
        for a in range(lo, hi, ROWS_AT_ONCE):
            got = min(ROWS_AT_ONCE, hi - a)
            for z in range(ROWS_AT_ONCE):  # a short group repeats its last row
                rows[z] = a + min(z, got - 1)
            score_group(u, rows, centroids_t, sums)
            for z in range(got):
                for p in range(n_probe):
                    pv[p] = -np.inf
                    pi[p] = n_lists
                top_scan(pv, pi, sums, z, n_lists, 0)
                for p in range(n_probe):
                    probe[a + z, p] = pi[p]


@_jit
def scan_tasks_of(probe, offsets, task_work):  # pragma: no cover - compiled
    """(row, probe) pairs grouped by list, and tasks of about ``task_work`` multiply-adds.

    pairs [P] = row * n_probe + p (rows ascending within a list); tasks [T, 3] = (list,
    first pair, end pair): equal work per task, so a static split of the tasks between the
    threads is balanced whatever the lists' lengths."""
    n, n_probe = probe.shape
    n_lists = offsets.shape[0] - 1
    count = np.zeros(n_lists + 1, np.int64)
    for i in range(n):
        for p in range(n_probe):
            count[probe[i, p]] += 1
    start = np.zeros(n_lists + 1, np.int64)
    for c in range(n_lists):
        start[c + 1] = start[c] + count[c]
    fill = start[:-1].copy()
    pairs = np.empty(start[n_lists], np.int64)
    for i in range(n):
        for p in range(n_probe):
            c = probe[i, p]
            if c < n_lists:
                pairs[fill[c]] = i * n_probe + p
                fill[c] += 1
    per_task = np.empty(n_lists, np.int64)
    n_tasks = 0
    for c in range(n_lists):
        per_task[c] = max(ROWS_AT_ONCE, task_work // max(offsets[c + 1] - offsets[c], 1))
        n_tasks += (count[c] + per_task[c] - 1) // per_task[c]
    tasks = np.empty((n_tasks, 3), np.int64)
    t = 0
    for c in range(n_lists):
        for a in range(start[c], start[c + 1], per_task[c]):
            tasks[t, 0], tasks[t, 1], tasks[t, 2] = c, a, min(a + per_task[c], start[c + 1])
            t += 1
    return pairs, tasks


@_pjit
def scan_tasks(
    u, pairs, tasks, offsets, columns, blocks, top_val, top_id, top3
):  # pragma: no cover
    """For every pair (row r, probe p) of every task's list c: top_val/top_id [r, p, :] <- the
    top k (k = top_val.shape[2]) landmarks of list c by fixed-order score (``top3``: through
    ``top3_scan``, which requires k = 3 and gives the same bits as the general insert).

    ROWS_AT_ONCE rows are scored together against the list's block (``score_group``); every
    score is still its own sum over k in order (the rows are lanes, never summed together)."""
    dim = u.shape[1]
    n_probe, k = top_val.shape[1], top_val.shape[2]
    n_lists = offsets.shape[0] - 1
    n_land = offsets[n_lists]
    widest = 0
    for c in range(n_lists):
        widest = max(widest, columns[c + 1] - columns[c])
    for t in numba.prange(tasks.shape[0]):
        sums = np.empty((ROWS_AT_ONCE, widest), np.float32)
        rows = np.empty(ROWS_AT_ONCE, np.int64)
        tv = np.empty(k, np.float32)
        ti = np.empty(k, np.int64)
        c, first, end = tasks[t, 0], tasks[t, 1], tasks[t, 2]
        lo = offsets[c]
        w = offsets[c + 1] - lo
        width = columns[c + 1] - columns[c]
        block = blocks[dim * columns[c] : dim * columns[c + 1]].reshape((dim, width))
        for a in range(first, end, ROWS_AT_ONCE):
            got = min(ROWS_AT_ONCE, end - a)
            for z in range(ROWS_AT_ONCE):  # a short group repeats its last row
                rows[z] = pairs[a + min(z, got - 1)] // n_probe
            score_group(u, rows, block, sums)
            for z in range(got):
                r = pairs[a + z] // n_probe
                p = pairs[a + z] - r * n_probe
                if top3:
                    inf = np.float32(-np.inf)
                    v0, v1, v2, i0, i1, i2 = top3_scan(
                        sums, z, w, lo, inf, inf, inf, n_land, n_land, n_land
                    )
                    top_val[r, p, 0], top_val[r, p, 1], top_val[r, p, 2] = v0, v1, v2
                    top_id[r, p, 0], top_id[r, p, 1], top_id[r, p, 2] = i0, i1, i2
                else:  # the general insert over every sum (what the tests compare top3 with)
                    for m in range(k):
                        tv[m] = -np.inf
                        ti[m] = n_land
                    top_scan(tv, ti, sums, z, w, lo)
                    for m in range(k):
                        top_val[r, p, m] = tv[m]
                        top_id[r, p, m] = ti[m]


@_pjit
def merge_rows(top_val, top_id, positions, tau, out):  # pragma: no cover - compiled
    """out [B, 3] <- normalize(sum_j w_j P_j) over each row's top k landmarks of all its probed
    lists (the top k of the union under the same total order), w_j = exp((c_j - c_max) / tau)."""
    n, n_probe, k = top_val.shape
    n_land = positions.shape[0]
    for blk in numba.prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        tv = np.empty(k, np.float32)
        ti = np.empty(k, np.int64)
        for i in range(blk * ROW_BLOCK, min(blk * ROW_BLOCK + ROW_BLOCK, n)):
            tv[:] = -np.inf
            ti[:] = n_land
            for p in range(n_probe):
                for m in range(k):
                    if top_id[i, p, m] < n_land:
                        top_insert(tv, ti, top_val[i, p, m], top_id[i, p, m])
            y0 = 0.0
            y1 = 0.0
            y2 = 0.0
            for m in range(k):
                if ti[m] >= n_land:
                    break
                wt = np.exp((np.float64(tv[m]) - np.float64(tv[0])) / tau)
                y0 += wt * positions[ti[m], 0]
                y1 += wt * positions[ti[m], 1]
                y2 += wt * positions[ti[m], 2]
            finish(out, i, y0, y1, y2)


def landmark_directions(index: LandmarkIndex, x: np.ndarray, k: int, n_probe: int, tau: float,
                        out: np.ndarray, specialise: bool = True) -> None:  # fmt: skip
    """out [B, 3] float64 <- the landmark map of rows x [B, D] float32 (C-contiguous).

    ``specialise``: use the k = 3 top list (``top3_scan``) when k is 3; False forces the
    general insert (same bits: the tests compare the two)."""
    n, dim = x.shape
    n_land = index.positions.shape[0]
    u = np.empty((n, dim), np.float32)
    probe = np.empty((n, n_probe), np.int64)
    coarse_rows(x, index.centroids_t, index.n_lists, u, probe)
    pairs, tasks = scan_tasks_of(probe, index.offsets, TASK_WORK)
    top_val = np.full((n, n_probe, k), -np.inf, np.float32)  # pads: n_probe > lists
    top_id = np.full((n, n_probe, k), n_land, np.int64)
    top3 = specialise and k == 3
    scan_tasks(u, pairs, tasks, index.offsets, index.columns, index.blocks, top_val, top_id, top3)
    merge_rows(top_val, top_id, index.positions, tau, out)
