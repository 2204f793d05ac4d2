r"""Nearest neighbours of rows (pure numpy): top-k, exact and approximate cosine kNN, recall.

* :func:`top_k`: the one top-k of the package (column indices of the k largest entries).
* :func:`knn_indices`: exact top-k by dot product, the base read chunk by chunk.
* :func:`exact_knn` / :func:`approx_knn`: cosine kNN lists [N, k] of unit rows (the THRML
  attraction partners). Approximate: ``tables`` sign-random-projection hashes (``bits =
  ceil(log2(N / block)) + 2`` hyperplanes each, seeded); rows sorted by hash code; each block of
  ``block`` consecutive rows compares against itself and both neighbouring blocks (exact
  cosine); the per-table top-k lists are merged (duplicates removed) into the final top-k.
  ``N <= 3 block``: exact.
* :func:`neighbourhood_recall`: for Q query rows (evenly spaced), recall@k = the fraction of the
  k angular nearest neighbours on the sphere that are among the k cosine nearest neighbours in
  embedding space (tie-aware: cosine >= the k-th largest cosine), averaged (self excluded).
"""

from __future__ import annotations

import math

import numpy as np
from threadpoolctl import threadpool_limits

from sphere_assets.lib.sphere.features import evenly_spaced, unit_rows

KNN_BATCH = 32  # hash blocks per batched matmul (approx_knn)


