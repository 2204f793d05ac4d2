"""entropy_model trained on the bundled corpus into a temporary warehouse."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text.torch_runtime import resolve_device
from sphere_assets.patching import io
from sphere_assets.patching.contract import ENTROPY_MODEL_SCHEMA
from sphere_assets.patching.entropy_model import EntropyModelAssetConfig, entropy_model
from sphere_resources.store import read_safetensors
from tests.patching.materialize import MODEL_CONFIG, checks_of, digests, metadata_of, run


def test_entropy_model_files_metadata_and_check(pipeline):
    resources, root, results = pipeline
    res = results["model"]
    files = sorted(p.name for p in (root / "entropy_model").iterdir())
    assert files == ["_manifest.json", "heldout.safetensors", "model.safetensors", "part-0.parquet"]
    meta = metadata_of(res, "entropy_model")
    assert meta["heldout_bits_per_byte"] < meta["unigram_bits_per_byte"]
    assert meta["config"]["dim"] == 32 and meta["config"]["steps"] == 60
    assert checks_of(res)["entropy_model_beats_unigram"].passed

    model, file_meta = em.model_from_file_tensors(
        *read_safetensors(root / "entropy_model" / "model.safetensors")
    )
    assert model.config == MODEL_CONFIG.to_model_config()
    assert file_meta["format"] == em.MODEL_FORMAT
    row = pq.read_table(root / "entropy_model" / "part-0.parquet")
    assert row.schema.names == ENTROPY_MODEL_SCHEMA.names and row.num_rows == 1
    data = (root / "entropy_model" / "model.safetensors").read_bytes()
    assert row.column("model_sha256")[0].as_py() == hashlib.sha256(data).hexdigest()
    store = resources["warehouse"].store()
    segments = io.load_heldout_segments(store)
    assert segments and all(len(s) >= 2 for s in segments)


def test_entropy_model_rematerialization_is_byte_identical(pipeline):
    resources, root, _ = pipeline
    before = digests(root / "entropy_model")
    run(resources, [entropy_model.key], entropy_model=MODEL_CONFIG)
    assert digests(root / "entropy_model") == before


def test_config_validation():
    cfg = EntropyModelAssetConfig(preset="base", steps=10).to_model_config()
    assert cfg.dim == 256 and cfg.steps == 10
    with pytest.raises(ValueError, match="preset"):
        EntropyModelAssetConfig(preset="huge").to_model_config()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
