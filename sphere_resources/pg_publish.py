"""Publish warehouse shards into the Postgres catalog (schema ``sphere``), one transaction a shard.

Catalog tables and where their rows come from (``sphere_resources/migrations/*.sql`` define them):

    articles    <- raw_articles      Parquet
    patches     <- blt_patches       Parquet
    embeddings  <- patch_embeddings  Parquet rows (article_id, patch_index, prominence) + the
                                     safetensors ``embeddings`` [P, D] matrix, row i <-> row i
    placements  <- shell_placements  Parquet

Every table has a ``shard`` column (the partition key as an integer); every other column takes
the source column of the same name. A nullable catalog column that the source lacks is published
as NULL and reported; a NOT NULL one is an error naming the asset, shard and field.

Publishing shard s is one transaction::

    SELECT pg_advisory_xact_lock(<publish lock class>, s)   -- waits only for a publish of s
    DELETE FROM <t> WHERE shard = s                         -- every catalog table
    COPY <t> (...) FROM STDIN (FORMAT BINARY)               -- tables whose source partition exists
    COMMIT

so a re-publish replaces the shard's rows (idempotent), a failure anywhere rolls back to the
previous rows, and readers see either the old or the new shard, never a mix. The catalog mirrors
the warehouse: a source partition that does not exist leaves its table empty for the shard (and
the report says why). Publishes of different shards touch disjoint rows and take no table locks
(DELETE/COPY take ROW EXCLUSIVE, which does not conflict with itself), so they run concurrently.

Rows travel in PostgreSQL's binary COPY format, encoded a batch at a time by numpy
(``pg_copy.encode_rows``) — no per-row Python. Identifiers are composed with ``psycopg.sql``;
values are parameters (or COPY data), never spliced into SQL text.

Migrations: ``NNNN_<name>.sql`` files applied in order, each once, recorded with a SHA-256 of
their text in ``<schema>.schema_migrations``; an applied migration whose file changed is an error.
A transaction-level advisory lock makes concurrent runners apply each migration exactly once.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import sphere_resources
from sphere_resources.contracts import CONTRACTS, PARQUET_PART_NAME, contract_for, validate_schema
from sphere_resources.pg_copy import COPY_HEADER, COPY_TRAILER, CopyEncodeError, encode_rows
from sphere_resources.store import Warehouse

# psycopg is imported inside the functions that talk to Postgres: every Dagster step process
# loads this module (through the catalog family) and almost none of them publish.

SCHEMA = "sphere"
MIGRATIONS_DIR = Path(sphere_resources.__file__).resolve().parent / "migrations"
BATCH_BYTES = 1 << 20  # encoded bytes per COPY write: ~1 MB keeps the numpy gather in cache
EMBEDDING_COLUMN = "embedding"  # catalog column filled from the safetensors matrix
EMBEDDING_TENSOR = "embeddings"  # tensor name in the patch_embeddings contract


@dataclass(frozen=True)
class CatalogTable:
    table: str
    asset: str


CATALOG_TABLES: tuple[CatalogTable, ...] = (
    CatalogTable("articles", "raw_articles"),
    CatalogTable("patches", "blt_patches"),
    CatalogTable("embeddings", "patch_embeddings"),
    CatalogTable("placements", "shell_placements"),
)
TABLE_BY_NAME = {t.table: t for t in CATALOG_TABLES}
SOURCE_ASSETS = tuple(t.asset for t in CATALOG_TABLES)


class PublishError(RuntimeError):
    """Publishing a shard failed; names the shard, table, asset and (when known) the row."""


class MigrationError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(Path(directory).glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path} is not named NNNN_<name>.sql")
        found.append(Migration(m.group(1), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}: {versions}")
    return found


def lock_class(purpose: str, schema: str) -> int:
    """Advisory-lock class id (int4) for ``purpose`` in ``schema``; stable across processes."""
    return mmh3.hash(f"sphere.{purpose}:{schema}", seed=0, signed=True)


def apply_migrations(conn, schema: str = SCHEMA, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations in one transaction; returns the versions applied now."""
    from psycopg import sql

    ident = sql.Identifier(schema)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (lock_class("migrate", schema),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        done = dict(
            conn.execute(
                sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(ident)
            ).fetchall()
        )
        for mig in migration_files(directory):
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version}_{mig.name}.sql changed after it was applied to "
                        f"schema {schema!r}; add a new migration instead of editing it"
                    )
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(mig.text)  # no parameters: sent as-is, several statements allowed
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
                ).format(ident),
                (mig.version, mig.name, mig.checksum),
            )
            applied_now.append(mig.version)
    return applied_now


