"""duckdb_catalog: data/sphere.duckdb with one view per Parquet asset, and its non-blocking check
that every view covers all the partitions its asset should have."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from sphere_assets.catalog import report
from sphere_assets.catalog.contract import DUCKDB_CATALOG_NAME
from sphere_assets.catalog.navigate_sql import create_cone_macros
from sphere_resources.contracts import CONTRACTS, DEFAULT_CATALOG_PATH
from sphere_resources.duckdb_catalog import build_catalog, partition_gaps, view_row_counts
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


def parquet_partitions(assets_defs) -> dict[str, dg.PartitionsDefinition]:
    """asset name -> partitions definition, for the partitioned Parquet assets among
    ``assets_defs`` (what a complete view of each should cover)."""
    out = {}
    for a in assets_defs:
        for key in a.keys:
            name = key.path[-1]
            if name in CONTRACTS and CONTRACTS[name].has_rows and a.partitions_def is not None:
                out[name] = a.partitions_def
    return out


def expected_partitions(partitions: dict[str, dg.PartitionsDefinition]) -> dict[str, list[str]]:
    return {name: list(pd.get_partition_keys()) for name, pd in sorted(partitions.items())}


def build_catalog_asset(
    upstream: list[dg.AssetKey], partitions: dict[str, dg.PartitionsDefinition] | None = None
) -> dg.AssetsDefinition:
    """The catalog over ``upstream`` (every Parquet asset of the code location, see
    :func:`parquet_asset_keys`): it depends on them, so it runs after them. ``partitions``
    (see :func:`parquet_partitions`) are the partitions each view should cover: missing or
    unexpected ones are warnings in the metadata."""
    partitions = partitions or {}

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
        result = build_catalog(warehouse.root, catalog.path, names, expected_partitions(partitions))
        macros = create_cone_macros(catalog.path, result["views"])  # SQL cone queries
        counts = view_row_counts(catalog.path, result["views"])
        if result["missing"]:
            context.log.warning(f"no Parquet files yet for {result['missing']}: no view for them")
        for warning in report.partition_warnings(result):
            context.log.warning(warning)
        metadata = report.duckdb_metadata(str(Path(catalog.path).resolve()), result, counts)
        return dg.MaterializeResult(metadata={**metadata, "macros": ", ".join(macros) or "-"})

    return duckdb_catalog


def build_catalog_check(
    catalog_asset: dg.AssetsDefinition, partitions: dict[str, dg.PartitionsDefinition]
) -> dg.AssetChecksDefinition:
    """Non-blocking (WARN) check: every partitioned Parquet asset with files has all its
    partitions on disk and no unexpected ones, so each view holds the whole asset (an asset
    without any files has no view; the catalog's metadata lists it as missing). It reads the warehouse, so
    it also tells when a partition disappeared after the catalog was built."""

    @dg.asset_check(
        asset=catalog_asset,
        blocking=False,
        description="Every view covers its asset whole: each expected partition (shard, L) has "
        "its Parquet file and no partition outside the partitions definition is on disk "
        "(WARN: the catalog still answers queries over the partitions that exist).",
    )
    def duckdb_catalog_partitions_complete(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        store = warehouse.store()
        gaps, without_files = {}, []
        for name, keys in expected_partitions(partitions).items():
            missing, extra = partition_gaps(store, name, keys)
            if len(missing) == len(keys) and not extra:
                # not materialized at all: the catalog has no view for it (its "missing" list)
                without_files.append(name)
            elif missing or extra:
                gaps[name] = (missing, extra)
        return dg.AssetCheckResult(
            passed=not gaps,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "incomplete_assets": ", ".join(sorted(gaps)) or "-",
                "assets_without_files": ", ".join(without_files) or "-",
                "missing_partitions": dg.MetadataValue.json(
                    {a: m for a, (m, _) in gaps.items() if m}
                ),
                "extra_partitions": dg.MetadataValue.json(
                    {a: e for a, (_, e) in gaps.items() if e}
                ),
            },
        )

    return duckdb_catalog_partitions_complete
