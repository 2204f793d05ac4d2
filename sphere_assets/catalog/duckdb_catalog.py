"""duckdb_catalog: data/sphere.duckdb with one view per Parquet asset."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from sphere_assets.catalog import report
from sphere_assets.catalog.contract import DUCKDB_CATALOG_NAME
from sphere_resources.contracts import CONTRACTS, DEFAULT_CATALOG_PATH
from sphere_resources.duckdb_catalog import build_catalog, view_row_counts
from sphere_resources.warehouse import WarehouseResource


class DuckDBCatalogResource(dg.ConfigurableResource):
    """Location of the DuckDB catalog file."""

    path: str = Field(
        default=DEFAULT_CATALOG_PATH, description="DuckDB database file holding the views."
    )


def parquet_asset_keys(assets_defs) -> list[dg.AssetKey]:
    """Keys of the assets among ``assets_defs`` whose data contract has Parquet rows, sorted."""
    keys = []
    for a in assets_defs:
        for key in a.keys:
            name = key.path[-1]
            if name in CONTRACTS and CONTRACTS[name].has_rows:
                keys.append(key)
    return sorted(keys, key=lambda k: k.to_user_string())


def build_catalog_asset(upstream: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """The catalog over ``upstream`` (every Parquet asset of the code location, see
    :func:`parquet_asset_keys`): it depends on them, so it runs after them."""

    @dg.asset(
        name=DUCKDB_CATALOG_NAME,
        deps=upstream,
        group_name="catalog",
        kinds={"duckdb"},
        owners=["team:sphere"],
        tags={"family": "catalog"},
        # no AssetContract (no warehouse files): the schema of its status table, from contract.py
        metadata={"dagster/column_schema": report.catalog_table_schema()},
        description=(
            "DuckDB file (default data/sphere.duckdb) with one view per Parquet asset over its Hive "
            "paths, e.g. `select shard, count(*) from raw_articles group by 1`."
        ),
    )
    def duckdb_catalog(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        catalog: DuckDBCatalogResource,
    ) -> dg.MaterializeResult:
        names = [k.path[-1] for k in upstream]
        result = build_catalog(warehouse.root, catalog.path, names)
        counts = view_row_counts(catalog.path, result["views"])
        if result["missing"]:
            context.log.warning(f"no Parquet files yet for {result['missing']}: no view for them")
        return dg.MaterializeResult(
            metadata=report.duckdb_metadata(str(Path(catalog.path).resolve()), result, counts)
        )

    return duckdb_catalog
