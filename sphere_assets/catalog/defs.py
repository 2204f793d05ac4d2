"""The catalog family's assets and checks, as sphere_assets/definitions.py collects them.

The catalogs sit on top of the other families (they depend on every Parquet asset, resp. every
published source asset), so they are built from those families' assets: ``duckdb_catalog``
always, ``postgres_catalog`` and its check only when ``SPHERE_POSTGRES_URL`` is set.
"""

from sphere_assets.catalog.duckdb_catalog import build_catalog_asset, parquet_asset_keys
from sphere_assets.catalog.postgres_catalog import publish_definitions


def catalog_definitions(family_assets: list) -> tuple[list, list]:
    """(ASSETS, CHECKS) of the catalog family over ``family_assets``: duckdb_catalog first, then
    postgres_catalog when enabled."""
    duckdb_catalog = build_catalog_asset(parquet_asset_keys(family_assets))
    publish_assets, publish_checks = publish_definitions(family_assets)
    return [duckdb_catalog, *publish_assets], publish_checks