# ---------------------------------------------------------------------------------------------
# Catalog introspection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    typname: str  # pg_type.typname: int4, text, _float4, ...
    not_null: bool


def table_columns(conn, schema: str, table: str) -> list[Column]:
    from psycopg import sql

    rows = conn.execute(
        "SELECT a.attname, t.typname, a.attnotnull FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    if not rows:
        raise PublishError(
            f"catalog table {schema}.{table} does not exist (migrations not applied?)"
        )
    return [Column(*r) for r in rows]


def catalog_row_counts(conn, shard: str, schema: str = SCHEMA) -> dict[str, int]:
    from psycopg import sql

    counts = {}
    for spec in CATALOG_TABLES:
        (n,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE shard = %s").format(
                sql.Identifier(schema, spec.table)
            ),
            (shard_number(shard),),
        ).fetchone()
        counts[spec.table] = int(n)
    return counts


KEY_COLUMNS = {
    "articles": ("article_id",),
    "patches": ("article_id", "patch_index"),
    "embeddings": ("article_id", "patch_index"),
    "placements": ("article_id", "patch_index"),
}


def duplicate_keys(conn, shard: str, schema: str = SCHEMA) -> dict[str, int]:
    """Per table: how many keys occur more than once in the shard (0 when the publish is clean)."""
    from psycopg import sql

    out = {}
    for spec in CATALOG_TABLES:
        keys = sql.SQL(", ").join(map(sql.Identifier, KEY_COLUMNS[spec.table]))
        (n,) = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE shard = %s GROUP BY {}"
                " HAVING count(*) > 1) d"
            ).format(sql.Identifier(schema, spec.table), keys),
            (shard_number(shard),),
        ).fetchone()
        out[spec.table] = int(n)
    return out


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def shard_number(shard: str) -> int:
    try:
        return int(shard)
    except (TypeError, ValueError):
        raise PublishError(f"shard partition key {shard!r} is not an integer") from None


def source_path(warehouse_root: Path, asset: str, shard: str) -> Path | None:
    """The Parquet file of a source partition, or None when the partition does not exist."""
    contract = contract_for(asset)  # an unregistered asset is an error, not an absent partition
    if contract.schema is None or contract.partition_dim is None:
        return None
    if not Warehouse(warehouse_root).exists(asset, shard):  # waits out a swap in progress
        return None
    return Path(warehouse_root) / asset / f"{contract.partition_dim}={shard}" / PARQUET_PART_NAME


def source_row_count(warehouse_root: Path, asset: str, shard: str) -> int | None:
    path = source_path(warehouse_root, asset, shard)
    return None if path is None else pq.ParquetFile(path).metadata.num_rows


def why_absent(warehouse_root: Path, asset: str, shard: str) -> str:
    contract = CONTRACTS.get(asset)
    if contract is None:
        return f"no contract for '{asset}' (asset not built yet)"
    if contract.schema is None:
        return f"'{asset}' has no Parquet rows"
    return f"'{asset}' shard {shard} is not materialized"


def _embedding_tensor_stem(asset: str) -> str:
    tensors = CONTRACTS[asset].tensors
    if EMBEDDING_TENSOR in tensors.get(EMBEDDING_TENSOR, {}):
        return EMBEDDING_TENSOR
    for stem, specs in tensors.items():
        if EMBEDDING_TENSOR in specs:
            return stem
    raise PublishError(
        f"asset '{asset}': its contract has no '{EMBEDDING_TENSOR}' tensor for the catalog column "
        f"'{EMBEDDING_COLUMN}'"
    )


