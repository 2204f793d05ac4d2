"""raw_articles: articles from the configured corpus source, sharded by a stable hash of their id."""

import time
from collections import Counter

import dagster as dg
import pyarrow as pa

from sphere_assets.core.metadata import preview_markdown, row_metadata
from sphere_assets.core.partitions import shard_partitions
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.ingest.io import rows_to_table, write_shards
from sphere_assets.lib.text.corpus import REJECT_REASONS, ProgressMeter
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource

ASSET = "raw_articles"


@dg.asset(
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingest",
    kinds={"python", "parquet"},
    owners=["team:sphere"],
    tags={"family": "ingest"},
    description=(
        "Articles (id, title, text, source, n_bytes, url) from the corpus source, one Parquet file per "
        "shard; shard = mmh3 x64 of article_id mod SPHERE_SHARDS. Duplicates by id and bad records "
        "(empty, invalid UTF-8, oversize, missing id/text) are counted as rejects, never written."
    ),
)
def raw_articles(
    context: dg.AssetExecutionContext, corpus: CorpusSourceResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    all_keys = shard_partitions.get_partition_keys()
    n_shards = len(all_keys)
    keys = list(context.partition_keys)
    start = time.perf_counter()
    meter = ProgressMeter(context.log.info, corpus.total_bytes_hint())

    result = write_shards(
        corpus.records(), warehouse.store(), ASSET, n_shards, keys, corpus.max_article_bytes, meter
    )
    stats = result.stats
    first_rows = result.previews
    elapsed = time.perf_counter() - start
    rows_out = sum(s.rows_out for s in stats.values())
    bytes_out = sum(s.bytes_out for s in stats.values())
    articles_in = sum(s.articles_in for s in stats.values())
    rejects = Counter()
    for s in stats.values():
        rejects.update(s.rejects)
    preview = (
        pa.concat_tables([first_rows[s] for s in sorted(first_rows)])
        if first_rows
        else rows_to_table([])
    )
    per_shard = dg.MetadataValue.md(
        "| shard | articles_in | rows_out | MB | rejects |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {s} | {st.articles_in} | {st.rows_out} | {st.bytes_out / 1e6:.2f} | {dict(st.rejects) or '-'} |"
            for s, st in sorted(stats.items())
        )
    )
    context.log.info(
        f"raw_articles shards {keys}: {rows_out} rows, {articles_in} in, rejects {dict(rejects)}, "
        f"{bytes_out / 1e6:.1f} MB in {elapsed:.1f}s"
    )
    return dg.MaterializeResult(
        metadata={
            **row_metadata(RAW_ARTICLES, rows_out),
            "source": corpus.describe(),
            "partitions_in_run": ",".join(keys),
            "n_shards": n_shards,
            "articles_in": articles_in,
            "rows_out": rows_out,
            "rejects_total": sum(rejects.values()),
            **{f"rejects/{reason}": rejects.get(reason, 0) for reason in REJECT_REASONS},
            "bytes_out": bytes_out,
            "records_scanned": result.records_seen,
            "seconds": round(elapsed, 3),
            "MB_per_s": round(result.source_bytes_seen / 1e6 / max(elapsed, 1e-9), 2),
            "per_shard": per_shard,
            "preview": preview_markdown(preview, ["article_id", "title", "n_bytes", "text"]),
            "path": dg.MetadataValue.path(str(warehouse.partition_dir(ASSET, keys[0]).parent)),
        }
    )


@dg.asset_check(
    asset=raw_articles,
    description="Every stored article id is unique and in its own shard.",
    blocking=True,
)
def raw_articles_ids_unique_and_sharded(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    from sphere_assets.lib.text.corpus import shard_of

    n_shards = len(shard_partitions.get_partition_keys())
    store = warehouse.store()
    bad_shard, dupes, total = 0, 0, 0
    for key in store.partitions(ASSET):
        ids = store.read_table(ASSET, key, columns=["article_id"]).column("article_id").to_pylist()
        total += len(ids)
        dupes += len(ids) - len(set(ids))
        bad_shard += sum(1 for i in ids if shard_of(i, n_shards) != int(key))
    return dg.AssetCheckResult(
        passed=bad_shard == 0 and dupes == 0,
        metadata={"rows": total, "duplicate_ids": dupes, "rows_in_wrong_shard": bad_shard},
    )
