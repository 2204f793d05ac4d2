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
    assert files == [
        "_manifest.json",
        "calibration.safetensors",
        "heldout.safetensors",
        "model.safetensors",
        "part-0.parquet",
    ]
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


def test_calibration_sample_covers_every_shard(pipeline):
    """θ's calibration sample: every shard (the bundled corpus is under the 1 MiB budget, so
    every shard whole), said in entropy_model's and blt_patches' metadata."""
    resources, root, results = pipeline
    store = resources["warehouse"].store()
    raw = pq.read_table(root / "raw_articles", columns=["n_bytes"])
    segments, sample = io.load_calibration_segments(store)
    arrays, _ = store.read_tensors("entropy_model", None, "calibration")
    assert sorted(set(arrays["segment_shard"].tolist())) == [0, 1, 2, 3]
    assert sum(len(s) - 1 for s in segments) == (sum(raw.column("n_bytes").to_pylist()))
    meta = metadata_of(results["model"], "entropy_model")
    assert meta["calibration_shards_covered"] == 4 == meta["shards"]
    assert meta["calibration_shards_whole"] == 4 and meta["calibration_share_of_corpus"] == 1.0
    assert meta["calibration_articles"] == len(segments) == raw.num_rows
    assert meta["sample_shards_covered"] == 4 and meta["sample_articles"] > 0
    assert int(sample["calibration_bytes"]) == meta["calibration_bytes"]
    patches = metadata_of(results["patches/0"], "blt_patches")
    assert patches["calibration_sample/shards_covered"] == 4
    assert patches["calibration_sample/articles"] == raw.num_rows
    assert patches["calibration_bytes"] == meta["calibration_bytes"]


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
