"""De Bruijn-style patch adjacency: 2-gram nodes, 3-gram edges, counts, CSR, log weights.

Graph
    Nodes are the distinct 2-grams ``(a, b)`` of the padded sequences (so ``(_START_, x)`` and
    ``(y, _END_)`` are nodes), with ``F2`` = occurrence count.  Every distinct 3-gram
    ``(a, b, c)`` is the edge ``(a, b) → (b, c)`` with ``F3`` = occurrence count.  A node
    ``(y, _END_)`` has no out-edges; a node ``(_START_, x)`` has no in-edges.

CSR
    Nodes are numbered in canonical order (lexicographic by token bytes, START < END <
    patches — the 2-gram row order of :class:`~sphere_assets.lib.sketch.ngrams.NgramTable`).
    ``indptr`` (N+1, int64), ``indices`` (E, int64: target node), ``counts`` (E, int64: F3),
    ``weights`` (E, float64); the out-edges of a node are sorted by target node id.

Weight
    ``w(a,b→b,c) = ln((F3 + α) / (F2(a,b) + α · outdeg(a,b)))`` — the additively smoothed
    log-probability of continuing ``(a, b)`` with ``c``.  For a node that is not ``(y, END)``
    every occurrence is followed by exactly one 3-gram, so ``Σ_out F3 = F2`` and the smoothed
    probabilities sum to 1.  ``α = 0.5`` (add-half / Krichevsky–Trofimov smoothing, the
    standard choice for sequential prediction: weights stay finite and ≤ 0, rare edges are not
    driven to −∞, and with many observations the weight tends to the empirical ln(F3/F2)).
    An edge that was never observed from a node scores as one extra smoothed edge:
    ``ln(α / (F2 + α · (outdeg + 1)))`` (0 for an unknown node).

Merging
    Per-shard graphs merge by adding ``F2`` of equal nodes and ``F3`` of equal edges, nodes and
    edges being identified by their bytes; weights are recomputed from the merged counts.  The
    result equals the graph built over all shards at once (canonical order, so bit-identical),
    and merging is associative and commutative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng

DEFAULT_ALPHA = 0.5
FORMAT = "sphere.adjacency.csr/v1"


def edge_weights(
    f3: np.ndarray, f2_src: np.ndarray, outdeg_src: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """``ln((F3 + α) / (F2 + α · outdeg))`` elementwise (float64)."""
    if alpha <= 0:
        raise ValueError(f"smoothing alpha must be > 0, got {alpha}")
    f3 = np.asarray(f3, dtype=np.float64)
    return np.log(f3 + alpha) - np.log(np.asarray(f2_src, np.float64) + alpha * outdeg_src)


def unseen_weight(f2_src: np.ndarray, outdeg_src: np.ndarray, alpha: float = DEFAULT_ALPHA):
    """Weight of an edge never observed from its node: ``ln(α / (F2 + α (outdeg + 1)))``."""
    f2 = np.asarray(f2_src, dtype=np.float64)
    return np.log(alpha) - np.log(f2 + alpha * (np.asarray(outdeg_src, np.float64) + 1.0))


@dataclass(frozen=True, eq=False)
class Adjacency:
    tokens: pa.Array  # binary token table [START, END, patches ascending]
    nodes: np.ndarray  # (N, 2) int32 token ids, canonical order
    node_counts: np.ndarray  # (N,) int64  F2
    indptr: np.ndarray  # (N+1,) int64
    indices: np.ndarray  # (E,) int64 target node
    counts: np.ndarray  # (E,) int64  F3
    weights: np.ndarray  # (E,) float64
    alpha: float = DEFAULT_ALPHA

    @property
    def n_nodes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.indices.size)

    @property
    def outdeg(self) -> np.ndarray:
        return np.diff(self.indptr)

    def edge_sources(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_nodes, dtype=np.int64), self.outdeg)

    def trigram_rows(self) -> np.ndarray:
        """(E, 3) token ids of every edge, in CSR order."""
        src = self.edge_sources()
        return np.concatenate([self.nodes[src], self.nodes[self.indices][:, 1:2]], axis=1).astype(
            np.int32
        )

    def equal(self, other: Adjacency) -> bool:
        return (
            self.tokens.equals(other.tokens)
            and self.alpha == other.alpha
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in ("nodes", "node_counts", "indptr", "indices", "counts", "weights")
            )
        )

    def tensors(self) -> dict[str, np.ndarray]:
        """The CSR arrays as stored in safetensors."""
        return {
            "indptr": self.indptr,
            "indices": self.indices,
            "counts": self.counts,
            "weights": self.weights,
        }

    def tensor_metadata(self) -> dict[str, str]:
        return csr_metadata(self.n_nodes, self.n_edges, self.alpha)

    def node_table(self) -> pa.Table:
        """One row per node, in node-id order (Parquet beside the CSR)."""
        escaped = ng.with_separator(ng.escaped_tokens(self.tokens))
        data, offsets = ng.key_buffers(escaped, self.nodes)
        keys = pa.Array.from_buffers(
            pa.large_binary(),
            self.n_nodes,
            [None, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data)],
        ).cast(pa.binary())
        left = self.nodes[:, 0]
        right = self.nodes[:, 1]
        return pa.table(
            {
                "node_id": pa.array(np.arange(self.n_nodes, dtype=np.int64)),
                "key": keys,
                "hash": pa.array(hs.hash64_buffer(data, offsets), type=pa.uint64()),
                "left": self.tokens.take(pa.array(left)),
                "right": self.tokens.take(pa.array(right)),
                "left_is_start": pa.array(left == ng.START_ID),
                "right_is_end": pa.array(right == ng.END_ID),
                "count": pa.array(self.node_counts, type=pa.int64()),
                "outdeg": pa.array(self.outdeg.astype(np.int32), type=pa.int32()),
            }
        )


def csr_metadata(n_nodes: int, n_edges: int, alpha: float) -> dict[str, str]:
    """The safetensors metadata of a graph's CSR."""
    return {
        "format": FORMAT,
        "alpha": repr(float(alpha)),
        "n_nodes": str(n_nodes),
        "n_edges": str(n_edges),
        "weight": "ln((F3+alpha)/(F2+alpha*outdeg))",
    }


