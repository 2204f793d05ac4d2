"""Shared helpers of the patching tests: the asset list, a tiny model config, materialize and
read back (the fixtures built from them are in ``conftest.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.patching.blt_patches import blt_patches, blt_patches_reassemble
from sphere_assets.patching.entropy_model import (
    EntropyModelAssetConfig,
    entropy_model,
    entropy_model_beats_unigram,
)
from sphere_assets.patching.patch_embeddings import patch_embeddings, patch_embeddings_consistent

ASSETS = [
    ingest.raw_articles,
    entropy_model,
    entropy_model_beats_unigram,
    blt_patches,
    blt_patches_reassemble,
    patch_embeddings,
    patch_embeddings_consistent,
]
# a tiny training budget: the test is about the wiring, not the model's quality
MODEL_CONFIG = EntropyModelAssetConfig(
    dim=32,
    n_layers=1,
    n_heads=2,
    window=16,
    seq_len=64,
    batch_size=16,
    steps=60,
    lr=1e-2,
    warmup_steps=6,
    sample_bytes=150_000,
    holdout_fraction=0.1,
    max_eval_bytes=20_000,
)
SHARDS = ["0", "1"]


def run(resources, selection, partition_key=None, **configs):
    """Materialize ``selection``; configs are dagster Config objects keyed by asset name."""
    ops = dict(configs)
    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        resources=resources,
        run_config=dg.RunConfig(ops=ops),
    )
    assert result.success
    return result


def with_checks(asset) -> dg.AssetSelection:
    return dg.AssetSelection.assets(asset) | dg.AssetSelection.checks_for_assets(asset)


def metadata_of(result, asset):
    (mat,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in mat.metadata.items()}


def checks_of(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
