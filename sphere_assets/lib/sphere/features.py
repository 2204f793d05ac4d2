r"""Per-row features of embeddings for the shell placement (pure numpy).

Input validation (rows named by key), the norm / concentration of a row, the deterministic
PCA-3 map to S^2 and its angles (the score and the fitted map: ``sphere_map.py``)
(sphere_assets/placements/README.md, "Features of an embedding", "Angles", "Radial start").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOG_FLOOR = 1e-30
NORTH_POLE = np.array([0.0, 0.0, 1.0])
FEATURE_CHUNK = 16384  # rows per feature chunk (a few MB: stays in cache between the sums)


def name_rows(rows: np.ndarray, row_keys: Sequence | None, limit: int = 10) -> str:
    """The rows of an error message: ``rows 1, 2`` or ``rows (keys) k1, k2`` (at most ``limit``)."""
    shown = [repr(row_keys[int(i)]) if row_keys is not None else str(int(i)) for i in rows[:limit]]
    more = f" (+{rows.size - limit} more)" if rows.size > limit else ""
    label = "rows (keys)" if row_keys is not None else "rows"
    return f"{label} {', '.join(shown)}{more}"


def check_shapes(embeddings: np.ndarray, prominence, row_keys) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"waterfill: embeddings must be 2-D [N, D], got shape {embeddings.shape}")
    n = embeddings.shape[0]
    if row_keys is not None and len(row_keys) != n:
        raise ValueError(f"waterfill: {len(row_keys)} row keys for {n} embeddings")
    if prominence is not None and np.shape(prominence) != (n,):
        raise ValueError(f"waterfill: prominence shape {np.shape(prominence)} != ({n},)")


def check_prominence(prominence, row_keys=None) -> None:
    """Raise ValueError naming rows whose prominence is NaN, inf or negative."""
    prom = np.asarray(prominence)
    rows = np.nonzero(~np.isfinite(prom) | (prom < 0))[0]
    if rows.size:
        raise ValueError(
            f"waterfill: {rows.size} prominence value(s) are NaN/inf/negative: "
            f"{name_rows(rows, row_keys)}"
        )


def evenly_spaced(n: int, m: int) -> np.ndarray:
    """min(m, n) row indices floor((j + 1/2) n / m): a deterministic systematic sample."""
    m = min(m, n)
    return ((np.arange(m, dtype=np.float64) + 0.5) * n / max(m, 1)).astype(np.int64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass(frozen=True)
class SphereMap:
    """PCA-3 map: n = normalize((u - mean) @ components)."""

    mean: np.ndarray  # float64 [D]
    components: np.ndarray  # float64 [D, 3], orthonormal columns (zero columns when D < 3)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[idx, np.arange(components.shape[1])])
    return components * np.where(signs == 0, 1.0, signs)


def _complete_basis(cols: list[np.ndarray], dim: int, want: int) -> np.ndarray:
    """Extend orthonormal columns with canonical axes (Gram-Schmidt) up to `want` columns."""
    out = list(cols)
    for axis in range(dim):
        if len(out) >= want:
            break
        v = np.zeros(dim)
        v[axis] = 1.0
        for c in out:
            v -= (c @ v) * c
        n = np.linalg.norm(v)
        if n > 1e-8:
            out.append(v / n)
    while len(out) < want:  # D < 3: the missing directions are identically zero
        out.append(np.zeros(dim))
    return np.stack(out, axis=1)


def fit_sphere_map(embeddings: np.ndarray, sample_size: int = 16384) -> SphereMap:
    """PCA-3 of unit vectors on an evenly spaced sample (see module docstring)."""
    emb = np.asarray(embeddings)
    n, dim = emb.shape
    if n == 0:
        return SphereMap(np.zeros(dim), _complete_basis([], dim, 3))
    with np.errstate(invalid="ignore", over="ignore"):
        u = unit_rows(emb[evenly_spaced(n, sample_size)])
    u = u[np.isfinite(u).all(axis=1)]  # non-finite rows are rejected by the feature pass
    if u.shape[0] == 0:
        return SphereMap(np.zeros(dim), _complete_basis([], dim, 3))
    mean = u.mean(axis=0)
    centred = u - mean
    cols: list[np.ndarray] = []
    if centred.shape[0] > 1 and np.abs(centred).max() > 0:
        # right singular vectors of the centred sample = eigenvectors of its D x D scatter
        evals, evecs = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(-evals, kind="stable")
        evals, evecs = evals[order], evecs[:, order]
        keep = evals > max(evals[0] * 1e-12, 1e-24)
        cols = [evecs[:, i] for i in range(min(3, int(keep.sum())))]
    comps = _complete_basis(cols, dim, 3)
    return SphereMap(mean=mean, components=_fix_signs(comps))


def embedding_features(
    embeddings: np.ndarray, sphere_map: SphereMap, row_keys: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunked pass over the rows: (norm [N], concentration k [N], direction n [N, 3]).

    Also the NaN/inf check: a row with a NaN/inf element has a non-finite sum of squares;
    flagged rows are re-checked element-wise and either named in a ValueError or (finite rows
    whose float32 squares overflow) recomputed in float64.
    """
    emb = np.asarray(embeddings)
    n, dim = emb.shape
    sq = np.empty(n, np.float64)
    quad = np.empty(n, np.float64)
    proj = np.empty((n, 3), np.float64)
    comps32 = sphere_map.components.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, FEATURE_CHUNK):
            x = np.asarray(emb[start : start + FEATURE_CHUNK], dtype=np.float32)
            sl = slice(start, start + x.shape[0])
            sq[sl] = np.einsum("ij,ij->i", x, x)
            x2 = x * x
            quad[sl] = np.einsum("ij,ij->i", x2, x2)
            proj[sl] = x @ comps32
    flagged = np.nonzero(~(np.isfinite(sq) & np.isfinite(quad)))[0]
    if flagged.size:
        x64 = np.asarray(emb[flagged], dtype=np.float64)
        nonfinite = ~np.isfinite(x64).all(axis=1)
        if nonfinite.any():
            raise ValueError(
                f"waterfill: {int(nonfinite.sum())} embedding row(s) contain NaN/inf: "
                f"{name_rows(flagged[nonfinite], row_keys)}"
            )
        sq[flagged] = np.einsum("ij,ij->i", x64, x64)
        quad[flagged] = np.einsum("ij,ij->i", x64**2, x64**2)
        proj[flagged] = x64 @ sphere_map.components
    norm = np.sqrt(sq)
    pos = norm > 0
    safe_sq = np.where(pos, sq, 1.0)
    conc = np.log(np.maximum(np.where(pos, dim * quad / (safe_sq * safe_sq), 1.0), 1.0))
    y = np.where(pos[:, None], proj / np.where(pos, norm, 1.0)[:, None], 0.0)
    y -= sphere_map.mean @ sphere_map.components
    yn = np.linalg.norm(y, axis=1, keepdims=True)
    ok = yn > 1e-12
    unit = np.where(ok, y / np.where(ok, yn, 1.0), NORTH_POLE)
    return norm, conc, unit


def angles_of(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta in [0, pi], phi in [0, 2 pi) of unit vectors (float64)."""
    u = np.asarray(unit, dtype=np.float64)
    theta = np.arccos(np.clip(u[:, 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(u[:, 1], u[:, 0]), 2 * np.pi)
    return theta, np.where(phi >= 2 * np.pi, 0.0, phi)
