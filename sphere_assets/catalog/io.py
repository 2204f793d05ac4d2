"""Reads of the catalog family through the storage layer: what Postgres holds per shard next to
what the warehouse holds (publishing itself is ``sphere_resources.pg_publish``)."""

from __future__ import annotations

from pathlib import Path

from sphere_resources import pg_publish


def published_vs_source_counts(
    conn, warehouse_root: str | Path, shards: list[str], tables: list[str]
) -> list[tuple[str, str, int, int, int]]:
    """(shard, table, rows in Postgres, rows of its Parquet source, duplicated keys) for every
    shard and catalog table; the source count is 0 for a table not published (not in ``tables``)
    or whose source partition does not exist."""
    out = []
    for shard in shards:
        counts = pg_publish.catalog_row_counts(conn, shard)
        dupes = pg_publish.duplicate_keys(conn, shard)
        for spec in pg_publish.CATALOG_TABLES:
            expected = 0
            if spec.table in tables:
                expected = pg_publish.source_row_count(warehouse_root, spec.asset, shard) or 0
            out.append((shard, spec.table, counts[spec.table], expected, dupes[spec.table]))
    return out