def top_k(sims: np.ndarray, k: int, *, ordered: bool = True) -> np.ndarray:
    """Column indices [R, min(k, C)] of the k largest entries of each row of ``sims`` [R, C].

    ``ordered``: sorted by decreasing value (stable among ties); else in argpartition's order.
    """
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    if not ordered:
        return part
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def knn_indices(
    queries: np.ndarray, base: np.ndarray, query_rows: np.ndarray, k: int, chunk: int = 16384
) -> np.ndarray:
    """Exact top-k [Q, k] by dot product of each query against all base rows (query row excluded).

    ``queries`` [Q, D], ``base`` [N, D] (any object sliceable by rows), ``query_rows`` [Q] the
    queries' own rows in ``base``.
    """
    q = np.asarray(queries, dtype=np.float32)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for start in range(0, base.shape[0], chunk):
        b = np.asarray(base[start : start + chunk], dtype=np.float32)
        s = q @ b.T
        own = (query_rows[:, None] >= start) & (query_rows[:, None] < start + b.shape[0])
        rows = np.nonzero(own[:, 0])[0]
        s[rows, query_rows[rows] - start] = -np.inf
        idx = top_k(s, k, ordered=False)
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, idx + start], axis=1)
        keep = top_k(cand_s, k, ordered=False)
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def exact_knn(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k (self excluded) for small N: (int32 [N, k], float32 [N, k])."""
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    idx = top_k(sims, k)
    return idx.astype(np.int32), np.take_along_axis(sims, idx, axis=1).astype(np.float32)


def approx_knn(
    unit: np.ndarray, k: int, tables: int = 4, block: int = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cosine kNN of unit rows [N, D] (module docstring): (int32 [N, k'], float32
    [N, k']) with k' = min(k, N - 1); self never listed."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n, dim = unit.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32)
    with threadpool_limits(1, "blas"):  # many small GEMMs: BLAS threads only contend
        if n <= 3 * block:
            return exact_knn(unit, k)
        return _approx_knn(unit, k, tables, block, seed)


def _hash_blocks(unit, planes, block: int):
    """Rows sorted by sign-projection code, cut into blocks: (rows [B, block], candidates
    [B, 3 block]: the block and both neighbours); row N is the padding dummy."""
    n = unit.shape[0]
    bits = planes.shape[1]
    n_blocks = -(-n // block)
    code = ((unit @ planes) > 0).astype(np.int64) @ (np.int64(1) << np.arange(bits))
    order = np.argsort(code, kind="stable")
    rows = np.concatenate([order, np.full(n_blocks * block - n, n)]).reshape(n_blocks, block)
    ext = np.concatenate([np.full((1, block), n), rows, np.full((1, block), n)])
    return rows, np.concatenate([ext[:-2], ext[1:-1], ext[2:]], axis=1)


def _table_top_k(padded, rows, cands, k: int, out_i, out_s) -> None:
    """Top-k of every real row among its block candidates (batched), into out_i / out_s."""
    n = padded.shape[0] - 1
    block = rows.shape[1]
    for b0 in range(0, rows.shape[0], KNN_BATCH):
        q = rows[b0 : b0 + KNN_BATCH]
        c = cands[b0 : b0 + KNN_BATCH]
        sims = np.matmul(padded[q], padded[c].transpose(0, 2, 1))  # [nb, block, 3 block]
        sims[(q[:, :, None] == c[:, None, :]) | (c[:, None, :] == n)] = -np.inf
        sims = sims.reshape(-1, 3 * block)
        top = top_k(sims, k)
        q_flat = q.reshape(-1)
        real = q_flat < n
        c_rep = np.repeat(c, block, axis=0)
        out_i[q_flat[real]] = np.take_along_axis(c_rep, top, axis=1)[real]
        out_s[q_flat[real]] = np.take_along_axis(sims, top, axis=1)[real]


def _merge_tables(all_i, all_s, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct top-k of the tables' candidates; rows short of k distinct neighbours point at
    themselves with weight 0 (no force, no energy)."""
    n = all_i.shape[0]
    order = np.argsort(all_i, axis=1, kind="stable")
    si = np.take_along_axis(all_i, order, axis=1)
    ss = np.take_along_axis(all_s, order, axis=1)
    dup = np.zeros_like(si, bool)
    dup[:, 1:] = si[:, 1:] == si[:, :-1]
    ss[dup | (si >= n)] = -np.inf
    top = top_k(ss, k)
    idx = np.take_along_axis(si, top, axis=1)
    sim = np.take_along_axis(ss, top, axis=1)
    missing = ~np.isfinite(sim)
    idx[missing] = np.broadcast_to(np.arange(n)[:, None], idx.shape)[missing]
    sim[missing] = 0.0
    return idx.astype(np.int32), sim.astype(np.float32)


def _approx_knn(unit, k, tables, block, seed):
    n, dim = unit.shape
    rng = np.random.default_rng(seed)
    bits = min(62, math.ceil(math.log2(n / block)) + 2)
    padded = np.concatenate([unit, np.zeros((1, dim), np.float32)])  # row n: dummy
    all_i = np.empty((n, tables * k), np.int64)
    all_s = np.empty((n, tables * k), np.float32)
    for t in range(tables):
        planes = rng.standard_normal((dim, bits)).astype(np.float32)
        rows, cands = _hash_blocks(unit, planes, block)
        cols = slice(t * k, (t + 1) * k)
        _table_top_k(padded, rows, cands, k, all_i[:, cols], all_s[:, cols])
    return _merge_tables(all_i, all_s, k)


class _UnitView:
    """Row-normalised view of a matrix, normalised chunk by chunk on slicing."""

    def __init__(self, x):
        self.x = x
        self.shape = x.shape

    def __getitem__(self, sl):
        return unit_rows(self.x[sl]).astype(np.float32)


def neighbourhood_recall(
    embeddings: np.ndarray, unit: np.ndarray, k: int = 10, n_queries: int = 256
) -> float:
    """Mean recall@k of cosine kNN (embedding space) among angular kNN (sphere), Q queries.

    Tie-aware: an angular neighbour is a hit when its cosine similarity to the query is at
    least the k-th largest cosine similarity (so exact duplicates all count as neighbours).
    """
    emb = np.asarray(embeddings)
    n = emb.shape[0]
    if n <= 1:
        return 1.0
    k = min(k, n - 1)
    rows = evenly_spaced(n, n_queries)
    q = unit_rows(emb[rows])
    # cosine kNN: unit rows (chunked normalisation keeps memory at one chunk)
    e_nn = knn_indices(q, _UnitView(emb), rows, k)
    s_nn = knn_indices(np.asarray(unit)[rows], np.asarray(unit), rows, k)
    kth = np.einsum("qkd,qd->qk", unit_rows(emb[e_nn.reshape(-1)]).reshape(*e_nn.shape, -1), q)
    kth = kth.min(axis=1)
    got = np.einsum("qkd,qd->qk", unit_rows(emb[s_nn.reshape(-1)]).reshape(*s_nn.shape, -1), q)
    hits = (got >= kth[:, None] - 1e-6).sum(axis=1)
    return float(np.mean(hits) / k)


def random_unit(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random directions on S^2 [n, 3] (baseline for neighbourhood recall)."""
    g = np.random.default_rng(seed).standard_normal((n, 3))
    return g / np.linalg.norm(g, axis=1, keepdims=True)