def _node_index(node_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(node_codes, codes)
    found = pos < node_codes.size
    found[found] = node_codes[pos[found]] == codes[found]
    if not found.all():
        raise ValueError("adjacency: a 3-gram's 2-grams are missing from the 2-gram table")
    return pos.astype(np.int64)


def build(table: ng.NgramTable, alpha: float = DEFAULT_ALPHA) -> Adjacency:
    """Adjacency from the 2-/3-gram rows and counts of an n-gram table."""
    nodes = table.grams[1]
    edges = table.grams[2]
    n_tokens = table.n_tokens
    node_codes = nodes[:, 0].astype(np.int64) * n_tokens + nodes[:, 1]
    src = _node_index(node_codes, edges[:, 0].astype(np.int64) * n_tokens + edges[:, 1])
    dst = _node_index(node_codes, edges[:, 1].astype(np.int64) * n_tokens + edges[:, 2])
    # 3-gram rows are lexicographic, hence grouped by source and, within a source, by target
    outdeg = np.bincount(src, minlength=nodes.shape[0]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(outdeg)]).astype(np.int64)
    f2 = table.counts[1]
    f3 = table.counts[2]
    weights = edge_weights(f3, f2[src], outdeg[src], alpha)
    return Adjacency(
        tokens=table.tokens,
        nodes=nodes.astype(np.int32),
        node_counts=f2.astype(np.int64),
        indptr=indptr,
        indices=dst.astype(np.int64),
        counts=f3.astype(np.int64),
        weights=weights,
        alpha=float(alpha),
    )


def to_table(adj: Adjacency) -> ng.NgramTable:
    """The 2-/3-gram part of an n-gram table (1-gram layer empty)."""
    return ng.NgramTable(
        adj.tokens,
        (np.zeros((0, 1), np.int32), adj.nodes.astype(np.int32), adj.trigram_rows()),
        (np.zeros(0, np.int64), adj.node_counts, adj.counts),
    )


def merge(parts: Sequence[Adjacency], alpha: float | None = None) -> Adjacency:
    """Add counts of equal nodes/edges (by bytes) and recompute weights."""
    if not parts:
        raise ValueError("adjacency merge needs at least one part")
    alphas = {p.alpha for p in parts}
    if alpha is None:
        if len(alphas) != 1:
            raise ValueError(f"adjacency parts use different alphas {sorted(alphas)}")
        alpha = alphas.pop()
    merged = ng.merge_tables([to_table(p) for p in parts])
    return build(merged, alpha)


