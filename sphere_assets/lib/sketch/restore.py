"""Restore: turn an HLLSet back into k candidate patch orderings.

Inputs are an HLLSet (three layers, precision P) and a :class:`RestoreIndex` built once from
the n-gram vocabulary (keys, hashes, counts) and the adjacency weights.  The index is plain
arrays (:meth:`RestoreIndex.arrays`): built in memory by :meth:`RestoreIndex.build`, or opened
over read-only memory-mapped views by :meth:`RestoreIndex.from_arrays` without copying or
scanning anything (``sphere_assets.ngrams.io.load_restore_index``).  Every lookup is a CSR
slice or a binary search in a sorted array (no Python dict over the vocabulary or the context
counts), so a query reads only the rows it looks up.

1. **Candidates.**  For every set bit of a layer, the vocabulary n-grams of that order whose
   ``reg*32 + run`` is that bit (lookup ``bit → rows``, a CSR per layer).
2. **Cross-validation.**  A 1-gram candidate is a usable patch.  A 2-gram is usable when both
   patches are.  A 3-gram is *validated* when its own bit is set, its 1-grams are usable and
   both of its 2-grams are usable.  2-/3-grams that touch ``_START_``/``_END_`` are not taken
   from the vocabulary but *synthesised* from the usable patches and 2-grams and kept when their
   bits are set: a span cut out of an article has sentinel n-grams the corpus never contained,
   and synthesis treats spans and whole articles alike.
3. **Graph.**  Nodes are 2-grams, edges the validated 3-grams (the adjacency pruned to them),
   weighted by the adjacency weight ``ln((F3+α)/(F2+α·outdeg))``; an edge the corpus never
   contained (only possible for synthesised sentinel edges) gets the unseen-edge weight.
4. **Beam search** from every ``(_START_, x)`` node, one edge per step, each edge at most once
   per path (so cycles — repeated patches — terminate); a path is complete on reaching a
   ``(y, _END_)`` node.  Live states with the same (node, used edges, recent history) are
   merged (best score kept); the ``beam_width`` best by score (ties: node id, then used-edge
   set) survive each step.  The search stops when no live state remains, nothing expands, or
   the depth exceeds ``|E3| + 1``.  Everything is ordered deterministically.
   *Score.*  A step scores its edge's adjacency weight — or, when the index has the corpus'
   context counts (:mod:`sphere_assets.lib.sketch.context_model`, stored by the adjacency
   assets), the backed-off N-gram log-probability of the new patch given up to N-1 patches
   of the path so far.  Every ordering that explains a set uses the same 3-gram edges, so the
   3-gram score cannot choose between orderings that swap the segments around a repeated
   2-gram; the longer context of the ingested corpus can.
   *Length.*  When the span's patch count is known (``article_hllsets.patch_count``, or the
   patches of text being restored), only paths of exactly that many patches complete, and an
   edge may be used any number of times: the HLLSet says which 3-grams occur, not how often,
   and the length bounds the search instead of the trail rule.  If no path of that length
   is found (long spans can lose it from the beam), the length-free search runs instead and
   the report says so (``length_fallback``).
   Additions beyond the trail search (measured in BENCHMARKS.md): ``max_edge_uses > 1``
   lets a path use an edge that often, and ``covering_walk=True`` (default) adds one candidate
   per START/END node pair that uses *every* validated edge on a START→END route at least
   once — a greedy route inspection (duplicate shortest paths until in = out) walked with
   Hierholzer's algorithm.  An HLLSet records which 3-grams occur, not how often, so for a
   span whose 3-grams repeat no trail covers its set, while such a walk does.
   *Open ends* (``open_ends=True``, for a span that is not known to be a whole article —
   ``sphere restore --text`` of a sentence copied from the middle of a document): a span cut
   out of an article and patched on its own starts and ends with patches the corpus never
   had at that place (patching starts afresh at the cut; the last patch is cut short), so no
   validated 3-gram leads from ``_START_`` into the span or out to ``_END_``.  The search then
   also starts at every node without a validated in-edge and completes at every node without
   a validated out-edge (besides the ``_START_``/``_END_`` nodes), so it restores the span's
   validated interior; a path's first patch is its first node's left patch.
5. **Ranking.**  Complete paths are ranked by 3-gram coverage, then score, then patch bytes.
   Coverage is measured in the HLLSet's own terms: the fraction of the set bits of the 3-gram
   layer that the path's 3-grams hit.  (Counting edges instead would reward a path for picking
   up a false-positive edge whose bit another edge already explains.)
   ``confidence = coverage × softmax(score)`` over the returned top-k.

The report of every restore has |candidates| per layer, |cover| (distinct validated 1/2/3-grams),
|validated edges|, coverage (fraction of the HLLSet's set bits explained by the cover) and
latency.  If nothing can be restored the result is empty with a ``reason``, never an exception.

A restored ordering re-ingested with :func:`sphere_assets.lib.sketch.ngrams.hllset_of_patches`
reproduces the input HLLSet bit-for-bit whenever it uses exactly the set's n-grams (the
round-trip law); HLLSets are sets, so a span whose 3-grams repeat is restored at most up to
that repetition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import adjacency as adj_mod
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng

DEFAULT_K = 5
DEFAULT_BEAM_WIDTH = 16


# ---------------------------------------------------------------------------------------------
# Index (precomputed once)
# ---------------------------------------------------------------------------------------------


def bit_lookup(bits: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``bit → rows``: (indptr of length 32·2^P + 1, rows sorted by bit, stable)."""
    order = np.argsort(bits, kind="stable").astype(np.int64)
    counts = np.bincount(bits, minlength=hs.WORD_BITS << p)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, order


