"""The one Definitions object of the sphere code location.

Settings come from environment variables (see README, "Configuration"); an unset variable means
the documented default, a set one always wins (it is passed as dg.EnvVar so the UI shows where
the value came from).
"""

from __future__ import annotations

import os

import dagster as dg

from sphere_assets.catalog import duckdb_catalog as catalog
from sphere_assets.catalog import postgres_catalog as publish
from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.ngrams import assets as ngrams
from sphere_assets.ngrams.settings import DEFAULT_MAX_ORDER, DEFAULT_SPAN_PATCHES, HllSetResource
from sphere_assets.patching import assets as patching
from sphere_assets.placements import shell_placements as placements
from sphere_assets.refresh import automation, jobs, schedules, sensors
from sphere_resources.contracts import CONTRACTS, DEFAULT_CATALOG_PATH, DEFAULT_WAREHOUSE_ROOT
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.postgres import PostgresResource
from sphere_resources.warehouse import WarehouseResource


def env_or(name: str, default, kind: str = "str"):
    """dg.EnvVar(name) when the variable is set, else the documented default."""
    if name not in os.environ:
        return default
    return dg.EnvVar.int(name) if kind == "int" else dg.EnvVar(name)


# --- assets and checks, one module per family -------------------------------------------------
FAMILY_ASSETS: list = [
    ingest.raw_articles,
    harmonics.sh_basis,
    patching.entropy_model,
    patching.blt_patches,
    patching.patch_embeddings,
    *ngrams.ASSETS,
    *placements.ASSETS,
]
FAMILY_CHECKS: list = [
    ingest.raw_articles_ids_unique_and_sharded,
    harmonics.sh_basis_orthonormal,
    patching.entropy_model_beats_unigram,
    patching.blt_patches_reassemble,
    patching.patch_embeddings_consistent,
    *ngrams.CHECKS,
    *placements.CHECKS,
]


def _parquet_asset_keys(assets_defs) -> list[dg.AssetKey]:
    keys = []
    for a in assets_defs:
        for key in a.keys:
            name = key.path[-1]
            if name in CONTRACTS and CONTRACTS[name].has_rows:
                keys.append(key)
    return sorted(keys, key=lambda k: k.to_user_string())


duckdb_catalog = catalog.build_catalog_asset(_parquet_asset_keys(FAMILY_ASSETS))
# postgres_catalog + its check exist only when SPHERE_POSTGRES_URL is set (sphere_assets/publish.py),
# so without a server the default job and `sphere materialize-all` leave the publish out.
PUBLISH_ASSETS, PUBLISH_CHECKS = publish.publish_definitions(FAMILY_ASSETS)
# automation conditions + contract column schemas for every asset (sphere_assets/automation.py)
ALL_ASSETS = automation.apply_orchestration([*FAMILY_ASSETS, duckdb_catalog, *PUBLISH_ASSETS])

RESOURCES = {
    "warehouse": WarehouseResource(root=env_or("SPHERE_WAREHOUSE", DEFAULT_WAREHOUSE_ROOT)),
    "catalog": catalog.DuckDBCatalogResource(path=env_or("SPHERE_CATALOG", DEFAULT_CATALOG_PATH)),
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

# <group>_job per family + shards_job/global_job/band_limits_job, with retries (sphere_assets/jobs.py)
JOBS: list = jobs.family_jobs(ALL_ASSETS)
SCHEDULES: list = [schedules.nightly_shard_refresh]
SENSORS: list = [sensors.incoming_files_sensor, automation.automation_sensor()]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*FAMILY_CHECKS, *PUBLISH_CHECKS],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=RESOURCES,
    executor=jobs.executor_from_env(),  # SPHERE_EXECUTOR: multiprocess (default) | celery
)