@dataclass
class TableReport:
    table: str
    asset: str
    rows: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0
    published: bool = False
    note: str = ""
    null_columns: list[str] = field(default_factory=list)
    unpublished_columns: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ShardReport:
    shard: str
    tables: dict[str, TableReport]
    seconds: float = 0.0
    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())


def _batches(
    warehouse, spec: CatalogTable, shard: str, columns: list[Column], report: TableReport
) -> Iterator[tuple[list[str], list, int]]:
    """(typnames, column arrays, first row index) per batch of about BATCH_BYTES encoded bytes."""
    asset = spec.asset
    path = source_path(warehouse.root, asset, shard)
    pf = pq.ParquetFile(path)
    validate_schema(CONTRACTS[asset], shard, pf.schema_arrow)  # ContractError names the field
    source_names = pf.schema_arrow.names
    embeddings = None
    if any(c.name == EMBEDDING_COLUMN for c in columns):
        arrays, _ = warehouse.read_tensors(asset, shard, _embedding_tensor_stem(asset))
        embeddings = arrays[EMBEDDING_TENSOR]
        if embeddings.shape[0] != pf.metadata.num_rows:
            raise PublishError(
                f"asset '{asset}', shard {shard}: {embeddings.shape[0]} embeddings for "
                f"{pf.metadata.num_rows} Parquet rows (row i of each must be the same patch)"
            )
        if "patch_index" in arrays and "patch_index" in source_names:
            stored = pf.read(columns=["patch_index"]).column("patch_index").to_numpy()
            if not np.array_equal(stored, arrays["patch_index"]):
                row = int(np.flatnonzero(stored != arrays["patch_index"])[0])
                raise PublishError(
                    f"asset '{asset}', shard {shard}, field 'patch_index': row {row} of the "
                    "Parquet table and of the safetensors arrays are different patches"
                )
    wanted = []
    for col in columns:
        if col.name == "shard" or (col.name == EMBEDDING_COLUMN and embeddings is not None):
            continue
        if col.name in source_names:
            wanted.append(col.name)
        elif col.not_null:
            raise PublishError(
                f"asset '{asset}', shard {shard}, field '{col.name}': the catalog column "
                f"{spec.table}.{col.name} is NOT NULL but the source has no such column"
            )
        else:
            report.null_columns.append(col.name)
    report.unpublished_columns = [n for n in source_names if n not in {c.name for c in columns}]

    # rows per Parquet batch from the stored (uncompressed) size, so big articles stay bounded
    meta = pf.metadata
    raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    row_bytes = raw / max(meta.num_rows, 1)
    if embeddings is not None and len(embeddings):
        row_bytes += 2 * embeddings[0].nbytes  # binary COPY: 4-byte length per element
    batch_rows = int(min(65536, max(16, BATCH_BYTES / max(row_bytes, 1.0))))
    typnames = [c.typname for c in columns]
    shard_id = shard_number(shard)
    start = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted or None):
        n = batch.num_rows
        arrays = []
        for col in columns:
            if col.name == "shard":
                arrays.append(np.full(n, shard_id, dtype=np.int32))
            elif col.name == EMBEDDING_COLUMN and embeddings is not None:
                arrays.append(embeddings[start : start + n])
            elif col.name in wanted:
                arrays.append(batch.column(col.name))
            else:
                arrays.append(pa.nulls(n))
        yield typnames, arrays, start
        start += n


_COPY_LINE = re.compile(r"line (\d+)")


def _row_label(warehouse, spec: CatalogTable, shard: str, row: int) -> str:
    path = source_path(warehouse.root, spec.asset, shard)
    keys = [
        k for k in ("article_id", "patch_index") if k in pq.ParquetFile(path).schema_arrow.names
    ]
    if not keys:
        return f"row {row}"
    values = pq.read_table(path, columns=keys).slice(row, 1).to_pylist()
    if not values:
        return f"row {row}"
    return f"row {row} (" + ", ".join(f"{k}={values[0][k]!r}" for k in keys) + ")"


