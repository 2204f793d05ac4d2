"""Reads and writes of the ingest family: raw_articles rows into warehouse partitions (staged,
swapped in whole), and the stored ids back for the check."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pyarrow as pa

from sphere_assets.ingest.contract import RAW_ARTICLES, RAW_ARTICLES_SCHEMA
from sphere_assets.lib.text.corpus import (
    ArticleRow,
    ProgressMeter,
    ShardSplitter,
    ShardStats,
    SourceRecord,
)
from sphere_resources.store import BackgroundTableWriter, Warehouse


def rows_to_table(rows: list[ArticleRow]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "article_id": [r.article_id for r in rows],
            "title": [r.title for r in rows],
            "text": [r.text for r in rows],
            "source": [r.source for r in rows],
            "n_bytes": [r.n_bytes for r in rows],
            "url": [r.url for r in rows],
        },
        schema=RAW_ARTICLES_SCHEMA,
    )


@dataclass
class IngestResult:
    stats: dict[int, ShardStats]
    records_seen: int
    source_bytes_seen: int
    previews: dict[int, pa.Table]

    def for_shard(self, shard: int) -> IngestResult:
        """This result restricted to one shard's accounting and preview; the source scan
        (``records_seen``, ``source_bytes_seen``) is the run's, shared by its shards."""
        previews = {shard: self.previews[shard]} if shard in self.previews else {}
        return IngestResult(
            {shard: self.stats[shard]}, self.records_seen, self.source_bytes_seen, previews
        )


def write_shards(
    records: Iterable[SourceRecord],
    store,
    asset: str,
    n_shards: int,
    keys: list[str],
    max_article_bytes: int,
    progress: ProgressMeter | None = None,
) -> IngestResult:
    """Stream ``records`` into the ``keys`` partitions of ``asset`` in ``store`` (a Warehouse).

    Every partition is staged and swapped into place only after the whole source was read, so a
    failure anywhere leaves all previous partitions as they were.
    """
    previews: dict[int, pa.Table] = {}
    with ExitStack() as stack:
        streams = {}
        for key in keys:
            w = stack.enter_context(store.partition_writer(asset, key))
            streams[int(key)] = stack.enter_context(w.table_stream())
        background = BackgroundTableWriter()
        stack.callback(background.close)

        def flush(shard: int, rows: list[ArticleRow]) -> None:
            table = rows_to_table(rows)
            previews.setdefault(shard, table.slice(0, 5))
            background.submit(streams[shard].write, table)

        splitter = ShardSplitter(n_shards, [int(k) for k in keys], flush, max_article_bytes)
        for rec in records:
            splitter.add(rec)
            if progress is not None and splitter.records_seen % 1000 == 0:
                progress.maybe_log(splitter.records_seen, splitter.source_bytes_seen)
        stats = splitter.finish()
        background.drain()
    if progress is not None:
        progress.maybe_log(splitter.records_seen, splitter.source_bytes_seen, force=True)
    return IngestResult(stats, splitter.records_seen, splitter.source_bytes_seen, previews)


def stored_article_ids(
    store: Warehouse, keys: list[str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """(partition key, article ids in stored order) for the raw_articles partitions ``keys``
    (default: every one on disk)."""
    for key in store.partitions(RAW_ARTICLES.name) if keys is None else keys:
        table = store.read_table(RAW_ARTICLES.name, key, columns=["article_id"])
        yield key, table.column("article_id").to_pylist()
