"""The ngrams family over synthetic blt_patches: the corpus, a warehouse holding its shards, and
the whole family materialized once for the package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sphere_assets.lib.sketch import synthetic_patches as sp
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource
from tests.ngrams.materialize import SPAN, P, materialize_all, write_patch_shards


@pytest.fixture(scope="package")
def corpus():
    full = sp.bundled_corpus(mode="random", seed=3)
    keep = list(range(0, len(full.article_ids), 3))
    return {full.article_ids[i]: full.article_patches(i) for i in keep}


@pytest.fixture
def hll_resources(resources, corpus):
    """The shared resources + hll, with blt_patches shards written into the warehouse."""
    write_patch_shards(Warehouse(resources["warehouse"].root), corpus)
    return {**resources, "hll": HllSetResource(p=P, span_patches=SPAN)}


@pytest.fixture(scope="package")
def materialized(tmp_path_factory, corpus):
    """(root, result of the global run): every shard and global asset and check materialized
    once (every check passing) into a warehouse the tests only read."""
    root = tmp_path_factory.mktemp("ngrams") / "warehouse"
    write_patch_shards(Warehouse(root), corpus)
    res = {
        "warehouse": WarehouseResource(root=str(root)),
        "hll": HllSetResource(p=P, span_patches=SPAN),
    }
    return Path(root), materialize_all(res)
