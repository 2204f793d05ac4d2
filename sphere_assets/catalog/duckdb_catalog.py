"""duckdb_catalog: data/sphere.duckdb with one view per Parquet asset."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from sphere_resources.contracts import DEFAULT_CATALOG_PATH
from sphere_resources.duckdb_catalog import build_catalog, view_row_counts
from sphere_resources.warehouse import WarehouseResource


class DuckDBCatalogResource(dg.ConfigurableResource):
    """Location of the DuckDB catalog file."""

    path: str = Field(
        default=DEFAULT_CATALOG_PATH, description="DuckDB database file holding the views."
    )


def build_catalog_asset(parquet_asset_keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """The catalog depends on every Parquet asset in the code location, so it runs after them."""

    @dg.asset(
        name="duckdb_catalog",
        deps=parquet_asset_keys,
        group_name="catalog",
        kinds={"duckdb"},
        owners=["team:sphere"],
        tags={"family": "catalog"},
        metadata={
            "dagster/column_schema": dg.TableSchema(
                columns=[
                    dg.TableColumn("asset", "VARCHAR", description="Asset (= view) name."),
                    dg.TableColumn(
                        "status", "VARCHAR", description="view, or missing (no files yet)."
                    ),
                ]
            )
        },
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
        names = [k.path[-1] for k in parquet_asset_keys]
        result = build_catalog(warehouse.root, catalog.path, names)
        counts = view_row_counts(catalog.path, result["views"])
        if result["missing"]:
            context.log.warning(f"no Parquet files yet for {result['missing']}: no view for them")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(Path(catalog.path).resolve())),
                "views": ", ".join(result["views"]),
                "missing": ", ".join(result["missing"]) or "-",
                "dagster/row_count": len(result["views"]),
                **{f"rows/{v}": n for v, n in counts.items()},
            }
        )

    return duckdb_catalog
