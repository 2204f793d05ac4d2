r"""Training exports of a placement (pure numpy): Librarian and LVM tensors.

* :func:`librarian_export_flat`: patch bytes -> (r, theta, phi) targets.
* :func:`lvm_sequences`: windows of ``window`` consecutive patch embeddings of one article ->
  the next patch's embedding.
"""

from __future__ import annotations

import numpy as np


def librarian_export_flat(flat, lengths, r, theta, phi, max_len: int | None = None) -> dict:
    """Patches given as one byte buffer + lengths (in row order) -> training tensors.

    ``bytes`` uint8 [P, width] (zero padded; width = longest patch, capped at ``max_len``),
    ``lengths`` int32 [P] (bytes kept), ``target`` float32 [P, 3] = (r, theta, phi).
    """
    flat = np.asarray(flat, dtype=np.uint8).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = lengths.size
    r, theta, phi = (np.asarray(a, dtype=np.float32).reshape(-1) for a in (r, theta, phi))
    if not (r.size == theta.size == phi.size == n):
        raise ValueError(
            f"librarian_export: {n} patches but r/theta/phi sizes {r.size}/{theta.size}/{phi.size}"
        )
    if int(lengths.sum()) != flat.size:
        raise ValueError(f"librarian_export: lengths sum {lengths.sum()} != {flat.size} bytes")
    width = int(lengths.max()) if n else 0
    if max_len is not None:
        width = min(width, int(max_len))
    kept = np.minimum(lengths, width)
    out = np.zeros((n, width), np.uint8)
    if n and width:
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(n), kept)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(kept) - kept, kept)
        out[rows, cols] = flat[np.repeat(starts, kept) + cols]
    target = np.stack([r, theta, phi], axis=1) if n else np.zeros((0, 3), np.float32)
    return {"bytes": out, "lengths": kept.astype(np.int32), "target": target}


def lvm_sequences(embeddings: np.ndarray, article_ids, patch_index, window: int = 5) -> dict:
    """Windows of `window` consecutive patch embeddings of one article -> the next patch.

    Rows are ordered by (article, patch_index); a window starting at row i is used when the
    window + 1 rows belong to the same article with consecutive patch_index values.
    Returns ``inputs`` float32 [M, window, D], ``target`` float32 [M, D], ``rows`` int64
    [M, window + 1] (row numbers of the inputs and the target in the given table).
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    n, dim = emb.shape
    pidx = np.asarray(patch_index, dtype=np.int64)
    _, art = np.unique(np.asarray(article_ids), return_inverse=True)
    order = np.lexsort((pidx, art))
    a_sorted, p_sorted = art[order], pidx[order]
    span = window + 1
    if n < span:
        return {
            "inputs": np.zeros((0, window, dim), np.float32),
            "target": np.zeros((0, dim), np.float32),
            "rows": np.zeros((0, span), np.int64),
        }
    starts = np.arange(n - span + 1)
    offs = np.arange(span)
    same = (a_sorted[starts[:, None] + offs] == a_sorted[starts, None]).all(axis=1)
    consecutive = (p_sorted[starts[:, None] + offs] == p_sorted[starts, None] + offs).all(axis=1)
    ok = starts[same & consecutive]
    rows = order[ok[:, None] + offs]
    return {"inputs": emb[rows[:, :window]], "target": emb[rows[:, window]], "rows": rows}
