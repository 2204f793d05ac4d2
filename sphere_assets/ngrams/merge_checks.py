"""The streamed checks of adjacency_merged (``adjacency_merged_equals_whole``): the merged
graph against ngram_vocabulary and the merged context counts against the shards, with a batch
(or one shard) in memory, never the corpus; what needs keys or patches is checked on seeded
samples whose sizes the check's metadata reports."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.lib.sketch import context_model as cm
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import sorted_merge as sm
from sphere_assets.ngrams import io
from sphere_assets.ngrams import merge_io as mio
from sphere_assets.ngrams.contract import (
    ADJACENCY,
    ADJACENCY_MERGED,
    CONTEXT_STEM,
    NGRAM_VOCABULARY,
)
from sphere_assets.patching.contract import BLT_PATCHES
from sphere_resources.store import Warehouse

SAMPLE_EDGES = 256  # edges whose 3-gram key is checked against their two nodes' keys
SAMPLE_ARTICLES = 4  # per shard: articles whose context windows are counted again
SAMPLE_SEED = 19  # mmh3 seed of both samples (deterministic)


def vocabulary_layer(store: Warehouse, order: int, columns: list[str]) -> Iterator[pa.Table]:
    """ngram_vocabulary's rows of one order, streamed (``columns`` besides ``n``)."""
    for table in mio.iter_rows(store, NGRAM_VOCABULARY, None, ["n", *columns]):
        yield table.filter(pc.equal(table.column("n"), order)).select(columns)