def _copy_table(cur, warehouse, spec: CatalogTable, shard: str, schema: str, report: TableReport):
    from psycopg import sql

    columns = table_columns(cur.connection, schema, spec.table)
    names = [c.name for c in columns]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, spec.table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    t0 = time.perf_counter()
    rows = sent = 0
    with cur.copy(stmt) as copy:
        copy.write(COPY_HEADER)
        for typnames, arrays, start in _batches(warehouse, spec, shard, columns, report):
            try:
                data = encode_rows(typnames, arrays, names)
            except CopyEncodeError as exc:
                if exc.row is None:
                    raise
                row = start + exc.row
                label = _row_label(warehouse, spec, shard, row)
                raise CopyEncodeError(f"{exc}; source {label}", row=row) from None
            copy.write(data)
            rows += len(arrays[0])
            sent += len(data)
        copy.write(COPY_TRAILER)
    report.rows, report.bytes_sent = rows, sent + len(COPY_HEADER) + len(COPY_TRAILER)
    report.seconds = time.perf_counter() - t0
    report.published = True


def publish_shard(
    conn,
    warehouse,
    shard: str,
    tables: Sequence[str] | None = None,
    schema: str = SCHEMA,
) -> ShardReport:
    """Replace shard ``shard`` of every catalog table in one transaction (see module docstring).

    ``warehouse`` is a ``sphere_resources.store.Warehouse``; ``tables`` limits which catalog
    tables get rows (default: all whose source exists); the others are emptied for the shard.
    ``conn`` is a psycopg connection outside a transaction (autocommit off).
    """
    from psycopg import Error as PgError
    from psycopg import sql

    wanted = list(TABLE_BY_NAME) if tables is None else list(tables)
    unknown = [t for t in wanted if t not in TABLE_BY_NAME]
    if unknown:
        raise PublishError(f"unknown catalog table(s) {unknown}; known: {list(TABLE_BY_NAME)}")
    shard_id = shard_number(shard)
    reports = {s.table: TableReport(s.table, s.asset) for s in CATALOG_TABLES}
    report = ShardReport(shard=shard, tables=reports)
    t0 = time.perf_counter()
    current: CatalogTable | None = None
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (lock_class("publish", schema), shard_id)
            )
            for spec in CATALOG_TABLES:
                current = spec
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE shard = %s").format(
                        sql.Identifier(schema, spec.table)
                    ),
                    (shard_id,),
                )
                report.deleted[spec.table] = cur.rowcount
                tr = reports[spec.table]
                if spec.table not in wanted:
                    tr.note = f"'{spec.asset}' is not an upstream of this publish"
                elif source_path(warehouse.root, spec.asset, shard) is None:
                    tr.note = why_absent(warehouse.root, spec.asset, shard)
                else:
                    _copy_table(cur, warehouse, spec, shard, schema, tr)
            current = None
    except PgError as exc:
        diag = exc.diag
        where = ""
        if current is not None:
            where = f", table {schema}.{current.table} (from asset '{current.asset}')"
            line = _COPY_LINE.search(diag.context or "")
            if line and source_path(warehouse.root, current.asset, shard) is not None:
                where += ", " + _row_label(warehouse, current, shard, int(line.group(1)) - 1)
        detail = (diag.message_primary or str(exc)).strip()
        context = f" [{diag.context.strip()}]" if diag.context else ""
        raise PublishError(
            f"publishing shard {shard}{where} failed and was rolled back (the previous rows "
            f"stay): {detail}{context}"
        ) from exc
    except ValueError as exc:  # ContractError / CopyEncodeError: the source does not fit
        where = (
            f", table {schema}.{current.table} (from asset '{current.asset}')" if current else ""
        )
        raise PublishError(
            f"publishing shard {shard}{where} failed and was rolled back (the previous rows "
            f"stay): {exc}"
        ) from exc
    report.seconds = time.perf_counter() - t0
    return report