def from_stored(
    node_table: pa.Table,
    indptr: np.ndarray,
    indices: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Adjacency:
    """Rebuild an :class:`Adjacency` from its node table and CSR (as written by assets)."""
    n = node_table.num_rows
    if indptr.shape != (n + 1,):
        raise ValueError(f"adjacency: indptr has shape {indptr.shape}, expected ({n + 1},)")
    left = node_table.column("left").combine_chunks()
    right = node_table.column("right").combine_chunks()
    is_start = node_table.column("left_is_start").to_numpy()
    is_end = node_table.column("right_is_end").to_numpy()
    patches = pa.concat_arrays([left.filter(pa.array(~is_start)), right.filter(pa.array(~is_end))])
    tokens = pa.concat_arrays(
        [pa.array([ng.START, ng.END], type=pa.binary()), pc.unique(patches).sort()]
    )

    def ids(col: pa.Array, sentinel_mask: np.ndarray, sentinel_id: int) -> np.ndarray:
        idx = pc.fill_null(pc.index_in(col, value_set=tokens.slice(ng.FIRST_PATCH_ID)), -1)
        out = idx.to_numpy(zero_copy_only=False).astype(np.int64) + ng.FIRST_PATCH_ID
        return np.where(sentinel_mask, sentinel_id, out).astype(np.int32)

    nodes = np.stack([ids(left, is_start, ng.START_ID), ids(right, is_end, ng.END_ID)], axis=1)
    node_counts = node_table.column("count").to_numpy().astype(np.int64)
    if weights is None:
        outdeg = np.diff(indptr)
        src = np.repeat(np.arange(n), outdeg)
        weights = edge_weights(counts, node_counts[src], outdeg[src], alpha)
    return Adjacency(
        tokens,
        nodes,
        node_counts,
        np.asarray(indptr, np.int64),
        np.asarray(indices, np.int64),
        np.asarray(counts, np.int64),
        np.asarray(weights, np.float64),
        float(alpha),
    )


def csr_problems(graph: Adjacency) -> list[str]:
    """What is wrong with a graph's CSR (empty = well formed): indptr a monotone 0..E offset
    array, targets in range, counts positive, weights finite and <= 0, every edge (a,b)->(b,c),
    and the smoothed transition probabilities of every node with out-edges summing to 1."""
    problems = []
    indptr, indices = graph.indptr, graph.indices
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        problems.append("indptr is not a monotone 0..E offset array")
        return problems
    if indices.size and (indices.min() < 0 or indices.max() >= graph.n_nodes):
        problems.append("edge target out of range")
    if np.any(graph.counts <= 0) or np.any(graph.node_counts <= 0):
        problems.append("non-positive counts")
    if not np.all(np.isfinite(graph.weights)) or np.any(graph.weights > 1e-12):
        problems.append("weights must be finite and <= 0")
    src = graph.edge_sources()
    if not np.array_equal(graph.nodes[src][:, 1], graph.nodes[indices][:, 0]):
        problems.append("an edge (a,b)->(c,d) has b != c")
    has_out = graph.outdeg > 0
    if has_out.any():
        sums = np.add.reduceat(np.exp(graph.weights), indptr[:-1][has_out])
        if not np.allclose(sums, 1.0, atol=1e-9):
            problems.append("smoothed transition probabilities do not sum to 1")
    return problems


def csr_array_problems(
    indptr: np.ndarray,
    indices: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    node_counts: np.ndarray,
    alpha: float,
) -> list[str]:
    """:func:`csr_problems` on the stored arrays alone (no token table): indptr a monotone
    0..E offset array over the nodes, targets in range, counts positive, every weight exactly
    ``ln((F3+α)/(F2+α·outdeg))`` of the stored counts, and the smoothed transition
    probabilities of every node with out-edges summing to 1.  (That an edge (a,b)->(c,d) has
    b == c needs the node keys: the caller checks it.)"""
    n_nodes = node_counts.size
    if indptr.size != n_nodes + 1 or indptr[0] != 0 or indptr[-1] != indices.size:
        return ["indptr is not a 0..E offset array over the nodes"]
    outdeg = np.diff(indptr)
    if np.any(outdeg < 0):
        return ["indptr is not monotone"]
    problems = []
    if indices.size and (indices.min() < 0 or indices.max() >= n_nodes):
        problems.append("edge target out of range")
    if np.any(counts <= 0) or np.any(node_counts <= 0):
        problems.append("non-positive counts")
    src = np.repeat(np.arange(n_nodes, dtype=np.int64), outdeg)
    if not np.array_equal(weights, edge_weights(counts, node_counts[src], outdeg[src], alpha)):
        problems.append("weights are not ln((F3+alpha)/(F2+alpha*outdeg)) of the stored counts")
    has_out = outdeg > 0
    if has_out.any():
        sums = np.add.reduceat(np.exp(weights), indptr[:-1][has_out])
        if not np.allclose(sums, 1.0, atol=1e-9):
            problems.append("smoothed transition probabilities do not sum to 1")
    return problems
