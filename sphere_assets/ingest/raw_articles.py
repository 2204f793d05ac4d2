"""raw_articles: articles from the configured corpus source, sharded by a stable hash of their id."""

import time
from collections.abc import Iterator

import dagster as dg

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.ingest import report
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.ingest.io import stored_article_ids, write_shards
from sphere_assets.lib.text.corpus import ProgressMeter, shard_of
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource


@dg.asset(
    name=RAW_ARTICLES.name,
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingest",
    kinds={"python", "parquet"},
    owners=["team:sphere"],
    tags={"family": "ingest"},
    description=(
        "Articles (id, title, text, source, n_bytes, url) from the corpus source, one Parquet file per "
        "shard; shard = mmh3 x64 of article_id mod SPHERE_SHARDS. Duplicates by id and bad records "
        "(empty, invalid UTF-8/JSON, oversize, missing id/text, a non-string text or field, NUL) "
        "are counted as rejects by reason, with where the first of each came from "
        "(reject_samples), never written."
    ),
)
def raw_articles(
    context: dg.AssetExecutionContext, corpus: CorpusSourceResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    n_shards = len(shard_partitions.get_partition_keys())
    keys = list(context.partition_keys)
    start = time.perf_counter()
    meter = ProgressMeter(context.log.info, corpus.total_bytes_hint())
    result = write_shards(
        corpus.records(),
        warehouse.store(),
        RAW_ARTICLES.name,
        n_shards,
        keys,
        corpus.max_article_bytes,
        meter,
    )
    elapsed = time.perf_counter() - start
    context.log.info(report.log_line(keys, result, elapsed))
    for sample in report.reject_samples(result.stats):
        count = sum(st.rejects[sample.reason] for st in result.stats.values())
        context.log.warning(f"{count} rejected as {sample.describe()} (first of them)")
    # each partition records its own accounting: articles_in = rows_out + rejects per shard
    return partition_results(
        context,
        {
            key: report.materialization_metadata(
                result.for_shard(int(key)),
                corpus.describe(),
                keys,
                n_shards,
                elapsed,
                str(warehouse.partition_dir(RAW_ARTICLES.name, key)),
            )
            for key in keys
        },
    )


@shard_check(
    asset=raw_articles,
    description="Per shard: every stored article id is unique and in its own shard (an id in "
    "two shards is in the wrong one in at least one of them).",
    blocking=True,
)
def raw_articles_ids_unique_and_sharded(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    n_shards = len(shard_partitions.get_partition_keys())
    store = warehouse.store()
    results = {}
    for key, ids in stored_article_ids(
        store, partitions_in_scope(context, store, RAW_ARTICLES.name)
    ):
        dupes = len(ids) - len(set(ids))
        bad_shard = sum(1 for i in ids if shard_of(i, n_shards) != int(key))
        results[key] = dg.AssetCheckResult(
            passed=bad_shard == 0 and dupes == 0,
            metadata={"rows": len(ids), "duplicate_ids": dupes, "rows_in_wrong_shard": bad_shard},
        )
    yield from partition_check_results(context, results)
