"""The patching pipeline, materialized once for the package's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sphere_assets.core.partitions import shard_keys
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.entropy_model import entropy_model
from sphere_assets.patching.patch_embeddings import patch_embeddings
from tests.patching.materialize import MODEL_CONFIG, SHARDS, run, with_checks


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def pipeline(tmp_path_factory):
    """raw_articles (all shards) -> entropy_model -> blt_patches/patch_embeddings for 2 shards."""
    from sphere_assets.catalog.duckdb_catalog import DuckDBCatalogResource
    from sphere_resources.corpus import CorpusSourceResource
    from sphere_resources.warehouse import WarehouseResource

    tmp = tmp_path_factory.mktemp("patching")
    resources = {
        "warehouse": WarehouseResource(root=str(tmp / "warehouse")),
        "catalog": DuckDBCatalogResource(path=str(tmp / "sphere.duckdb")),
        "corpus": CorpusSourceResource(kind="bundled"),
    }
    torch.set_num_threads(1)
    for key in shard_keys():
        run(resources, [ingest.raw_articles.key], key)
    results = {"model": run(resources, with_checks(entropy_model), entropy_model=MODEL_CONFIG)}
    for key in SHARDS:
        results[f"patches/{key}"] = run(resources, with_checks(blt_patches), key)
        results[f"embeddings/{key}"] = run(resources, with_checks(patch_embeddings), key)
    return resources, Path(resources["warehouse"].root), results


@pytest.fixture
def pipeline_copy(pipeline, tmp_path):
    """A private copy of the pipeline's warehouse, for tests that change what they read (so
    the shared warehouse stays the same for every other test, in any order)."""
    from sphere_resources.warehouse import WarehouseResource

    resources, root, results = pipeline
    copy = tmp_path / "warehouse"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".staging", ".trash"))
    return {**resources, "warehouse": WarehouseResource(root=str(copy))}, copy, results
