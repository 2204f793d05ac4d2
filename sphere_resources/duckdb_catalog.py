"""The DuckDB catalog file: one view per Parquet asset over its Hive-partitioned files, named after
the asset, plus the status table ``sphere_catalog(asset, status)`` (no Dagster).

A view globs its asset's files, so the warehouse path is escaped for DuckDB's glob (a ``[`` in
it would start a character class). Partitions that should exist but do not (a shard never
materialized) and partitions on disk that are not expected (left over from a larger
``SPHERE_SHARDS``) are reported: the view silently covers whatever files are there.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sphere_resources.contracts import CONTRACTS, PARQUET_PART_NAME
from sphere_resources.store import Warehouse

# The status table next to the views: one row per asset with Parquet rows (name, type, doc).
CATALOG_TABLE = "sphere_catalog"
CATALOG_COLUMNS = (
    ("asset", "VARCHAR", "Asset (= view) name."),
    ("status", "VARCHAR", "view, or missing (no files yet)."),
)
VIEW, MISSING = "view", "missing"


GLOB_CHARS = "[*?"


def glob_escape(path: str) -> str:
    """``path`` as a DuckDB glob matching only itself: each of ``[ * ?`` becomes a one-character
    class (``[[]``). A backslash cannot be escaped (DuckDB reads it as a path separator)."""
    if "\\" in path:
        raise ValueError(
            f"warehouse path {path!r} contains a backslash, which DuckDB's file globs cannot "
            "match; choose a warehouse root (SPHERE_WAREHOUSE) without one"
        )
    return "".join(f"[{ch}]" if ch in GLOB_CHARS else ch for ch in path)


def escaped_parquet_glob(store: Warehouse, asset: str) -> str:
    """The asset's Parquet glob with its fixed part (the warehouse and asset path) escaped."""
    glob = store.parquet_glob(asset)
    fixed = str(store.asset_dir(asset))
    if not glob.startswith(fixed):
        raise ValueError(f"asset '{asset}': glob {glob!r} is not under {fixed!r}")
    return glob_escape(fixed) + glob[len(fixed) :]


def partition_gaps(
    store: Warehouse, asset: str, expected: list[str]
) -> tuple[list[str], list[str]]:
    """(expected partitions without a Parquet file, partitions on disk that are not expected)."""
    present = [
        key
        for key in store.partitions(asset)
        if (store.partition_dir(asset, key) / PARQUET_PART_NAME).exists()
    ]
    wanted = set(expected)
    missing = [k for k in expected if k not in set(present)]
    extra = [k for k in present if k not in wanted]
    return missing, extra


def view_sql(asset: str, glob: str, partitioned: bool) -> str:
    quoted = glob.replace("'", "''")
    opts = ", hive_partitioning = true" if partitioned else ""
    return f"CREATE OR REPLACE VIEW \"{asset}\" AS SELECT * FROM read_parquet('{quoted}'{opts})"


def build_catalog(
    warehouse_root: str | os.PathLike,
    catalog_path: str | os.PathLike,
    assets=None,
    expected_partitions: dict[str, list[str]] | None = None,
) -> dict:
    """(Re)write the catalog file atomically; returns {"views": [...], "missing": [...],
    "missing_partitions": {asset: [keys]}, "extra_partitions": {asset: [keys]}}.

    A view is created for every asset with a Parquet contract that has files on disk; assets not
    yet materialized are listed as missing (a view over no files would fail on every query).
    ``expected_partitions`` (asset -> partition keys) says which partitions a view should cover;
    the ones absent on disk, and the ones on disk but not expected, are returned per asset.
    """
    store = Warehouse(warehouse_root)
    catalog_path = Path(catalog_path)
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = catalog_path.with_name(f".{catalog_path.name}.{uuid.uuid4().hex}.tmp")
    views, missing = [], []
    missing_parts: dict[str, list[str]] = {}
    extra_parts: dict[str, list[str]] = {}
    names = sorted(assets if assets is not None else CONTRACTS)
    import duckdb  # here, not at the top: every Dagster step process loads this module

    con = duckdb.connect(str(tmp))
    try:
        for name in names:
            contract = CONTRACTS[name]
            if not contract.has_rows:
                continue
            base = store.asset_dir(name)
            partitioned = contract.partition_dim is not None
            glob = store.parquet_glob(name)
            if not list(base.glob(str(Path(glob).relative_to(base)))):
                missing.append(name)
                continue
            if partitioned and expected_partitions and name in expected_partitions:
                gone, extra = partition_gaps(store, name, expected_partitions[name])
                if gone:
                    missing_parts[name] = gone
                if extra:
                    extra_parts[name] = extra
            con.execute(view_sql(name, escaped_parquet_glob(store, name), partitioned))
            views.append(name)
        columns = ", ".join(f"{name} {kind}" for name, kind, _ in CATALOG_COLUMNS)
        con.execute(f"CREATE OR REPLACE TABLE {CATALOG_TABLE} ({columns})")
        rows = [(v, VIEW) for v in views] + [(m, MISSING) for m in missing]
        if rows:
            con.executemany(f"INSERT INTO {CATALOG_TABLE} VALUES (?, ?)", rows)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, catalog_path)
    wal = tmp.with_name(tmp.name + ".wal")
    if wal.exists():
        wal.unlink()
    return {
        "views": views,
        "missing": missing,
        "missing_partitions": missing_parts,
        "extra_partitions": extra_parts,
    }


def view_row_counts(catalog_path: str | os.PathLike, views: list[str]) -> dict[str, int]:
    import duckdb  # deferred, as in build_catalog

    con = duckdb.connect(str(catalog_path), read_only=True)
    try:
        return {v: con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0] for v in views}
    finally:
        con.close()
