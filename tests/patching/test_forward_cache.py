"""One model pass for blt_patches and patch_embeddings (patch_forward_cache): byte-identical
files, the cache used only when it matches, and removed after use."""

from __future__ import annotations

import shutil

import pytest

from sphere_assets.patching import io
from sphere_assets.patching.blt_patches import BltPatchesConfig, blt_patches
from sphere_assets.patching.contract import PATCH_FORWARD_CACHE
from sphere_assets.patching.patch_embeddings import patch_embeddings
from tests.patching.materialize import checks_of, digests, metadata_of, run, with_checks

pytestmark = pytest.mark.slow

DATA_FILES = ("part-0.parquet", "embeddings.safetensors", "blt_v3.safetensors")


def shard_files(root, key: str) -> dict[str, str]:
    """sha256 of the data files of blt_patches and patch_embeddings shard ``key``."""
    return {
        name: digest
        for name, digest in digests(root).items()
        if name.startswith((f"blt_patches/shard={key}/", f"patch_embeddings/shard={key}/"))
        and name.endswith(DATA_FILES)
    }


def test_one_run_is_one_pass_with_identical_files(pipeline, pipeline_copy):
    _, root, _ = pipeline
    resources, copy, _ = pipeline_copy
    # the fixture made both assets in separate runs: two model passes
    before = shard_files(root, "0")
    assert len(before) == 4
    for path in before:
        (copy / path).unlink()
    result = run(
        resources,
        with_checks(blt_patches) | with_checks(patch_embeddings),
        "0",
    )
    assert shard_files(copy, "0") == before
    assert metadata_of(result, "blt_patches")["forward_pass"].startswith("shared")
    assert metadata_of(result, "patch_embeddings")["forward_pass"].startswith("shared")
    assert all(e.passed for e in checks_of(result).values())
    # the cache is gone (partition and asset directory)
    assert not (copy / PATCH_FORWARD_CACHE.name).exists()


def test_stale_cache_is_not_used_and_is_removed(pipeline_copy):
    resources, copy, _ = pipeline_copy
    store = resources["warehouse"].store()
    cache_dir = copy / PATCH_FORWARD_CACHE.name / "shard=0"
    run(resources, [blt_patches.key], "0", blt_patches=BltPatchesConfig(share_forward_pass=True))
    assert io.forward_cache_settings(store, "0")["model_sha256"]
    kept = copy.parent / "kept_cache"
    shutil.copytree(cache_dir, kept)
    # other patches (a fixed θ), patched without the cache: the stale one is removed...
    run(
        resources,
        [blt_patches.key],
        "0",
        blt_patches=BltPatchesConfig(threshold=0.5, share_forward_pass=False),
    )
    assert io.forward_cache_settings(store, "0") is None
    # ... and when it comes back anyway, patch_embeddings sees it does not match
    shutil.copytree(kept, cache_dir)
    result = run(resources, with_checks(patch_embeddings), "0")
    assert metadata_of(result, "patch_embeddings")["forward_pass"] == "own model pass"
    assert all(e.passed for e in checks_of(result).values())
    assert io.forward_cache_settings(store, "0") is None
