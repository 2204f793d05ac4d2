"""postgres_catalog: publish each shard's articles, patches, embeddings and placements to Postgres.

Optional: the asset (and its check) joins the code location only when ``SPHERE_POSTGRES_URL`` is
set (``publish_definitions``), so the embedded default — and its default job and
``sphere materialize-all`` — never needs a server. The publishing itself (migrations, one
transaction per shard, binary COPY) is ``sphere_resources.pg_publish``.
"""

import os
import time
from collections.abc import Iterator

import dagster as dg

from sphere_assets.catalog import report
from sphere_assets.catalog.contract import POSTGRES_CATALOG_NAME
from sphere_assets.catalog.io import published_vs_source_counts
from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.partitions import shard_partitions
from sphere_resources import pg_publish
from sphere_resources.postgres import PostgresResource, PostgresUnavailable, is_transient
from sphere_resources.warehouse import WarehouseResource

POSTGRES_URL_ENV = "SPHERE_POSTGRES_URL"

# Transient failures (a timeout, a server starting up or out of connection slots, a connection
# lost mid-publish) are retried with backoff: 2 s, 4 s, 8 s (± jitter). Permanent ones fail at
# once (dg.Failure(allow_retries=False)): nothing listening at the address, an unknown host,
# database or role, a failed login, a bad row, a contract mismatch — a retry cannot fix them.
RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def postgres_enabled() -> bool:
    return bool(os.environ.get(POSTGRES_URL_ENV))


def upstream_keys(assets_defs) -> list[dg.AssetKey]:
    """Keys of the assets among ``assets_defs`` that feed a catalog table."""
    keys = [key for a in assets_defs for key in a.keys if key.path[-1] in pg_publish.SOURCE_ASSETS]
    return sorted(keys, key=lambda k: k.to_user_string())


def build_postgres_catalog(
    upstream: list[dg.AssetKey], retry_policy: dg.RetryPolicy = RETRY_POLICY
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The publish asset depending on ``upstream`` (shard assets), and its row-count check."""
    upstream_names = {k.path[-1] for k in upstream}
    tables = [t.table for t in pg_publish.CATALOG_TABLES if t.asset in upstream_names]

    @dg.asset(
        name=POSTGRES_CATALOG_NAME,
        deps=upstream,
        partitions_def=shard_partitions,
        retry_policy=retry_policy,
        group_name="publish",
        kinds={"postgres"},
        owners=["team:sphere"],
        tags={"family": "publish"},
        description=(
            "Postgres schema `sphere` (tables articles, patches, embeddings, placements): each shard "
            "is replaced in one transaction (delete + binary COPY), so re-publishing is idempotent "
            "and a failure keeps the previous rows. Present only when SPHERE_POSTGRES_URL is set."
        ),
    )
    def postgres_catalog(
        context: dg.AssetExecutionContext, postgres: PostgresResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        import psycopg  # here, not at module level: loading the code location skips it

        if not postgres.enabled:
            raise dg.Failure(
                "Postgres is not configured: set SPHERE_POSTGRES_URL "
                "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)",
                allow_retries=False,
            )
        target = postgres.describe()
        store = warehouse.store()
        started = time.perf_counter()
        reports: list[pg_publish.ShardReport] = []
        try:
            with postgres.connection() as conn:
                applied = pg_publish.apply_migrations(conn)
                if applied:
                    context.log.info(f"applied migrations {applied} to {target}")
                for shard in context.partition_keys:
                    try:
                        rep = pg_publish.publish_shard(conn, store, shard, tables)
                    except pg_publish.PublishError as exc:
                        if exc.__cause__ is not None and is_transient(exc.__cause__):
                            raise  # e.g. the connection broke mid-publish: worth a retry
                        raise dg.Failure(description=str(exc), allow_retries=False) from exc
                    reports.append(rep)
                    for t in rep.tables.values():
                        if not t.published:
                            context.log.info(f"shard {shard}: {t.table} left empty: {t.note}")
        except PostgresUnavailable as exc:  # names user@host:port/db, never the password
            if exc.transient:
                raise
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        except psycopg.Error as exc:  # migrations, or the session lost between statements
            if is_transient(exc):
                raise
            raise dg.Failure(
                description=f"Postgres at {target} refused the publish (not retried): {exc}",
                allow_retries=False,
            ) from exc
        elapsed = time.perf_counter() - started
        rows = report.rows_per_table(reports)
        context.log.info(
            f"published shards {list(context.partition_keys)} to {target}: {rows} in {elapsed:.2f}s"
        )
        return dg.MaterializeResult(
            metadata=report.publish_metadata(
                reports, target, list(context.partition_keys), elapsed, applied
            )
        )

    @shard_check(
        asset=postgres_catalog,
        blocking=True,
        description="Per shard: rows in every catalog table equal the rows of its Parquet source "
        "(0 where the source partition does not exist), and no key (article_id, patch_index) "
        "occurs twice; the run's shards, or all shards when the check runs on its own.",
    )
    def postgres_catalog_row_counts(
        context: dg.AssetCheckExecutionContext,
        postgres: PostgresResource,
        warehouse: WarehouseResource,
    ) -> Iterator:
        shards = (
            list(context.partition_keys)
            if context.has_partition_key or context.has_partition_key_range
            else shard_partitions.get_partition_keys()
        )
        with postgres.connection() as conn:
            counts = published_vs_source_counts(conn, warehouse.root, shards, tables)
        results = {}
        for shard in shards:
            table, mismatches = report.row_count_report([c for c in counts if c[0] == shard])
            results[shard] = dg.AssetCheckResult(
                passed=not mismatches,
                metadata={
                    "mismatches": "; ".join(mismatches) or "-",
                    "counts": dg.MetadataValue.md(table),
                },
            )
        yield from partition_check_results(context, results)

    return postgres_catalog, postgres_catalog_row_counts


def publish_definitions(family_assets, enabled: bool | None = None) -> tuple[list, list]:
    """([postgres_catalog], [its check]) when Postgres is configured, else ([], [])."""
    if not (postgres_enabled() if enabled is None else enabled):
        return [], []
    asset, check = build_postgres_catalog(upstream_keys(family_assets))
    return [asset], [check]