def layer_bit_lookups(
    orders: np.ndarray, bits: np.ndarray, p: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per n-gram order 1..3 of a table that holds all orders (``orders``, ``bits`` per row):
    :func:`bit_lookup` of that order's rows, its rows given as row numbers of the whole table."""
    out = []
    for order in ng.ORDERS:
        sel = np.flatnonzero(orders == order)
        indptr, local = bit_lookup(bits[sel], p)
        out.append((indptr, sel[local].astype(np.int64)))
    return out


def rows_for_bits(indptr: np.ndarray, order: np.ndarray, bits: np.ndarray) -> np.ndarray:
    starts = indptr[bits]
    lengths = indptr[bits + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return order[shift + np.arange(total)]


def _codes(rows: np.ndarray, n_tokens: int) -> np.ndarray:
    code = rows[:, 0].astype(np.int64)
    for col in range(1, rows.shape[1]):
        code = code * n_tokens + rows[:, col]
    return code


class TokenBytes(Sequence):
    """Token id -> patch bytes over a binary Arrow array's buffers (no Python list of every
    token: a mapped index reads only the tokens a query returns)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self._data, self._offsets = data, offsets

    @classmethod
    def of(cls, tokens: pa.Array) -> TokenBytes:
        return cls(*hs.binary_buffers(tokens))

    def __len__(self) -> int:
        return int(self._offsets.size - 1)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return bytes(self._data[int(self._offsets[i]) : int(self._offsets[i + 1])])


def binary_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A binary Arrow array over (data uint8, offsets int32/int64) buffers, zero-copy."""
    off_type = pa.binary() if offsets.dtype == np.int32 else pa.large_binary()
    return pa.Array.from_buffers(
        off_type, int(offsets.size - 1), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _narrow_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(data, offsets) of a binary array, offsets from 0 and int32 when they fit (pa.binary)."""
    data, offsets = hs.binary_buffers(values)
    data = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    return data, offsets.astype(np.int32) if offsets[-1] < 2**31 else offsets


# the arrays of a RestoreIndex (:meth:`RestoreIndex.arrays` / :meth:`RestoreIndex.from_arrays`):
# a query reads only the rows it looks up, so they can be memory-mapped views
INDEX_FORMAT = "sphere.restore.index/v1"


@dataclass(frozen=True, eq=False)
class RestoreIndex:
    p: int
    table: ng.NgramTable
    bits: tuple[np.ndarray, np.ndarray, np.ndarray]
    lookup: tuple[tuple[np.ndarray, np.ndarray], ...]  # per layer (indptr, rows)
    token_row1: np.ndarray  # (T,) 1-gram row of each token id, -1 if none
    codes2: np.ndarray  # (V2,) sorted 2-gram codes a*T+b
    inner3: np.ndarray  # (V3,) bool: 3-gram without sentinels
    left2: np.ndarray  # (V3,) 2-gram row of (a, b)
    right2: np.ndarray  # (V3,) 2-gram row of (b, c)
    weight3: np.ndarray  # (V3,) adjacency weight of each 3-gram
    f2: np.ndarray  # (V2,) node counts
    outdeg: np.ndarray  # (V2,) node out-degrees
    key3: np.ndarray  # (V3,) sorted 3-gram keys left2*T + c (lookup of sentinel 3-grams)
    alpha: float
    pieces: pa.Array = field(repr=False)  # ng.with_separator of the escaped tokens (key parts)
    token_bytes: Sequence[bytes] = field(repr=False)
    context: cm.ContextScorer | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        return self.table.n_tokens

    def __repr__(self) -> str:
        sizes = "/".join(str(self.table.size(n)) for n in ng.ORDERS)
        order = self.context.max_order if self.context is not None else 0
        return (
            f"RestoreIndex(P={self.p}, tokens={self.n_tokens}, n-grams={sizes}, alpha={self.alpha}"
            f", context order={order})"
        )

    @classmethod
    def build(
        cls,
        table: ng.NgramTable,
        p: int = hs.DEFAULT_P,
        adjacency: adj_mod.Adjacency | None = None,
        alpha: float | None = None,
        context: cm.ContextCounts | None = None,
    ) -> RestoreIndex:
        """Precompute lookups from a vocabulary table (+ adjacency weights, built if absent).

        ``context`` (higher-order counts of the same corpus, :mod:`context_model`) makes the
        search rank orderings by a backed-off N-gram model instead of 3-gram weights alone.
        """
        p = hs.check_p(p)
        if adjacency is None:
            adjacency = adj_mod.build(table, adj_mod.DEFAULT_ALPHA if alpha is None else alpha)
        alpha = adjacency.alpha if alpha is None else alpha
        n_tokens = table.n_tokens
        bits = tuple(hs.bits_of(h, p) for h in table.hashes)
        lookup = tuple(bit_lookup(b, p) for b in bits)
        token_row1 = np.full(n_tokens, -1, dtype=np.int64)
        token_row1[table.grams[0][:, 0]] = np.arange(table.size(1))
        g2, g3 = table.grams[1], table.grams[2]
        codes2 = _codes(g2, n_tokens)
        left2 = np.searchsorted(codes2, _codes(g3[:, :2], n_tokens)).astype(np.int64)
        right2 = np.searchsorted(codes2, _codes(g3[:, 1:], n_tokens)).astype(np.int64)
        inner3 = (g3 >= ng.FIRST_PATCH_ID).all(axis=1)
        f2 = table.counts[1].astype(np.int64)
        weight3, outdeg = _align_weights(table, adjacency, codes2, left2)
        # rows are lexicographic, so (row of (a, b), c) keys are ascending (see _align_weights)
        key3 = (left2 * n_tokens + g3[:, 2]).astype(np.int64)
        return cls(
            p,
            table,
            bits,
            lookup,
            token_row1,
            codes2,
            inner3,
            left2,
            right2,
            weight3,
            f2,
            outdeg,
            key3,
            float(alpha),
            table.escaped_sep,
            TokenBytes.of(table.tokens),
            cm.ContextScorer(context, table.tokens)
            if context is not None and context.max_order
            else None,
        )

    def arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """(arrays, metadata) holding everything a query reads, for :meth:`from_arrays`; the
        context counts themselves are not included (their owner stores them), only each
        token's context piece hash."""
        tok_data, tok_off = _narrow_buffers(self.table.tokens)
        piece_data, piece_off = _narrow_buffers(self.pieces)
        out = {
            "tokens_data": tok_data,
            "tokens_offsets": tok_off,
            "pieces_data": piece_data,
            "pieces_offsets": piece_off,
            "token_row1": self.token_row1,
            "codes2": self.codes2,
            "inner3": self.inner3,
            "left2": self.left2,
            "right2": self.right2,
            "weight3": self.weight3,
            "f2": self.f2,
            "outdeg": self.outdeg,
            "key3": self.key3,
        }
        for n in ng.ORDERS:
            out[f"grams_{n}"] = self.table.grams[n - 1]
            out[f"counts_{n}"] = self.table.counts[n - 1]
            out[f"bits_{n}"] = self.bits[n - 1]
            out[f"indptr_{n}"], out[f"rows_{n}"] = self.lookup[n - 1]
        meta = {"format": INDEX_FORMAT, "p": str(self.p), "alpha": repr(self.alpha)}
        if self.context is not None:
            out["piece_hashes"] = self.context.piece_hashes
            meta["context_order"] = str(self.context.max_order)
        return out, meta

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        metadata: dict[str, str],
        context_counts: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> RestoreIndex:
        """The index over :meth:`arrays` (e.g. read-only memory-mapped views: nothing is copied
        or scanned here, O(1) in the corpus size); ``context_counts`` = (sorted hashes, counts)
        of the context model the index was built with (also mapped)."""
        if metadata.get("format") != INDEX_FORMAT:
            raise ValueError(
                f"restore index: format {metadata.get('format')!r}, want {INDEX_FORMAT}"
            )
        tokens = binary_array(arrays["tokens_data"], arrays["tokens_offsets"])
        table = ng.NgramTable(
            tokens,
            tuple(arrays[f"grams_{n}"] for n in ng.ORDERS),
            tuple(arrays[f"counts_{n}"] for n in ng.ORDERS),
        )
        order = int(metadata.get("context_order", 0))
        scorer = None
        if order and context_counts is not None:
            scorer = cm.ContextScorer.from_arrays(
                order, arrays["piece_hashes"], context_counts[0], context_counts[1]
            )
        return cls(
            int(metadata["p"]),
            table,
            tuple(arrays[f"bits_{n}"] for n in ng.ORDERS),
            tuple((arrays[f"indptr_{n}"], arrays[f"rows_{n}"]) for n in ng.ORDERS),
            arrays["token_row1"],
            arrays["codes2"],
            arrays["inner3"],
            arrays["left2"],
            arrays["right2"],
            arrays["weight3"],
            arrays["f2"],
            arrays["outdeg"],
            arrays["key3"],
            float(metadata["alpha"]),
            binary_array(arrays["pieces_data"], arrays["pieces_offsets"]),
            TokenBytes(arrays["tokens_data"], arrays["tokens_offsets"]),
            scorer,
        )


def _token_map(source: pa.Array, target: pa.Array) -> np.ndarray:
    """Target token id of every source token id (sentinels fixed, -1 when absent)."""
    if source.equals(target):
        return np.arange(len(source), dtype=np.int64)
    idx = (
        pc.fill_null(
            pc.index_in(source.slice(ng.FIRST_PATCH_ID), value_set=target.slice(ng.FIRST_PATCH_ID)),
            -1,
        )
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    return np.concatenate(
        [[ng.START_ID, ng.END_ID], np.where(idx >= 0, idx + ng.FIRST_PATCH_ID, -1)]
    )


def _rows_of_codes(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Position of each code in ``sorted_codes``, -1 when absent."""
    if sorted_codes.size == 0:
        return np.full(codes.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_codes, codes), sorted_codes.size - 1)
    return np.where(sorted_codes[pos] == codes, pos, -1).astype(np.int64)


def _align_weights(
    table: ng.NgramTable, adjacency: adj_mod.Adjacency, codes2: np.ndarray, left2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Adjacency weight of every vocabulary 3-gram row and out-degree of every 2-gram row.

    Matching is by bytes (through the token tables); vocabulary 3-grams the adjacency lacks
    get the unseen-edge weight.
    """
    n_tokens = table.n_tokens
    token_map = _token_map(adjacency.tokens, table.tokens)
    nodes = token_map[adjacency.nodes]
    node_known = (nodes >= 0).all(axis=1)
    node_rows = np.full(nodes.shape[0], -1, dtype=np.int64)
    node_rows[node_known] = _rows_of_codes(codes2, _codes(nodes[node_known], n_tokens))
    outdeg = np.zeros(codes2.size, dtype=np.int64)
    has_row = node_rows >= 0
    outdeg[node_rows[has_row]] = adjacency.outdeg[has_row]
    # a 3-gram is identified by (vocabulary row of (a, b), c); rows are lexicographic, so these
    # keys are already sorted
    g3 = table.grams[2]
    vocab_key = left2 * n_tokens + g3[:, 2]
    src_rows = node_rows[adjacency.edge_sources()]
    last = token_map[adjacency.nodes[adjacency.indices, 1]]
    known = (src_rows >= 0) & (last >= 0)
    weight3 = np.full(g3.shape[0], np.nan)
    pos = _rows_of_codes(vocab_key, src_rows[known] * n_tokens + last[known])
    weight3[pos[pos >= 0]] = adjacency.weights[known][pos >= 0]
    missing = np.isnan(weight3)
    if missing.any():
        weight3[missing] = adj_mod.unseen_weight(
            table.counts[1][left2[missing]], outdeg[left2[missing]], adjacency.alpha
        )
    return weight3, outdeg


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    patches: list[bytes]
    text: str
    score: float
    edge_coverage: float  # fraction of the layer-3 set bits hit by the path's 3-grams
    confidence: float
    n_edges: int  # 3-grams on the path
    roundtrip: bool | None = None


@dataclass(frozen=True)
class RestoreReport:
    p: int
    n_set_bits: tuple[int, int, int]
    n_candidates: tuple[int, int, int]
    n_cover: int
    n_validated_edges: int
    n_synthesized_edges: int
    coverage: float
    latency_ms: float
    beam_width: int
    depth: int
    reason: str | None = None
    max_edge_uses: int = 1
    length: int | None = None
    context_order: int = 0
    # True when no ordering of ``length`` patches was found and the candidates come from the
    # length-free search (their lengths differ from ``length``)
    length_fallback: bool = False
    # the search could start/end at any node without validated in/out-edges (open_ends)
    open_ends: bool = False

    @property
    def n_candidates_total(self) -> int:
        return sum(self.n_candidates)

    def as_dict(self) -> dict:
        return {
            "p": self.p,
            "n_set_bits": list(self.n_set_bits),
            "n_candidates": list(self.n_candidates),
            "n_candidates_total": self.n_candidates_total,
            "n_cover": self.n_cover,
            "n_validated_edges": self.n_validated_edges,
            "n_synthesized_edges": self.n_synthesized_edges,
            "coverage": self.coverage,
            "latency_ms": self.latency_ms,
            "beam_width": self.beam_width,
            "depth": self.depth,
            "max_edge_uses": self.max_edge_uses,
            "length": self.length,
            "context_order": self.context_order,
            "length_fallback": self.length_fallback,
            "open_ends": self.open_ends,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RestoreResult:
    candidates: list[Restored]
    report: RestoreReport
    # validated n-grams as token-id rows, for cover precision/recall
    cover: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False, default=())

    @property
    def ok(self) -> bool:
        return bool(self.candidates)

    @property
    def reason(self) -> str | None:
        return self.report.reason


# ---------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------


def _bit_is_set(words: np.ndarray, bits: np.ndarray) -> np.ndarray:
    if bits.size == 0:
        return np.zeros(0, dtype=bool)
    return ((words[bits >> 5] >> (bits & 31).astype(np.uint32)) & np.uint32(1)).astype(bool)


def _hash_bits(index: RestoreIndex, rows: np.ndarray) -> np.ndarray:
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    data, offsets = ng.key_buffers(index.pieces, rows)
    return hs.bits_of(hs.hash64_buffer(data, offsets, threads=1), index.p)


def _node_row(index: RestoreIndex, rows2: np.ndarray) -> np.ndarray:
    """Vocabulary 2-gram row of each (a, b), -1 if absent."""
    return _rows_of_codes(index.codes2, _codes(rows2, index.n_tokens))


@dataclass(frozen=True)
class Validation:
    """Steps 1–2 of restore: candidates, validated 3-gram edges and the cover."""

    set_bits: list[np.ndarray]  # per layer, ascending
    n_candidates: tuple[int, int, int]
    edges: np.ndarray  # (m, 3) int32 token ids of validated 3-grams
    weights: np.ndarray  # (m,) float64
    edge_bits: np.ndarray  # (m,) int64 layer-3 bit of each edge
    n_synthesized: int
    cover: tuple[np.ndarray, np.ndarray, np.ndarray]  # distinct validated 1/2/3-gram rows
    cover_bits: tuple[np.ndarray, np.ndarray, np.ndarray]  # their bits, per layer

    def coverage(self) -> float:
        """Fraction of the HLLSet's set bits that some validated n-gram explains."""
        total = sum(b.size for b in self.set_bits)
        hit = sum(int(np.isin(self.set_bits[i], self.cover_bits[i]).sum()) for i in range(3))
        return hit / total if total else 0.0


def _sentinel_rows(xs: np.ndarray) -> np.ndarray:
    """(START, x) for every x, then (x, END) for every x."""
    start = np.stack([np.full(xs.size, ng.START_ID, np.int32), xs], axis=1)
    end = np.stack([xs, np.full(xs.size, ng.END_ID, np.int32)], axis=1)
    return np.concatenate([start, end]).astype(np.int32)


def _flags(ids: np.ndarray, n_tokens: int) -> np.ndarray:
    """(n_tokens,) bool, True at ``ids``."""
    out = np.zeros(n_tokens, dtype=bool)
    out[ids] = True
    return out


def _inner_pairs(table: ng.NgramTable, cands2: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Candidate 2-gram rows whose two parts are usable patches (sentinel 2-grams are
    synthesised instead, see :func:`_sentinel_ends`)."""
    g2 = table.grams[1][cands2]
    return cands2[usable[g2[:, 0]] & usable[g2[:, 1]]]


def _inner_triples(
    index: RestoreIndex, cands3: np.ndarray, usable: np.ndarray, valid2: np.ndarray
) -> np.ndarray:
    """Candidate vocabulary 3-gram rows without sentinels (own bit set, by lookup) whose parts
    are usable patches and whose two 2-grams are valid."""
    c3 = cands3[index.inner3[cands3]]
    g3 = index.table.grams[2][c3]
    keep = usable[g3[:, 0]] & usable[g3[:, 1]] & usable[g3[:, 2]]
    keep &= valid2[index.left2[c3]] & valid2[index.right2[c3]]
    return c3[keep]


def _sentinel_ends(
    hll: hs.HLLSet, index: RestoreIndex, patch_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, bits) of the sentinel 2-grams (START, x) / (x, END) of the usable patches, and
    which token may open (START, x) / close (x, END) a sequence: its 2-gram's layer-2 bit is set."""
    sentinel2 = _sentinel_rows(patch_ids)
    sentinel2_bits = _hash_bits(index, sentinel2)
    sentinel2_set = _bit_is_set(hll.words[1], sentinel2_bits)
    n_x = patch_ids.size
    start_ok = _flags(patch_ids[sentinel2_set[:n_x]], index.n_tokens)
    end_ok = _flags(patch_ids[sentinel2_set[n_x:]], index.n_tokens)
    return sentinel2, sentinel2_bits, start_ok, end_ok


def _sentinel_triples(
    pairs: np.ndarray, patch_ids: np.ndarray, start_ok: np.ndarray, end_ok: np.ndarray
) -> np.ndarray:
    """(m, 3) int32 sentinel 3-grams (START,x,y), (x,y,END), (START,x,END) that the usable
    pairs and the opening/closing tokens allow."""
    opens = pairs[start_ok[pairs[:, 0]]]
    closes = pairs[end_ok[pairs[:, 1]]]
    alone = patch_ids[start_ok[patch_ids] & end_ok[patch_ids]]
    return np.concatenate(
        [
            np.concatenate([np.full((opens.shape[0], 1), ng.START_ID, np.int32), opens], axis=1),
            np.concatenate([closes, np.full((closes.shape[0], 1), ng.END_ID, np.int32)], axis=1),
            np.stack(
                [
                    np.full(alone.size, ng.START_ID, np.int32),
                    alone,
                    np.full(alone.size, ng.END_ID, np.int32),
                ],
                axis=1,
            ),
        ]
    ).astype(np.int32)


def _rows_with_set_bits(
    index: RestoreIndex, words: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, bits): the token-id rows whose hashed key's bit is set in layer ``words``."""
    bits = _hash_bits(index, rows)
    is_set = _bit_is_set(words, bits)
    return rows[is_set], bits[is_set]


def validate(hll: hs.HLLSet, index: RestoreIndex) -> Validation:
    """Candidates per set bit, cross-validated 3-grams (vocabulary + synthesised sentinels)."""
    table = index.table
    set_bits = [hll.set_bits(layer) for layer in range(3)]
    cands = [rows_for_bits(*index.lookup[layer], set_bits[layer]) for layer in range(3)]
    n_cands = tuple(int(c.size) for c in cands)
    patch_ids = np.unique(table.grams[0][cands[0], 0]).astype(np.int32)  # usable patches
    usable = _flags(patch_ids, index.n_tokens)
    inner2 = _inner_pairs(table, cands[1], usable)
    inner3 = _inner_triples(index, cands[2], usable, _flags(inner2, table.size(2)))
    sentinel2, sentinel2_bits, start_ok, end_ok = _sentinel_ends(hll, index, patch_ids)
    syn, syn_bits = _rows_with_set_bits(
        index, hll.words[2], _sentinel_triples(table.grams[1][inner2], patch_ids, start_ok, end_ok)
    )
    syn_weights = np.array([_sentinel_weight(index, row) for row in syn.tolist()], dtype=np.float64)
    edges = np.concatenate([table.grams[2][inner3], syn]).astype(np.int32)
    weights = np.concatenate([index.weight3[inner3], syn_weights])
    edge_bits = np.concatenate([index.bits[2][inner3], syn_bits]).astype(np.int64)
    # cover: the distinct 1/2/3-grams inside validated edges, with their (known) bits
    cover, cover_bits = _cover(index, edges, edge_bits, sentinel2, sentinel2_bits)
    return Validation(
        set_bits, n_cands, edges, weights, edge_bits, int(syn.shape[0]), cover, cover_bits
    )


def _sentinel_weight(index: RestoreIndex, row: list[int]) -> float:
    src = int(_node_row(index, np.array([row[:2]], dtype=np.int32))[0])
    if src >= 0:
        vocab_row = int(_rows_of_codes(index.key3, np.array([src * index.n_tokens + row[2]]))[0])
        if vocab_row >= 0:
            return float(index.weight3[vocab_row])
    f2 = index.f2[src] if src >= 0 else 0
    outdeg = index.outdeg[src] if src >= 0 else 0
    return float(adj_mod.unseen_weight(f2, outdeg, index.alpha))


def _cover(index, edges, edge_bits, sentinel2, sentinel2_bits):
    n_tokens = index.n_tokens
    if edges.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return (np.zeros((0, 1), np.int32), np.zeros((0, 2), np.int32), edges), (empty,) * 3
    ones = np.unique(edges[edges >= ng.FIRST_PATCH_ID]).astype(np.int32)
    ones_bits = index.bits[0][index.token_row1[ones]]
    two_codes = np.unique(
        np.concatenate([_codes(edges[:, :2], n_tokens), _codes(edges[:, 1:], n_tokens)])
    )
    twos = np.stack([two_codes // n_tokens, two_codes % n_tokens], axis=1).astype(np.int32)
    rows = _rows_of_codes(index.codes2, two_codes)
    inner = (twos >= ng.FIRST_PATCH_ID).all(axis=1)
    twos_bits = np.zeros(two_codes.size, dtype=np.int64)
    twos_bits[inner] = index.bits[1][rows[inner]]
    sent_codes = _codes(sentinel2, n_tokens)
    order = np.argsort(sent_codes)
    pos = np.searchsorted(sent_codes[order], two_codes[~inner])
    twos_bits[~inner] = sentinel2_bits[order[pos]]
    threes, three_idx = np.unique(_codes(edges, n_tokens), return_index=True)
    del threes
    return (
        (ones.reshape(-1, 1), twos, edges[three_idx]),
        (ones_bits, twos_bits, edge_bits[three_idx]),
    )


def _line_graph(
    edges: np.ndarray, n_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nodes (2-grams) of 3-gram edges ``(a, b, c)``: source and target node of every edge, and
    the (left, right) token ids of every node; nodes numbered in ascending code order."""
    n_edges = edges.shape[0]
    src_codes = edges[:, 0].astype(np.int64) * n_tokens + edges[:, 1]
    dst_codes = edges[:, 1].astype(np.int64) * n_tokens + edges[:, 2]
    node_codes, inverse = np.unique(np.concatenate([src_codes, dst_codes]), return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[:n_edges], inverse[n_edges:], node_codes // n_tokens, node_codes % n_tokens


def _edge_step(
    context: cm.ContextScorer | None, history: tuple[int, ...], token: int, weight: float
) -> tuple[float, tuple[int, ...]]:
    """Score of appending ``token`` over an edge of adjacency ``weight``, and the new history."""
    if context is None:
        return weight, history
    score = context.step(history, token, weight)
    return score, (history + (token,))[-context.history :]


def path_score(
    edges: np.ndarray,
    weights: np.ndarray,
    path: Sequence[int],
    context: cm.ContextScorer | None = None,
) -> float:
    """Score of an edge path as :func:`beam_search` accumulates it (sum of edge steps)."""
    if not path:
        return 0.0
    history = tuple(int(x) for x in edges[path[0], :2]) if context is not None else ()
    total = 0.0
    for e in path:
        step, history = _edge_step(context, history, int(edges[e, 2]), float(weights[e]))
        total += step
    return total


def _terminals(
    src: np.ndarray, dst: np.ndarray, left: np.ndarray, right: np.ndarray, open_ends: bool
) -> tuple[list[int], np.ndarray]:
    """(start nodes, end-node mask): the ``(_START_, x)`` / ``(y, _END_)`` nodes, and with
    ``open_ends`` also every node of a *source* / *sink* strongly connected component of the
    graph (no edge enters / leaves the component): the span's first validated 2-gram lies in
    a source component (a node without in-edges, or a cycle when the span repeats its first
    patches), its last in a sink component."""
    is_start = left == ng.START_ID
    is_end = right == ng.END_ID
    if open_ends and src.size:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n_nodes = left.size
        graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(n_nodes, n_nodes))
        _, comp = connected_components(graph, directed=True, connection="strong")
        between = comp[src] != comp[dst]
        entered = np.zeros(comp.max() + 1, dtype=bool)
        left_comp = np.zeros(comp.max() + 1, dtype=bool)
        entered[comp[dst[between]]] = True
        left_comp[comp[src[between]]] = True
        is_start = is_start | (~entered[comp] & ~is_end)
        is_end = is_end | ~left_comp[comp]
    return np.flatnonzero(is_start).tolist(), is_end


def beam_search(
    edges: np.ndarray,
    weights: np.ndarray,
    n_tokens: int,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    max_edge_uses: int = 1,
    *,
    length: int | None = None,
    context: cm.ContextScorer | None = None,
    open_ends: bool = False,
) -> tuple[list[tuple[float, int, list[int]]], int]:
    """Complete START→END paths as (score, distinct edges used, edge ids in order), and depth.

    ``open_ends``: paths may also start at a node without in-edges and end at a node without
    out-edges (and, at ``length``, anywhere) — for spans cut out of an article.

    ``max_edge_uses = 1`` is the trail search of the specification (each edge at most once).
    A larger value lets a path re-use an edge that often — an HLLSet records which 3-grams
    occur, not how often, so a span whose 3-grams repeat ("a b c a b c") has no covering trail.
    ``length`` (patches of the span, when known — ``article_hllsets.patch_count``) keeps only
    paths of exactly that many patches; it bounds the depth by itself, so with a length
    ``max_edge_uses = 0`` means "no limit".  Without a length the depth limit is
    ``|E3| * max_edge_uses + 1``.

    A step scores the edge's adjacency weight, or with ``context`` the backed-off N-gram
    log-probability of the new patch given the path so far.  Live states with the same (node,
    used edges, recent history) are merged (best score kept) and the ``beam_width`` best by
    score survive each step (all live states have the same number of steps); ties break on
    node id, then used edges, so the search is deterministic.
    """
    if max_edge_uses < 0 or (max_edge_uses == 0 and length is None):
        raise ValueError(
            f"max_edge_uses must be >= 1 (or 0 = unlimited with a length), got {max_edge_uses}"
        )
    if length is not None and length < 1:
        raise ValueError(f"length must be >= 1 patch, got {length}")
    n_edges = edges.shape[0]
    if n_edges == 0:
        return [], 0
    src, dst, left, right = _line_graph(edges, n_tokens)
    start_nodes, end_mask = _terminals(src, dst, left, right, open_ends)
    is_end = end_mask.tolist()
    # out-edges per node: best weight first, then target node, then edge id (deterministic)
    order = np.lexsort((np.arange(n_edges), dst, -weights, src))
    last_token = edges[:, 2].tolist()
    out: list[list[tuple[int, int, float, int]]] = [[] for _ in range(left.size)]
    for e in order.tolist():
        out[int(src[e])].append((e, int(dst[e]), float(weights[e]), last_token[e]))
    starts = start_nodes
    unlimited = max_edge_uses == 0
    levels = 1 if unlimited else max_edge_uses
    top = levels - 1
    # state: (score, distinct, node, masks, history, trail_id); masks[u] = edges used more than
    # u times (unlimited: one mask of edges used at all); trails: (parent_trail_id, edge)
    trails: list[tuple[int, int]] = []
    live = []
    for s in starts:
        history = (int(left[s]), int(right[s])) if context is not None else ()
        live.append((0.0, 0, s, (0,) * levels, history, -1))
    done: list[tuple[float, int, int]] = []  # (score, distinct edges, trail_id)
    depth = 0
    limit = length if length is not None else n_edges * levels + 1
    while live and depth < limit:
        depth += 1
        at_length = length is not None and depth == length
        best: dict[tuple, tuple] = {}
        for score, distinct, node, masks, history, trail in live:
            extended = False
            for e, target, w, token in out[node]:
                if at_length and not (is_end[target] or open_ends):
                    continue
                bit = 1 << e
                if unlimited:
                    level = 1 if masks[0] & bit else 0
                    new_masks = (masks[0] | bit,)
                else:
                    if masks[top] & bit:
                        continue
                    level = 0
                    while masks[level] & bit:
                        level += 1
                    new_masks = masks[:level] + (masks[level] | bit,) + masks[level + 1 :]
                new_distinct = distinct + (level == 0)
                step, new_history = _edge_step(context, history, token, w)
                trails.append((trail, e))
                tid = len(trails) - 1
                new_score = score + step
                extended = True
                if is_end[target] and not (open_ends and out[target] and not at_length):
                    if length is None or at_length:
                        done.append((new_score, new_distinct, tid))
                    continue
                if open_ends and at_length:
                    done.append((new_score, new_distinct, tid))
                    continue
                key = (target, new_masks, new_history)
                prev = best.get(key)
                if prev is None or new_score > prev[0]:
                    best[key] = (new_score, new_distinct, target, new_masks, new_history, tid)
            if open_ends and not extended and trail >= 0 and length is None:
                # a span may end anywhere: a path that cannot go on is complete
                done.append((score, distinct, trail))
        live = sorted(best.values(), key=lambda s: (-s[0], s[2], s[3], s[4]))[:beam_width]
    results = []
    for score, distinct, tid in done:
        path = []
        while tid >= 0:
            tid, e = trails[tid]
            path.append(e)
        path.reverse()
        results.append((score, distinct, path))
    return results, depth


def covering_walks(
    edges: np.ndarray,
    weights: np.ndarray,
    n_tokens: int,
    max_ends: int = 4,
    open_ends: bool = False,
) -> list[tuple[float, int, list[int]]]:
    """START→END walks that use every validated edge on a START→END route at least once.

    An HLLSet keeps which 3-grams occur, not how often, so the true ordering of a repetitive
    span re-uses edges and no trail (each edge once) covers its set.  For each pair of a
    ``(START, x)`` and a ``(y, END)`` node (at most ``max_ends`` of each, in node order) this
    keeps the edges on some route between them, duplicates edges along shortest paths from
    nodes with more in- than out-edges to nodes with more out- than in-edges until the
    multigraph is balanced (a greedy route inspection), and walks it with Hierholzer's
    algorithm, taking a node's out-edges best weight first.  Returns (score, distinct edges,
    edge ids in order) like :func:`beam_search`; pairs that cannot be balanced give no walk.
    """
    n_edges = edges.shape[0]
    if n_edges == 0:
        return []
    src_nodes, dst_nodes, left_ids, right_ids = _line_graph(edges, n_tokens)
    src, dst = src_nodes.tolist(), dst_nodes.tolist()
    n_nodes = left_ids.size
    order = np.lexsort((np.arange(n_edges), -weights, np.asarray(src))).tolist()
    out: list[list[int]] = [[] for _ in range(n_nodes)]
    into: list[list[int]] = [[] for _ in range(n_nodes)]
    for e in order:
        out[src[e]].append(e)
        into[dst[e]].append(e)
    start_nodes, end_mask = _terminals(src_nodes, dst_nodes, left_ids, right_ids, open_ends)
    starts = start_nodes[:max_ends]
    ends = np.flatnonzero(end_mask).tolist()[:max_ends]

    def reach(root: int, adjacency: list[list[int]], step: list[int]) -> list[bool]:
        seen = [False] * n_nodes
        seen[root] = True
        todo = [root]
        while todo:
            v = todo.pop()
            for e in adjacency[v]:
                w = step[e]
                if not seen[w]:
                    seen[w] = True
                    todo.append(w)
        return seen

    walks = []
    for s_node in starts:
        forward = reach(s_node, out, dst)
        for t_node in ends:
            backward = reach(t_node, into, src)
            keep = [forward[src[e]] and backward[dst[e]] for e in range(n_edges)]
            mult = [1 if k else 0 for k in keep]
            walk = _balanced_walk(s_node, t_node, out, src, dst, keep, mult, n_nodes)
            if walk is not None:
                score = float(sum(weights[e] for e in walk))
                walks.append((score, len(set(walk)), walk))
    return walks


def _balanced_walk(s_node, t_node, out, src, dst, keep, mult, n_nodes):
    """Route inspection (greedy) + Hierholzer on the kept edges; None if it cannot close."""
    from collections import deque

    balance = [0] * n_nodes  # out - in over the multigraph
    for e, m in enumerate(mult):
        if m:
            balance[src[e]] += m
            balance[dst[e]] -= m
    balance[s_node] -= 1  # a trail from s to t: s has one more out, t one more in
    balance[t_node] += 1
    # nodes with balance < 0 need extra out-edges: add a shortest path to a node with
    # balance > 0 (one more in-edge needed there); BFS over kept edges in weight order
    for v in range(n_nodes):
        while balance[v] < 0:
            parent = {v: None}
            queue = deque([v])
            found = None
            while queue and found is None:
                x = queue.popleft()
                for e in out[x]:
                    if not keep[e]:
                        continue
                    y = dst[e]
                    if y in parent:
                        continue
                    parent[y] = e
                    if balance[y] > 0:
                        found = y
                        break
                    queue.append(y)
            if found is None:
                return None
            y = found
            while parent[y] is not None:
                e = parent[y]
                mult[e] += 1
                y = src[e]
            balance[v] += 1
            balance[found] -= 1
    if any(balance):
        return None
    # Hierholzer: iterative, out-edges in weight order, each edge ``mult`` times
    remaining = list(mult)
    pointer = [0] * n_nodes
    stack: list[tuple[int, int]] = [(s_node, -1)]
    circuit: list[int] = []
    while stack:
        v, via = stack[-1]
        edges_v = out[v]
        while pointer[v] < len(edges_v) and remaining[edges_v[pointer[v]]] == 0:
            pointer[v] += 1
        if pointer[v] < len(edges_v):
            e = edges_v[pointer[v]]
            remaining[e] -= 1
            stack.append((dst[e], e))
        else:
            stack.pop()
            if via >= 0:
                circuit.append(via)
    circuit.reverse()
    if any(remaining) or not circuit or dst[circuit[-1]] != t_node:
        return None
    return circuit


def _patches_of_path(
    edges: np.ndarray, path: Sequence[int], token_bytes: Sequence[bytes]
) -> list[bytes]:
    # the first node's two tokens (a _START_ sentinel is dropped), then each edge's last one
    ids = [int(edges[path[0], 0]), int(edges[path[0], 1])] + [int(edges[e, 2]) for e in path]
    return [token_bytes[i] for i in ids if i >= ng.FIRST_PATCH_ID]


def _edge_use_limit(max_edge_uses: int | None, length: int | None) -> int:
    """``max_edge_uses`` as given, else 1 (trails) without a length and 0 (no limit) with one."""
    if max_edge_uses is not None:
        return max_edge_uses
    return 1 if length is None else 0


def _check_request(
    hll: hs.HLLSet, index: RestoreIndex, k: int, beam_width: int, length: int | None
) -> None:
    """Raise ValueError for a request restore cannot serve (P mismatch, k/beam/length < 1)."""
    if hll.p != index.p:
        raise ValueError(f"HLLSet has P={hll.p} but the restore index was built for P={index.p}")
    if k < 1 or beam_width < 1:
        raise ValueError(f"k and beam_width must be >= 1, got k={k}, beam_width={beam_width}")
    if length is not None and (not isinstance(length, int | np.integer) or length < 1):
        raise ValueError(f"length (patches in the span) must be an int >= 1, got {length!r}")


@dataclass(frozen=True)
class _Request:
    """What a restore was asked (and when it started): the fixed part of its report."""

    p: int
    n_set_bits: tuple[int, int, int]
    beam_width: int
    max_edge_uses: int
    length: int | None
    context_order: int
    t0: float
    open_ends: bool = False

    def result(
        self,
        candidates: list[Restored],
        v: Validation | None = None,
        depth: int = 0,
        reason: str | None = None,
        length_fallback: bool = False,
    ) -> RestoreResult:
        """The result with its report; ``v`` None = stopped before validation."""
        report = RestoreReport(
            p=self.p,
            n_set_bits=self.n_set_bits,
            n_candidates=(0, 0, 0) if v is None else v.n_candidates,
            n_cover=0 if v is None else sum(int(c.shape[0]) for c in v.cover),
            n_validated_edges=0 if v is None else int(v.edges.shape[0]),
            n_synthesized_edges=0 if v is None else v.n_synthesized,
            coverage=0.0 if v is None else v.coverage(),
            latency_ms=(time.perf_counter() - self.t0) * 1e3,
            beam_width=self.beam_width,
            depth=depth,
            reason=reason,
            max_edge_uses=self.max_edge_uses,
            length=self.length,
            context_order=self.context_order,
            length_fallback=length_fallback,
            open_ends=self.open_ends,
        )
        return RestoreResult(candidates, report, () if v is None else v.cover)


def _unrestorable(v: Validation) -> str | None:
    """Why validation left nothing to search (no usable patch, no 3-gram edge), else None."""
    if v.n_candidates[0] == 0:
        return (
            "no vocabulary patch hashes to a set bit of the 1-gram layer "
            "(the HLLSet's patches are unknown to this vocabulary, or P differs)"
        )
    if v.edges.shape[0] == 0:
        return (
            "no 3-gram candidate passed cross-validation "
            "(a 3-gram needs its own bit, its 1-grams and both 2-grams set)"
        )
    return None


def _walk_paths(
    v: Validation, n_tokens: int, context: cm.ContextScorer | None, open_ends: bool = False
) -> list[tuple[float, int, list[int]]]:
    """The covering walks of the validated edges, scored as the beam search scores a path."""
    return [
        (path_score(v.edges, v.weights, walk, context), distinct, walk)
        for _, distinct, walk in covering_walks(v.edges, v.weights, n_tokens, open_ends=open_ends)
    ]


def _paths_of_length(
    v: Validation,
    n_tokens: int,
    beam_width: int,
    max_edge_uses: int,
    length: int | None,
    context: cm.ContextScorer | None,
    walks: list[tuple[float, int, list[int]]],
    open_ends: bool = False,
) -> tuple[list[tuple[float, int, list[int]]], int]:
    """Beam-search paths, then the walks of that length (all walks without a length); depth."""
    found, depth = beam_search(
        v.edges,
        v.weights,
        n_tokens,
        beam_width,
        max_edge_uses,
        length=length,
        context=context,
        open_ends=open_ends,
    )
    found += [w for w in walks if length is None or len(w[2]) == length]
    return found, depth


def _search(
    v: Validation,
    n_tokens: int,
    beam_width: int,
    max_edge_uses: int,
    length: int | None,
    context: cm.ContextScorer | None,
    covering_walk: bool,
    open_ends: bool = False,
) -> tuple[list[tuple[float, int, list[int]]], int, bool]:
    """(paths, depth, length_fallback): the search at ``length``; when that finds nothing (long
    spans can lose it from the beam), the length-free search (trails + covering walks)."""
    walks = _walk_paths(v, n_tokens, context, open_ends) if covering_walk else []
    paths, depth = _paths_of_length(
        v, n_tokens, beam_width, max_edge_uses, length, context, walks, open_ends
    )
    if paths or length is None:
        return paths, depth, False
    paths, depth = _paths_of_length(v, n_tokens, beam_width, 1, None, context, walks, open_ends)
    return paths, depth, True


def _rank(
    paths: list[tuple[float, int, list[int]]], v: Validation, token_bytes: Sequence[bytes]
) -> list[tuple[float, float, list[bytes], int]]:
    """(3-gram bit coverage, score, patches, edges) per path, best first: coverage, score, bytes."""
    n_bits3 = max(v.set_bits[2].size, 1)
    ranked = []
    for score, _, path in paths:
        bit_cover = np.unique(v.edge_bits[path]).size / n_bits3
        patches = _patches_of_path(v.edges, path, token_bytes)
        ranked.append((bit_cover, score, patches, len(path)))
    ranked.sort(key=lambda r: (-r[0], -r[1], r[2]))
    return ranked


def _distinct_top(
    ranked: list[tuple[float, float, list[bytes], int]], k: int
) -> list[tuple[float, float, list[bytes], int]]:
    """The first ``k`` ranked entries with distinct patch sequences."""
    top = []
    seen = set()
    for item in ranked:
        key = tuple(item[2])
        if key not in seen:
            seen.add(key)
            top.append(item)
            if len(top) == k:
                break
    return top


def _candidates(
    top: list[tuple[float, float, list[bytes], int]], hll: hs.HLLSet, p: int, verify: bool
) -> list[Restored]:
    """Restored orderings with ``confidence = coverage × softmax(score)`` over ``top``; with
    ``verify`` each is re-ingested and compared with ``hll`` bit for bit."""
    best = max(item[1] for item in top)
    probs = np.array([math.exp(item[1] - best) for item in top])
    probs /= probs.sum()
    return [
        Restored(
            patches=patches,
            text=b"".join(patches).decode("utf-8", errors="replace"),
            score=float(score),
            edge_coverage=float(cov),
            confidence=float(cov * prob),
            n_edges=n_used,
            roundtrip=(ng.hllset_of_patches(patches, p) == hll) if verify else None,
        )
        for (cov, score, patches, n_used), prob in zip(top, probs, strict=True)
    ]


def restore(
    hll: hs.HLLSet,
    index: RestoreIndex,
    *,
    k: int = DEFAULT_K,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    verify: bool = False,
    max_edge_uses: int | None = None,
    covering_walk: bool = True,
    length: int | None = None,
    use_context: bool = True,
    open_ends: bool = False,
) -> RestoreResult:
    """Up to ``k`` patch orderings whose n-grams explain ``hll`` (see module docstring).

    ``length`` is the span's number of patches when known (``article_hllsets.patch_count``,
    or the patch count of text being restored): only orderings of exactly that length are
    returned, and edges may then repeat (an HLLSet cannot say how often a 3-gram occurs; the
    length bounds the search instead).  ``max_edge_uses`` defaults to 1 (trails, as specified)
    without a length and to 0 (no limit) with one.  ``use_context`` (default on) scores
    orderings with the index's higher-order context counts when it has them.
    ``covering_walk`` (default on) adds the route-inspection candidates.
    ``open_ends`` lets orderings start and end inside the span (not only at ``_START_`` /
    ``_END_``): for a span that is not known to be a whole article; the search is then
    length-free (``length`` is only reported).
    ``verify=True`` re-ingests every returned ordering and records whether it reproduces the
    HLLSet bit-for-bit (``Restored.roundtrip``).
    """
    t0 = time.perf_counter()
    _check_request(hll, index, k, beam_width, length)
    # open ends: the span's first and last patches are usually not restorable (cut by the
    # copy), so its patch count overstates the restorable interior: the search is length-free
    # (a trail; a path forced to the full count loops back through repeated 2-grams)
    search_length = None if open_ends else length
    max_edge_uses = _edge_use_limit(max_edge_uses, search_length)
    context = index.context if use_context else None
    request = _Request(
        p=index.p,
        n_set_bits=tuple(int(x) for x in hll.n_set_bits()),
        beam_width=beam_width,
        max_edge_uses=max_edge_uses,
        length=length,
        context_order=context.max_order if context is not None else 0,
        t0=t0,
        open_ends=open_ends,
    )
    if sum(request.n_set_bits) == 0:
        return request.result([], reason="the HLLSet is empty (no bit set in any layer)")
    v = validate(hll, index)
    reason = _unrestorable(v)
    if reason is not None:
        return request.result([], v, reason=reason)
    paths, depth, fallback = _search(
        v,
        index.n_tokens,
        beam_width,
        max_edge_uses,
        search_length,
        context,
        covering_walk,
        open_ends,
    )
    if not paths:
        reason = (
            "no path through the validated 3-gram edges"
            if open_ends
            else "no _START_ -> _END_ path through the validated 3-gram edges (for a span "
            "that does not start and end at an article boundary, use open ends: "
            "restore(open_ends=True), `sphere restore --open-ends`)"
        )
        return request.result([], v, depth, reason, fallback)
    top = _distinct_top(_rank(paths, v, index.token_bytes), k)
    return request.result(_candidates(top, hll, index.p, verify), v, depth, None, fallback)
