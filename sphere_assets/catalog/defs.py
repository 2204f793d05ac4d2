"""The catalog family's assets and checks, as sphere_assets/definitions.py collects them.

The catalogs sit on top of the other families (they depend on every Parquet asset, resp. every
published source asset), so they are built from those families' assets: ``duckdb_catalog``
always, ``postgres_catalog`` and its check only when ``SPHERE_POSTGRES_URL`` is set.
"""

from sphere_assets.catalog.duckdb_catalog import (
    build_catalog_asset,
    build_catalog_check,
    parquet_asset_keys,
    parquet_partitions,
)
from sphere_assets.catalog.postgres_catalog import publish_definitions


def catalog_definitions(family_assets: list) -> tuple[list, list]:
    """(ASSETS, CHECKS) of the catalog family over ``family_assets``: duckdb_catalog first, then
    postgres_catalog when enabled."""
    partitions = parquet_partitions(family_assets)
    duckdb_catalog = build_catalog_asset(parquet_asset_keys(family_assets), partitions)
    partitions_check = build_catalog_check(duckdb_catalog, partitions)
    publish_assets, publish_checks = publish_definitions(family_assets)
    return [duckdb_catalog, *publish_assets], [partitions_check, *publish_checks]
