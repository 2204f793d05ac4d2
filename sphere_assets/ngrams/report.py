"""Metadata of the ngrams family for the Dagster UI: run summaries, previews, check results."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.metadata import preview_markdown
from sphere_assets.lib.sketch import adjacency as adj
from sphere_assets.ngrams.io import HLLSET_PREVIEW_COLUMNS, HllsetsWritten


def problem_counts(problems: list[str]) -> dict:
    """``problems`` (how many) and ``first_problems`` (the first five, or "-") of a check."""
    return {"problems": len(problems), "first_problems": "; ".join(problems[:5]) or "-"}


# ---------------------------------------------------------------------------------------------
# ngram_index
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexedShard:
    """What indexing one shard produced (``seconds``: indexing + hashing, without the read)."""

    shard: str
    articles: int
    patches: int
    occurrences: int
    distinct: list[int]  # distinct 1-, 2-, 3-grams
    rows: int
    seconds: float
    preview: pa.Table


def ngram_index_log(keys: list[str], shards: list[IndexedShard]) -> str:
    occurrences = sum(s.occurrences for s in shards)
    seconds = sum(s.seconds for s in shards)
    rows = sum(s.rows for s in shards)
    return (
        f"ngram_index shards {keys}: {occurrences:,} occurrences -> {rows:,} rows in "
        f"{seconds:.2f}s ({occurrences / max(seconds, 1e-9) / 1e6:.2f} M occurrences/s)"
    )


def ngram_index_metadata(shards: list[IndexedShard], path: str) -> dict:
    occurrences = sum(s.occurrences for s in shards)
    seconds = sum(s.seconds for s in shards)
    distinct = np.sum([s.distinct for s in shards], axis=0)
    return {
        "articles": sum(s.articles for s in shards),
        "patches": sum(s.patches for s in shards),
        "occurrences": occurrences,
        "distinct_1grams": int(distinct[0]),
        "distinct_2grams": int(distinct[1]),
        "distinct_3grams": int(distinct[2]),
        "seconds": round(seconds, 4),
        "occurrences_per_second": round(occurrences / max(seconds, 1e-9), 1),
        "preview": preview_markdown(shards[0].preview, ["n", "key", "hash", "reg", "run", "count"]),
        "path": dg.MetadataValue.path(path),
    }


# ---------------------------------------------------------------------------------------------
# ngram_vocabulary
# ---------------------------------------------------------------------------------------------


def ngram_vocabulary_summary_metadata(
    top: pa.Table,
    occurrences: int,
    sizes: list[int],
    shards: list[str],
    missing: list[str],
    seconds: float,
    path: str,
) -> dict:
    """Metadata of a vocabulary from its summary (``top``: the 8 most frequent patches)."""
    return {
        "shards": ",".join(shards),
        "missing_shards": ",".join(missing) or "-",
        "distinct_1grams": sizes[0],
        "distinct_2grams": sizes[1],
        "distinct_3grams": sizes[2],
        "occurrences": occurrences,
        "seconds": round(seconds, 4),
        "top_patches": preview_markdown(top, ["key", "count"], rows=8),
        "path": dg.MetadataValue.path(path),
    }


# ---------------------------------------------------------------------------------------------
# article_hllsets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SketchedShard:
    """What article_hllsets wrote for one shard."""

    shard: str
    articles: int
    written: HllsetsWritten
    seconds: float


def article_hllsets_metadata(shards: list[SketchedShard], path: str) -> dict:
    previews = [s.written.preview for s in shards if s.written.preview is not None]
    metadata = {
        "articles": sum(s.articles for s in shards),
        "spans": sum(s.written.spans for s in shards),
        "seconds": round(sum(s.seconds for s in shards), 4),
        "path": dg.MetadataValue.path(path),
    }
    if previews:
        metadata["preview"] = preview_markdown(
            pa.concat_tables(previews), HLLSET_PREVIEW_COLUMNS, rows=8
        )
    return metadata


# ---------------------------------------------------------------------------------------------
# adjacency / adjacency_merged
# ---------------------------------------------------------------------------------------------


def adjacency_summary(graph: adj.Adjacency) -> dict:
    """Size and branching of a graph."""
    return outdeg_summary(graph.outdeg, graph.n_edges, graph.alpha)


def outdeg_summary(outdeg: np.ndarray, edges: int, alpha: float) -> dict:
    """Size and branching of a graph from its out-degrees."""
    return {
        "nodes": int(outdeg.size),
        "edges": edges,
        "alpha": alpha,
        "max_outdeg": int(outdeg.max()) if outdeg.size else 0,
        "mean_outdeg": round(float(outdeg.mean()), 4) if outdeg.size else 0.0,
        "branching_nodes": int((outdeg > 1).sum()),
    }


def adjacency_metadata(summaries: list[dict], contexts: int, seconds: float, path: str) -> dict:
    return {
        "nodes": sum(s["nodes"] for s in summaries),
        "edges": sum(s["edges"] for s in summaries),
        "branching_nodes": sum(s["branching_nodes"] for s in summaries),
        "max_outdeg": max(s["max_outdeg"] for s in summaries),
        "context_entries": contexts,
        "seconds": round(seconds, 4),
        "path": dg.MetadataValue.path(path),
    }


def restore_quality_metadata(
    spans: int,
    p: int,
    exact1: int,
    exactk: int,
    roundtrip: int,
    latencies: list[float],
    target: float,
) -> dict:
    return {
        "spans": spans,
        "p": p,
        "exact_at_1": round(exact1 / spans, 4),
        "exact_at_k": round(exactk / spans, 4),
        "round_trip": round(roundtrip / spans, 4),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_ms": round(float(np.percentile(latencies, 95)), 3),
        "target_exact_at_1": target,
    }
