"""Postgres catalog publish: binary COPY (pg_publish) against plain executemany, same rows, same run.

    .venv/bin/python bench/postgres_publish.py [--warehouse data/warehouse] [--url URL] [--dim 64]

Source: every shard of the full bundled corpus. Without ``--warehouse`` the bench builds a
temporary warehouse: raw_articles (the ingest code), blt_patches and patch_embeddings from the
synthetic stand-ins (``sphere_assets.catalog.synthetic``: content-defined patches, D=64
vectors like the tiny entropy model's); with ``--warehouse`` it publishes what that warehouse
holds (e.g. after ``make run``).

Target: a fresh database on the server of ``--url`` (default $SPHERE_TEST_POSTGRES_URL or
postgresql://postgres@127.0.0.1:5432/postgres), created and dropped by the bench.

Both paths do the same work per shard, one transaction each: DELETE the shard's rows, insert the
rows, COMMIT, into the same tables with the same indexes (schema from the migrations).

* COPY: ``pg_publish.publish_shard`` (numpy-encoded binary COPY; reading + encoding timed in).
* executemany: ``cursor.executemany("INSERT ... VALUES (%s, ...)", rows)`` with psycopg 3 (which
  pipelines the statements); turning the Arrow columns into Python row tuples is timed in too
  and shown separately.

Each path runs twice (first into empty tables, then replacing the rows); the table reports the
second, steady-state pass. Prints rows/s per table and the ratio COPY / executemany.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sphere_resources import pg_publish  # noqa: E402
from sphere_resources.store import Warehouse  # noqa: E402

DEFAULT_URL = os.environ.get(
    "SPHERE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def build_warehouse(root: Path, n_shards: int, dim: int) -> Warehouse:
    from sphere_assets.catalog.synthetic import (
        write_synthetic_embeddings,
        write_synthetic_patches,
    )
    from sphere_assets.ingest.io import write_shards
    from sphere_resources.corpus import CorpusSourceResource

    store = Warehouse(root)
    corpus = CorpusSourceResource(kind="bundled")
    keys = [str(i) for i in range(n_shards)]
    write_shards(corpus.records(), store, "raw_articles", n_shards, keys, corpus.max_article_bytes)
    for key in keys:
        write_synthetic_patches(store, key)
        write_synthetic_embeddings(store, key, dim=dim)
    return store


def python_rows(store: Warehouse, spec: pg_publish.CatalogTable, shard: str, columns) -> list:
    """The catalog rows of one shard/table as Python tuples (what executemany needs)."""
    path = pg_publish.source_path(store.root, spec.asset, shard)
    table = pq.read_table(path)
    out_cols = []
    for col in columns:
        if col.name == "shard":
            out_cols.append([int(shard)] * table.num_rows)
        elif col.name == pg_publish.EMBEDDING_COLUMN:
            arrays, _ = store.read_tensors(spec.asset, shard, "embeddings")
            out_cols.append(arrays["embeddings"].tolist())
        elif col.name in table.column_names:
            out_cols.append(table.column(col.name).to_pylist())
        else:
            out_cols.append([None] * table.num_rows)
    return list(zip(*out_cols, strict=True))


def executemany_shard(conn, store: Warehouse, shard: str, tables: list[str]) -> dict:
    timings = {}
    with conn.transaction(), conn.cursor() as cur:
        for spec in pg_publish.CATALOG_TABLES:
            ident = sql.Identifier(pg_publish.SCHEMA, spec.table)
            cur.execute(sql.SQL("DELETE FROM {} WHERE shard = %s").format(ident), (int(shard),))
            if (
                spec.table not in tables
                or pg_publish.source_path(store.root, spec.asset, shard) is None
            ):
                continue
            columns = pg_publish.table_columns(conn, pg_publish.SCHEMA, spec.table)
            t0 = time.perf_counter()
            rows = python_rows(store, spec, shard, columns)
            t1 = time.perf_counter()
            stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                ident,
                sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            )
            cur.executemany(stmt, rows)
            t2 = time.perf_counter()
            timings[spec.table] = (len(rows), t2 - t0, t1 - t0)
    return timings


def run(store: Warehouse, url: str, tables: list[str]) -> dict:
    shards = store.partitions("raw_articles")
    results: dict[str, dict] = {"copy": {}, "executemany": {}}
    with psycopg.connect(url) as conn:
        pg_publish.apply_migrations(conn)
        for attempt in range(2):
            copy: dict[str, list] = {}
            t0 = time.perf_counter()
            for shard in shards:
                t_shard = time.perf_counter()
                rep = pg_publish.publish_shard(conn, store, shard, tables)
                commit = time.perf_counter() - t_shard - sum(t.seconds for t in rep.tables.values())
                for t in rep.tables.values():
                    if t.published:
                        acc = copy.setdefault(t.table, [0, 0.0, 0.0])
                        acc[0] += t.rows
                        acc[1] += t.seconds
                copy.setdefault("_overhead", [0, 0.0, 0.0])[1] += commit
            copy["_wall"] = [0, time.perf_counter() - t0, 0.0]
            results["copy"] = copy
            many: dict[str, list] = {}
            t0 = time.perf_counter()
            for shard in shards:
                for table, (n, secs, convert) in executemany_shard(
                    conn, store, shard, tables
                ).items():
                    acc = many.setdefault(table, [0, 0.0, 0.0])
                    acc[0] += n
                    acc[1] += secs
                    acc[2] += convert
            many["_wall"] = [0, time.perf_counter() - t0, 0.0]
            results["executemany"] = many
            print(
                f"pass {attempt + 1}: COPY {copy['_wall'][1]:.2f}s, executemany {many['_wall'][1]:.2f}s"
            )
    return results


def report(results: dict, tables: list[str], label: str) -> str:
    copy, many = results["copy"], results["executemany"]
    lines = [
        f"{label}",
        "",
        "| table | rows | COPY s | COPY rows/s | executemany s (of which to Python rows) | executemany rows/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    tot = [0, 0.0, 0.0, 0.0]
    for table in tables:
        if table not in copy:
            continue
        n, cs, _ = copy[table]
        _, ms, conv = many[table]
        tot[0] += n
        tot[1] += cs
        tot[2] += ms
        tot[3] += conv
        lines.append(
            f"| {table} | {n:,} | {cs:.3f} | {n / cs:,.0f} | {ms:.3f} ({conv:.3f}) | "
            f"{n / ms:,.0f} | {ms / cs:.1f}x |"
        )
    n, cs, ms, conv = tot
    lines.append(
        f"| **all** | {n:,} | {cs:.3f} | {n / cs:,.0f} | {ms:.3f} ({conv:.3f}) | {n / ms:,.0f} | "
        f"**{ms / cs:.1f}x** |"
    )
    lines.append("")
    lines.append(
        f"Whole publish incl. DELETE + COMMIT per shard: COPY {copy['_wall'][1]:.2f}s, "
        f"executemany {many['_wall'][1]:.2f}s "
        f"({many['_wall'][1] / copy['_wall'][1]:.1f}x)."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="", help="publish this warehouse instead")
    parser.add_argument("--url", default=DEFAULT_URL, help="server (a scratch db is created)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="synthetic embedding dimension")
    args = parser.parse_args()

    try:
        with psycopg.connect(args.url, connect_timeout=3, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.OperationalError as exc:
        print(f"SKIPPED: no PostgreSQL at {args.url}: {str(exc).strip().splitlines()[0]}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.warehouse:
            store = Warehouse(args.warehouse)
            source = f"warehouse {args.warehouse}"
        else:
            store = build_warehouse(Path(tmp) / "warehouse", args.shards, args.dim)
            source = (
                f"bundled corpus, {args.shards} shards, synthetic patches + D={args.dim} embeddings"
            )
        print(f"source ready in {time.perf_counter() - t0:.1f}s: {source}")
        tables = [
            t.table
            for t in pg_publish.CATALOG_TABLES
            if any(
                pg_publish.source_path(store.root, t.asset, s)
                for s in store.partitions("raw_articles")
            )
        ]
        db = f"sphere_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        try:
            from urllib.parse import urlsplit, urlunsplit

            target = urlunsplit(urlsplit(args.url)._replace(path=f"/{db}"))
            results = run(store, target, tables)
        finally:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
    print()
    print(
        report(
            results, tables, f"PostgreSQL {version}; {source}; steady-state pass (rows replaced)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
