"""What the catalog family stores. It writes no warehouse files, so it registers no AssetContract;
its outputs are catalogs over the warehouse, defined by the storage layer:

* ``duckdb_catalog`` — the DuckDB file ``SPHERE_CATALOG`` (default ``data/sphere.duckdb``): one
  view per asset with Parquet rows, **named after the asset**, over its Hive-partitioned files
  (partition columns such as ``shard`` come from the paths), and the status table
  ``sphere_catalog(asset, status)`` with status ``view`` or ``missing`` (no files yet: no view).
  Built by ``sphere_resources.duckdb_catalog``.
* ``postgres_catalog`` — the Postgres schema ``sphere`` (``POSTGRES_SCHEMA``), one table per
  source asset (``POSTGRES_TABLES``: articles <- raw_articles, patches <- blt_patches,
  embeddings <- patch_embeddings, placements <- shell_placements), every table keyed by
  ``shard`` first. Tables are created by the migrations in ``sphere_resources/migrations``;
  publishing is ``sphere_resources.pg_publish``.
"""

from sphere_resources.duckdb_catalog import CATALOG_COLUMNS, CATALOG_TABLE
from sphere_resources.pg_publish import CATALOG_TABLES as POSTGRES_TABLES
from sphere_resources.pg_publish import SCHEMA as POSTGRES_SCHEMA

DUCKDB_CATALOG_NAME = "duckdb_catalog"
POSTGRES_CATALOG_NAME = "postgres_catalog"

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_TABLE",
    "DUCKDB_CATALOG_NAME",
    "POSTGRES_CATALOG_NAME",
    "POSTGRES_SCHEMA",
    "POSTGRES_TABLES",
]