def sample_edges(n_edges: int) -> np.ndarray:
    """Up to SAMPLE_EDGES edge positions, spread evenly and shifted by a seeded offset."""
    if n_edges == 0:
        return np.zeros(0, np.int64)
    count = min(n_edges, SAMPLE_EDGES)
    offset = mmh3.hash(str(n_edges), SAMPLE_SEED, signed=False) % max(n_edges // count, 1)
    return (offset + np.arange(count, dtype=np.int64) * (n_edges // count)).astype(np.int64)


def graph_problems(store: Warehouse) -> tuple[list[str], dict]:
    """The merged graph against ngram_vocabulary, streamed: node table rows == the 2-gram rows
    (key, hash, F2) in order, CSR counts == the 3-gram counts in order, the CSR laws on the
    arrays, and (sampled) every edge's 3-gram key == its source key + its target's last part."""
    arrays, meta = mio.read_csr(store, ADJACENCY_MERGED, None)
    indptr, indices = arrays["indptr"], arrays["indices"]
    n_nodes, n_edges = indptr.size - 1, indices.size
    edges = sample_edges(n_edges)
    src = np.searchsorted(indptr, edges, side="right") - 1
    wanted = {int(i) for i in np.concatenate([src, indices[edges]])}
    node_keys: dict[int, bytes] = {}
    f2 = np.zeros(max(n_nodes, 0), np.int64)
    problems, row = [], 0
    nodes = mio.iter_rows(
        store, ADJACENCY_MERGED, None, ["node_id", "key", "hash", "count", "outdeg"]
    )
    grams = vocabulary_layer(store, 2, ["key", "hash", "count"])
    batch = mio.MERGE_BATCH_ROWS
    for got, want in itertools.zip_longest(sm.rechunk(nodes, batch), sm.rechunk(grams, batch)):
        if got is None or want is None or got.num_rows != want.num_rows or row >= n_nodes + 1:
            problems.append("node table and ngram_vocabulary's 2-grams differ in length")
            break
        ids = np.arange(row, row + got.num_rows)
        if not np.array_equal(got.column("node_id").to_numpy(), ids):
            problems.append(f"node table: node_id is not the row number near row {row}")
        for field in ("key", "hash", "count"):
            if not got.column(field).equals(want.column(field)):
                problems.append(
                    f"node table: field {field} differs from the 2-gram rows near row {row}"
                )
        stop = min(row + got.num_rows, n_nodes)
        f2[row:stop] = got.column("count").to_numpy()[: stop - row]
        if not np.array_equal(
            got.column("outdeg").to_numpy()[: stop - row], np.diff(indptr[row : stop + 1])
        ):
            problems.append(f"node table: outdeg differs from the CSR near row {row}")
        for i in wanted.intersection(range(row, stop)):
            node_keys[i] = got.column("key")[i - row].as_py()
        row += got.num_rows
    if row != n_nodes:
        problems.append(f"node table has {row} rows for {n_nodes} CSR nodes")
    position, edge_keys = 0, {}
    picked = set(edges.tolist())
    for want in vocabulary_layer(store, 3, ["key", "count"]):
        stop = position + want.num_rows
        if stop > n_edges or not np.array_equal(
            arrays["counts"][position:stop], want.column("count").to_numpy()
        ):
            problems.append(f"CSR counts differ from the 3-gram counts near edge {position}")
            break
        for e in picked.intersection(range(position, stop)):
            edge_keys[e] = want.column("key")[e - position].as_py()
        position = stop
    if not problems and position != n_edges:
        problems.append(f"{n_edges} CSR edges for {position} 3-grams")
    if not problems:
        problems += adj.csr_array_problems(
            indptr, indices, arrays["counts"], arrays["weights"], f2, float(meta["alpha"])
        )
        for e, s in zip(edges.tolist(), src.tolist(), strict=True):
            left, right = node_keys[s], node_keys[int(indices[e])]
            if left.split(ng.SEP)[1] != right.split(ng.SEP)[0] or edge_keys.get(e) != (
                left + ng.SEP + right.split(ng.SEP)[1]
            ):
                problems.append(f"edge {e}: its 3-gram is not (source node, target's last part)")
                break
    return problems, {"nodes": n_nodes, "edges": n_edges, "sampled_edges": int(edges.size)}


def sample_articles(article_ids: pa.Array) -> list[str]:
    """SAMPLE_ARTICLES article ids of a shard: the smallest by mmh3(id, SAMPLE_SEED)."""
    ids = article_ids.to_pylist()
    return sorted(ids, key=lambda a: (mmh3.hash(a, SAMPLE_SEED, signed=False), a))[:SAMPLE_ARTICLES]


def context_problems(store: Warehouse, shards: list[str]) -> tuple[list[str], dict]:
    """The merged context counts against the shards, one shard in memory at a time: every
    shard entry is in the merge and the merge's counts are the shards' sums (exact); per
    shard, its window total equals blt_patches' article lengths', and the windows of
    SAMPLE_ARTICLES sampled articles, counted again from their patches, are all in it."""
    merged = io.load_context(store, ADJACENCY_MERGED, None)
    if merged is None:
        return ["adjacency_merged has no context.safetensors"], {}
    acc = np.zeros(merged.size, np.int64)
    problems, sampled = [], 0
    for key in shards:
        part = io.load_context(store, ADJACENCY, key)
        where = f"adjacency shard {key}: field {CONTEXT_STEM}"
        if part is None:
            problems.append(f"{where}: missing")
            continue
        pos = np.searchsorted(merged.hashes, part.hashes)
        found = pos < merged.size
        found[found] = merged.hashes[pos[found]] == part.hashes[found]
        if not found.all():
            problems.append(f"{where}.hashes: {int((~found).sum())} entries missing from the merge")
        acc[pos[found]] += part.counts[found]
        if not store.exists(BLT_PATCHES.name, key):
            continue
        ids, lengths = mio.article_lengths(store, key)
        expected = cm.window_total(lengths, part.max_order)
        if int(part.counts.sum()) != expected:
            problems.append(
                f"{where}.counts: {int(part.counts.sum())} windows, blt_patches' {len(ids)} "
                f"articles have {expected}"
            )
        chosen = sample_articles(ids)
        patches = mio.article_patches(store, key, chosen)
        seqs = [patches[a] for a in chosen]
        recount = cm.count_patch_contexts(
            [p for s in seqs for p in s],
            ng.sequence_offsets([len(s) for s in seqs]),
            part.max_order,
        )
        sampled += len(chosen)
        at = np.searchsorted(part.hashes, recount.hashes)
        ok = at < part.size
        ok[ok] = (part.hashes[at[ok]] == recount.hashes[ok]) & (
            part.counts[at[ok]] >= recount.counts[ok]
        )
        if not ok.all():
            problems.append(
                f"{where}.hashes: {int((~ok).sum())} windows of sampled articles "
                f"{chosen} are missing or under-counted"
            )
    if not np.array_equal(acc, merged.counts):
        problems.append("adjacency_merged context counts are not the sums over the shards")
    return problems, {"context_entries": merged.size, "sampled_articles": sampled}
