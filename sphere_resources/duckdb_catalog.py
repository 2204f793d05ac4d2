"""The DuckDB catalog file: one view per Parquet asset over its Hive-partitioned files, named after
the asset, plus the status table ``sphere_catalog(asset, status)`` (no Dagster)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb

from sphere_resources.contracts import CONTRACTS
from sphere_resources.store import Warehouse

# The status table next to the views: one row per asset with Parquet rows (name, type, doc).
CATALOG_TABLE = "sphere_catalog"
CATALOG_COLUMNS = (
    ("asset", "VARCHAR", "Asset (= view) name."),
    ("status", "VARCHAR", "view, or missing (no files yet)."),
)
VIEW, MISSING = "view", "missing"


def view_sql(asset: str, glob: str, partitioned: bool) -> str:
    quoted = glob.replace("'", "''")
    opts = ", hive_partitioning = true" if partitioned else ""
    return f"CREATE OR REPLACE VIEW \"{asset}\" AS SELECT * FROM read_parquet('{quoted}'{opts})"


def build_catalog(
    warehouse_root: str | os.PathLike, catalog_path: str | os.PathLike, assets=None
) -> dict:
    """(Re)write the catalog file atomically; returns {"views": [...], "missing": [...]}.

    A view is created for every asset with a Parquet contract that has files on disk; assets not
    yet materialized are listed as missing (a view over no files would fail on every query).
    """
    store = Warehouse(warehouse_root)
    catalog_path = Path(catalog_path)
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = catalog_path.with_name(f".{catalog_path.name}.{uuid.uuid4().hex}.tmp")
    views, missing = [], []
    names = sorted(assets if assets is not None else CONTRACTS)
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
            con.execute(view_sql(name, glob, partitioned))
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
    return {"views": views, "missing": missing}


def view_row_counts(catalog_path: str | os.PathLike, views: list[str]) -> dict[str, int]:
    con = duckdb.connect(str(catalog_path), read_only=True)
    try:
        return {v: con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0] for v in views}
    finally:
        con.close()
