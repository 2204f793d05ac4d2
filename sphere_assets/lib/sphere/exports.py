r"""Training exports of a placement (pure numpy): Librarian and LVM tensors.

* :func:`librarian_export_flat`: patch bytes -> (r, theta, phi) targets.
* :func:`lvm_windows`: windows of ``window`` consecutive patches of one article -> the next
  patch, as row numbers into the shard's embeddings (:func:`lvm_gather` builds the tensors).
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


def lvm_windows(article_ids, patch_index, window: int = 5) -> np.ndarray:
    """Row numbers [M, window + 1] (int64) of every window of ``window`` consecutive patches of
    one article followed by the next patch (the target).

    Rows are taken in (article, patch_index) order; a window starting at row i is used when the
    window + 1 rows belong to the same article with consecutive patch_index values. The export
    stores these indices into the shard's one embeddings matrix, not copies of the windows
    (a copy would be ``window`` times the embeddings: ~70% of the warehouse at 25 MB).
    """
    pidx = np.asarray(patch_index, dtype=np.int64)
    n = pidx.size
    span = window + 1
    if n < span:
        return np.zeros((0, span), np.int64)
    _, art = np.unique(np.asarray(article_ids), return_inverse=True)
    order = np.lexsort((pidx, art))
    a_sorted, p_sorted = art[order], pidx[order]
    starts = np.arange(n - span + 1)
    ok = np.ones(starts.size, bool)
    for off in range(1, span):  # one column at a time: no [M, span] temporaries
        ok &= a_sorted[starts + off] == a_sorted[starts]
        ok &= p_sorted[starts + off] == p_sorted[starts] + off
    first = starts[ok]
    return order[first[:, None] + np.arange(span)]


def lvm_gather(embeddings: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [M, W, D], target [M, D]) float32 of the windows ``rows`` [M, W + 1] (for a
    trainer: the export itself holds only ``rows``)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    return emb[rows[:, :-1]], emb[rows[:, -1]]
