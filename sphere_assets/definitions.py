"""The one Definitions object of the sphere code location: it collects each family's
``defs.py`` and binds the resources, nothing else.

Settings come from environment variables (see README, "Configuration"); an unset variable means
the documented default, a set one always wins (it is passed as dg.EnvVar so the UI shows where
the value came from).
"""

from __future__ import annotations

import os

import dagster as dg

from sphere_assets.catalog import defs as catalog
from sphere_assets.catalog.duckdb_catalog import DuckDBCatalogResource
from sphere_assets.harmonics import defs as harmonics
from sphere_assets.ingest import defs as ingest
from sphere_assets.navigate import defs as navigate
from sphere_assets.ngrams import defs as ngrams
from sphere_assets.ngrams.settings import DEFAULT_MAX_ORDER, DEFAULT_SPAN_PATCHES, HllSetResource
from sphere_assets.patching import defs as patching
from sphere_assets.placements import defs as placements
from sphere_assets.refresh import defs as refresh
from sphere_assets.refresh.automation import apply_orchestration, with_code_references
from sphere_assets.refresh.jobs import executor_from_env
from sphere_resources.contracts import DEFAULT_CATALOG_PATH, DEFAULT_WAREHOUSE_ROOT
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.postgres import PostgresResource
from sphere_resources.warehouse import WarehouseResource


def env_or(name: str, default, kind: str = "str"):
    """dg.EnvVar(name) when the variable is set, else the documented default."""
    if name not in os.environ:
        return default
    return dg.EnvVar.int(name) if kind == "int" else dg.EnvVar(name)


FAMILIES = (ingest, harmonics, patching, ngrams, placements, navigate)
FAMILY_ASSETS: list = [a for family in FAMILIES for a in family.ASSETS]
FAMILY_CHECKS: list = [c for family in FAMILIES for c in family.CHECKS]
# duckdb_catalog over every Parquet asset; postgres_catalog only when SPHERE_POSTGRES_URL is set
CATALOG_ASSETS, CATALOG_CHECKS = catalog.catalog_definitions(FAMILY_ASSETS)
duckdb_catalog = CATALOG_ASSETS[0]
# automation conditions, code versions, contract column schemas, table names and source-code
# links for every asset (refresh/automation.py)
ALL_ASSETS = with_code_references(apply_orchestration([*FAMILY_ASSETS, *CATALOG_ASSETS]))

RESOURCES = {
    "warehouse": WarehouseResource(root=env_or("SPHERE_WAREHOUSE", DEFAULT_WAREHOUSE_ROOT)),
    "catalog": DuckDBCatalogResource(path=env_or("SPHERE_CATALOG", DEFAULT_CATALOG_PATH)),
    "corpus": CorpusSourceResource(
        kind=env_or("SPHERE_CORPUS", "bundled"),
        path_glob=env_or("SPHERE_CORPUS_GLOB", ""),
        hf_name=env_or("SPHERE_HF_NAME", ""),
        hf_config=env_or("SPHERE_HF_CONFIG", ""),
        hf_split=env_or("SPHERE_HF_SPLIT", "train"),
        hf_data_files=env_or("SPHERE_HF_DATA_FILES", ""),
        limit=env_or("SPHERE_CORPUS_LIMIT", 0, "int"),
        id_field=env_or("SPHERE_ID_FIELD", "id"),
        title_field=env_or("SPHERE_TITLE_FIELD", "title"),
        text_field=env_or("SPHERE_TEXT_FIELD", "text"),
        max_article_bytes=env_or("SPHERE_MAX_ARTICLE_BYTES", 16 << 20, "int"),
    ),
    "jax": JaxDeviceResource(platform=env_or("SPHERE_JAX_PLATFORM", "cpu")),
    "postgres": PostgresResource(url=env_or("SPHERE_POSTGRES_URL", "")),
    "hll": HllSetResource(
        p=env_or("SPHERE_HLL_P", 10, "int"),
        span_patches=env_or("SPHERE_HLL_SPAN", DEFAULT_SPAN_PATCHES, "int"),
        context_order=env_or("SPHERE_HLL_CONTEXT_ORDER", DEFAULT_MAX_ORDER, "int"),
    ),
}

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*FAMILY_CHECKS, *CATALOG_CHECKS],
    jobs=refresh.jobs_for(ALL_ASSETS),
    schedules=refresh.SCHEDULES,
    sensors=refresh.SENSORS,
    resources=RESOURCES,
    executor=executor_from_env(),  # SPHERE_EXECUTOR: multiprocess (default) | celery
)
