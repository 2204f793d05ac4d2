"""UI metadata of raw_articles: totals and rejects per reason, a per-shard table, a preview."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import pyarrow as pa

from sphere_assets.core.metadata import preview_markdown, row_metadata
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.ingest.io import IngestResult, rows_to_table
from sphere_assets.lib.text.corpus import REJECT_REASONS, RejectSample, ShardStats

PREVIEW_COLUMNS = ["article_id", "title", "n_bytes", "text"]


def rejects_by_reason(stats: dict[int, ShardStats]) -> Counter:
    """Rejects of every shard, summed per reason."""
    rejects: Counter = Counter()
    for s in stats.values():
        rejects.update(s.rejects)
    return rejects


def reject_samples(stats: dict[int, ShardStats]) -> list[RejectSample]:
    """The first reject of every reason (in shard order), sorted by reason."""
    samples: dict[str, RejectSample] = {}
    for _, st in sorted(stats.items()):
        for reason, sample in st.samples.items():
            samples.setdefault(reason, sample)
    return [samples[r] for r in sorted(samples)]


def samples_json(samples: list[RejectSample]) -> dict:
    """{reason: {source, line, locator, id, field}} for the metadata (JSON in the UI)."""
    return {
        s.reason: {
            "source": s.source,
            "line": s.line,
            "locator": s.locator,
            "id": s.article_id,
            "field": s.field,
        }
        for s in samples
    }


def per_shard_markdown(stats: dict[int, ShardStats]) -> dg.MetadataValue:
    """| shard | articles_in | rows_out | MB | rejects | — one line per written shard."""
    return dg.MetadataValue.md(
        "| shard | articles_in | rows_out | MB | rejects |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {s} | {st.articles_in} | {st.rows_out} | {st.bytes_out / 1e6:.2f} | {dict(st.rejects) or '-'} |"
            for s, st in sorted(stats.items())
        )
    )


def preview_table(previews: dict[int, pa.Table]) -> pa.Table:
    """The first rows of every shard, in shard order (an empty table when nothing was written)."""
    if not previews:
        return rows_to_table([])
    return pa.concat_tables([previews[s] for s in sorted(previews)])


def log_line(keys: list[str], result: IngestResult, elapsed: float) -> str:
    stats = result.stats
    rows_out = sum(s.rows_out for s in stats.values())
    articles_in = sum(s.articles_in for s in stats.values())
    bytes_out = sum(s.bytes_out for s in stats.values())
    return (
        f"{RAW_ARTICLES.name} shards {keys}: {rows_out} rows, {articles_in} in, "
        f"rejects {dict(rejects_by_reason(stats))}, {bytes_out / 1e6:.1f} MB in {elapsed:.1f}s"
    )


def materialization_metadata(
    result: IngestResult,
    source: str,
    keys: list[str],
    n_shards: int,
    elapsed: float,
    path: str,
) -> dict:
    """Metadata of one raw_articles partition (``result`` restricted to its shard) of a run over
    the partitions ``keys``; records_scanned, seconds and MB_per_s describe the run's source scan."""
    stats = result.stats
    rows_out = sum(s.rows_out for s in stats.values())
    rejects = rejects_by_reason(stats)
    return {
        **row_metadata(RAW_ARTICLES, rows_out),
        "source": source,
        "partitions_in_run": ",".join(keys),
        "n_shards": n_shards,
        "articles_in": sum(s.articles_in for s in stats.values()),
        "rows_out": rows_out,
        "rejects_total": sum(rejects.values()),
        **{f"rejects/{reason}": rejects.get(reason, 0) for reason in REJECT_REASONS},
        # where to find one reject of each reason: file, line (jsonl), id, field
        "reject_samples": dg.MetadataValue.json(samples_json(reject_samples(stats))),
        "bytes_out": sum(s.bytes_out for s in stats.values()),
        "records_scanned": result.records_seen,
        "seconds": round(elapsed, 3),
        "MB_per_s": round(result.source_bytes_seen / 1e6 / max(elapsed, 1e-9), 2),
        "per_shard": per_shard_markdown(stats),
        "preview": preview_markdown(preview_table(result.previews), PREVIEW_COLUMNS),
        "path": dg.MetadataValue.path(path),
    }
