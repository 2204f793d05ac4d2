"""UI metadata of the catalog family: the DuckDB status table's schema and views, the Postgres
publish per shard and table, and the row-count check's table."""

from __future__ import annotations

import dagster as dg

from sphere_assets.catalog.contract import CATALOG_COLUMNS
from sphere_resources import pg_publish


def catalog_table_schema() -> dg.TableSchema:
    """Column schema of duckdb_catalog: its ``sphere_catalog`` status table."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description=doc) for name, kind, doc in CATALOG_COLUMNS]
    )


def partition_warnings(result: dict) -> list[str]:
    """One line per view that does not cover its asset whole (see build_catalog)."""
    lines = []
    for asset, keys in sorted(result.get("missing_partitions", {}).items()):
        lines.append(
            f"view {asset} lacks partition(s) {', '.join(keys)}: not materialized, its rows are "
            "absent from every query"
        )
    for asset, keys in sorted(result.get("extra_partitions", {}).items()):
        lines.append(
            f"view {asset} includes partition(s) {', '.join(keys)} that its partitions "
            "definition does not have (left over from another SPHERE_SHARDS?)"
        )
    return lines


def duckdb_metadata(path: str, result: dict, counts: dict[str, int]) -> dict:
    """Metadata of one duckdb_catalog build: views, assets without files, partitions a view
    lacks or should not have (warnings), rows per view."""
    warnings = partition_warnings(result)
    return {
        "path": dg.MetadataValue.path(path),
        "views": ", ".join(result["views"]),
        "missing": ", ".join(result["missing"]) or "-",
        "warnings": dg.MetadataValue.md("\n".join(f"* {w}" for w in warnings) or "-"),
        "missing_partitions": dg.MetadataValue.json(result.get("missing_partitions", {})),
        "extra_partitions": dg.MetadataValue.json(result.get("extra_partitions", {})),
        "dagster/row_count": len(result["views"]),
        **{f"rows/{v}": n for v, n in counts.items()},
    }


def publish_markdown(reports: list[pg_publish.ShardReport]) -> str:
    """| shard | table | rows | seconds | rows/s | note | — one line per shard and table."""
    lines = ["| shard | table | rows | seconds | rows/s | note |", "|---|---|---|---|---|---|"]
    for rep in reports:
        for t in rep.tables.values():
            rate = f"{t.rows_per_s:,.0f}" if t.published else "-"
            notes = [t.note] if t.note else []
            if t.null_columns:
                notes.append(f"NULL (not in source): {', '.join(t.null_columns)}")
            if t.unpublished_columns:
                notes.append(f"source columns not in the table: {', '.join(t.unpublished_columns)}")
            note = "; ".join(notes)
            lines.append(
                f"| {rep.shard} | {t.table} | {t.rows} | {t.seconds:.3f} | {rate} | {note or '-'} |"
            )
    return "\n".join(lines)


def rows_per_table(reports: list[pg_publish.ShardReport]) -> dict[str, int]:
    """Rows published per catalog table, summed over the run's shards."""
    return {
        t.table: sum(r.tables[t.table].rows for r in reports) for t in pg_publish.CATALOG_TABLES
    }


def publish_metadata(
    reports: list[pg_publish.ShardReport],
    target: str,
    partition_keys: list[str],
    elapsed: float,
    applied: list[str],
) -> dict:
    """Metadata of one postgres_catalog run over the shards ``partition_keys``."""
    rows = rows_per_table(reports)
    copy_seconds = sum(t.seconds for r in reports for t in r.tables.values())
    total = sum(rows.values())
    skipped = sorted(
        {f"{t.table} ({t.note})" for r in reports for t in r.tables.values() if not t.published}
    )
    return {
        "dagster/row_count": total,
        "target": target,
        "schema": pg_publish.SCHEMA,
        "partitions_in_run": ",".join(partition_keys),
        **{f"rows/{name}": n for name, n in rows.items()},
        "seconds": round(elapsed, 3),
        "copy_seconds": round(copy_seconds, 3),
        "rows_per_s": round(total / copy_seconds, 1) if copy_seconds > 0 else 0.0,
        "bytes_sent": sum(t.bytes_sent for r in reports for t in r.tables.values()),
        "skipped": "; ".join(skipped) or "-",
        "migrations_applied_now": ",".join(applied) or "-",
        "per_table": dg.MetadataValue.md(publish_markdown(reports)),
    }


def row_count_report(counts: list[tuple[str, str, int, int, int]]) -> tuple[str, list[str]]:
    """(markdown table, mismatches) of the row-count check from (shard, table, postgres rows,
    Parquet rows, duplicated keys) per shard and table."""
    lines = [
        "| shard | table | postgres | parquet | duplicated keys |",
        "|---|---|---|---|---|",
    ]
    mismatches = []
    for shard, table, got, expected, dupes in counts:
        lines.append(f"| {shard} | {table} | {got} | {expected} | {dupes} |")
        if got != expected:
            mismatches.append(f"shard {shard} {table}: {got} != {expected}")
        if dupes:
            mismatches.append(f"shard {shard} {table}: {dupes} duplicated keys")
    return "\n".join(lines), mismatches
