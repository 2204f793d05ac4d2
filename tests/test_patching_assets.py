"""entropy_model -> blt_patches -> patch_embeddings materialized into a temporary warehouse."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import duckdb_catalog
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.patching import assets as patching
from sphere_assets.patching.contract import (
    BLT_PATCHES_SCHEMA,
    ENTROPY_MODEL_SCHEMA,
    PATCH_EMBEDDINGS_SCHEMA,
)

ASSETS = [
    ingest.raw_articles,
    patching.entropy_model,
    patching.entropy_model_beats_unigram,
    patching.blt_patches,
    patching.blt_patches_reassemble,
    patching.patch_embeddings,
    patching.patch_embeddings_consistent,
]
# a tiny training budget: the test is about the wiring, not the model's quality
MODEL_CONFIG = patching.EntropyModelAssetConfig(
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


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="module")
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
    model_selection = dg.AssetSelection.assets(patching.entropy_model) | (
        dg.AssetSelection.checks_for_assets(patching.entropy_model)
    )
    results = {"model": run(resources, model_selection, entropy_model=MODEL_CONFIG)}
    for key in SHARDS:
        results[f"patches/{key}"] = run(
            resources,
            dg.AssetSelection.assets(patching.blt_patches)
            | dg.AssetSelection.checks_for_assets(patching.blt_patches),
            key,
        )
        results[f"embeddings/{key}"] = run(
            resources,
            dg.AssetSelection.assets(patching.patch_embeddings)
            | dg.AssetSelection.checks_for_assets(patching.patch_embeddings),
            key,
        )
    return resources, Path(resources["warehouse"].root), results


def test_entropy_model_files_metadata_and_check(pipeline):
    resources, root, results = pipeline
    res = results["model"]
    files = sorted(p.name for p in (root / "entropy_model").iterdir())
    assert files == ["heldout.safetensors", "model.safetensors", "part-0.parquet"]
    meta = metadata_of(res, "entropy_model")
    assert meta["heldout_bits_per_byte"] < meta["unigram_bits_per_byte"]
    assert meta["config"]["dim"] == 32 and meta["config"]["steps"] == 60
    assert checks_of(res)["entropy_model_beats_unigram"].passed

    model, file_meta = em.load_entropy_model(root / "entropy_model" / "model.safetensors")
    assert model.config == MODEL_CONFIG.to_model_config()
    assert file_meta["format"] == em.MODEL_FORMAT
    row = pq.read_table(root / "entropy_model" / "part-0.parquet")
    assert row.schema.names == ENTROPY_MODEL_SCHEMA.names and row.num_rows == 1
    data = (root / "entropy_model" / "model.safetensors").read_bytes()
    assert row.column("model_sha256")[0].as_py() == hashlib.sha256(data).hexdigest()
    store = resources["warehouse"].store()
    segments = patching.load_heldout_segments(store)
    assert segments and all(len(s) >= 2 for s in segments)


def test_blt_patches_rows_reassemble_and_metadata(pipeline):
    resources, root, results = pipeline
    store = resources["warehouse"].store()
    for key in SHARDS:
        res = results[f"patches/{key}"]
        checks = checks_of(res)
        assert checks["blt_patches_reassemble"].passed
        assert checks["mean_patch_size_near_target"].passed, checks[
            "mean_patch_size_near_target"
        ].metadata
        meta = metadata_of(res, "blt_patches")
        assert meta["threshold_nats"] > 0 and meta["calibrated"] is True
        assert abs(meta["mean_patch_bytes"] - 4.5) <= 0.45
        assert (
            sum(meta[f"bucket/{b}"] for b in ("<=4", "5-12", "13-24", "25-48", "49-127", ">=128"))
            == meta["patches"]
        )
        assert meta["length_histogram"].startswith("![") and "base64," in meta["length_histogram"]
        assert meta["bytes_per_second"] > 0

        table = pq.read_table(root / "blt_patches" / f"shard={key}" / "part-0.parquet")
        assert table.schema.names == BLT_PATCHES_SCHEMA.names
        raw = store.read_table("raw_articles", key, ["article_id", "text"])
        assert patching.reassembly_problems(key, raw, table) == []
        assert table.column("byte_len").to_numpy().max() <= 128
    # one θ for every shard: the same held-out text and config
    thetas = {metadata_of(results[f"patches/{k}"], "blt_patches")["threshold_nats"] for k in SHARDS}
    assert len(thetas) == 1


def test_reassembly_detects_a_corrupted_shard(pipeline):
    resources, root, _ = pipeline
    store = resources["warehouse"].store()
    raw = store.read_table("raw_articles", "0", ["article_id", "text"])
    table = pq.read_table(root / "blt_patches" / "shard=0" / "part-0.parquet")
    patches = table.column("patch").to_pylist()
    patches[3] = patches[3][:-1] + b"#"
    bad = table.set_column(4, "patch", pa.array(patches, pa.binary()))
    problems = patching.reassembly_problems("0", raw, bad)
    assert problems and "patches != article bytes" in problems[0]
    dropped = table.slice(1)
    assert patching.reassembly_problems("0", raw, dropped)


def test_patch_embeddings_files_join_and_v3_export(pipeline):
    resources, root, results = pipeline
    store = resources["warehouse"].store()
    for key in SHARDS:
        res = results[f"embeddings/{key}"]
        assert checks_of(res)["patch_embeddings_consistent"].passed
        part = root / "patch_embeddings" / f"shard={key}"
        assert sorted(p.name for p in part.iterdir()) == [
            "blt_v3.safetensors",
            "embeddings.safetensors",
            "part-0.parquet",
        ]
        arrays, meta = store.read_tensors("patch_embeddings", key, "embeddings")
        patches = store.read_table("blt_patches", key)
        assert arrays["embeddings"].shape == (patches.num_rows, 32)
        np.testing.assert_allclose(
            np.linalg.norm(arrays["embeddings"].astype(np.float64), axis=1),
            arrays["prominence"],
            rtol=1e-5,
        )
        side = pq.read_table(part / "part-0.parquet")
        assert side.schema.names == PATCH_EMBEDDINGS_SCHEMA.names
        # the pooled patch entropy agrees with blt_patches' mean_entropy (same model, same chunks)
        np.testing.assert_allclose(
            side.column("patch_entropy").to_numpy(),
            patches.column("mean_entropy").to_numpy(),
            atol=1e-5,
        )
        v3, v3_meta = pe.load_blt_v3(part / "blt_v3.safetensors")
        assert v3_meta["format"] == "blt_patches_v3"
        assert int(v3_meta["num_patches"]) == patches.num_rows
        assert int(v3["patch_lengths"].sum()) == v3["bytes"].size == int(v3_meta["total_bytes"])
        raw = store.read_table("raw_articles", key, ["text"]).column("text").to_pylist()
        assert v3["bytes"].tobytes() == "".join(raw).encode("utf-8")
        np.testing.assert_array_equal(v3["embeddings"], arrays["embeddings"])


def test_duckdb_views_join_patches_embeddings_and_articles(pipeline):
    resources, root, _ = pipeline
    res = dg.materialize(
        [*ASSETS, duckdb_catalog],
        selection=[duckdb_catalog],
        resources=resources,
    )
    assert res.success
    con = duckdb.connect(resources["catalog"].path, read_only=True)
    try:
        rows = con.execute(
            """
            select p.shard, count(*) as patches, sum(p.byte_len) as bytes,
                   count(e.prominence) as with_embedding
            from blt_patches p
            left join patch_embeddings e
              on e.shard = p.shard and e.article_id = p.article_id
             and e.patch_index = p.patch_index
            group by 1 order by 1
            """
        ).fetchall()
        raw = dict(
            con.execute(
                "select shard, sum(n_bytes) from raw_articles where shard in (0, 1) group by 1"
            ).fetchall()
        )
        model = con.execute(
            "select heldout_bits_per_byte < unigram_bits_per_byte from entropy_model"
        ).fetchone()
    finally:
        con.close()
    assert [r[0] for r in rows] == [0, 1]
    for shard, patches, n_bytes, with_embedding in rows:
        assert patches == with_embedding and n_bytes == raw[shard]
    assert model == (True,)


def test_rematerialization_is_byte_identical(pipeline):
    resources, root, _ = pipeline
    before = digests(root / "entropy_model")
    run(resources, [patching.entropy_model.key], entropy_model=MODEL_CONFIG)
    assert digests(root / "entropy_model") == before
    patches_before = digests(root / "blt_patches" / "shard=0")
    emb_before = digests(root / "patch_embeddings" / "shard=0")
    run(resources, [patching.blt_patches.key], "0")
    run(resources, [patching.patch_embeddings.key], "0")
    assert digests(root / "blt_patches" / "shard=0") == patches_before
    assert digests(root / "patch_embeddings" / "shard=0") == emb_before


def test_worker_processes_give_byte_identical_partitions(pipeline):
    """workers=2 (spawned processes, each a model copy, whole articles) writes the same bytes as
    the in-process run the fixture made (small shards stay in-process when workers=0)."""
    resources, root, results = pipeline
    assert metadata_of(results["patches/0"], "blt_patches")["workers"] == 1
    patches_before = digests(root / "blt_patches" / "shard=0")
    emb_before = digests(root / "patch_embeddings" / "shard=0")
    res = run(
        resources, [patching.blt_patches.key], "0", blt_patches=patching.BltPatchesConfig(workers=2)
    )
    meta = metadata_of(res, "blt_patches")
    assert meta["workers"] == 2 and 0 < meta["entropy_share_of_time"] <= 1
    assert digests(root / "blt_patches" / "shard=0") == patches_before
    res = run(
        resources,
        [patching.patch_embeddings.key],
        "0",
        patch_embeddings=patching.PatchEmbeddingsConfig(workers=2),
    )
    assert metadata_of(res, "patch_embeddings")["workers"] == 2
    assert digests(root / "patch_embeddings" / "shard=0") == emb_before


@pytest.mark.slow
def test_minilm_embedder_option(pipeline, minilm_installed):
    """embedder=minilm swaps the vectors (384-d) and keeps prominence from the entropy model."""
    resources, root, _ = pipeline
    store = resources["warehouse"].store()
    before, _ = store.read_tensors("patch_embeddings", "1", "embeddings")
    selection = dg.AssetSelection.assets(patching.patch_embeddings) | (
        dg.AssetSelection.checks_for_assets(patching.patch_embeddings)
    )
    res = run(
        resources,
        selection,
        "1",
        patch_embeddings=patching.PatchEmbeddingsConfig(embedder="minilm"),
    )
    assert checks_of(res)["patch_embeddings_consistent"].passed
    arrays, meta = store.read_tensors("patch_embeddings", "1", "embeddings")
    assert arrays["embeddings"].shape == (before["embeddings"].shape[0], 384)
    np.testing.assert_array_equal(arrays["prominence"], before["prominence"])
    assert meta["embedder"] == "minilm"


def test_config_validation():
    cfg = patching.EntropyModelAssetConfig(preset="base", steps=10).to_model_config()
    assert cfg.dim == 256 and cfg.steps == 10
    with pytest.raises(ValueError, match="preset"):
        patching.EntropyModelAssetConfig(preset="huge").to_model_config()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            em.resolve_device("cuda")


def test_empty_shard_gives_empty_partitions_and_passing_checks(pipeline):
    """A shard without articles: zero patch rows, empty tensors, v3 with 0 bytes, checks pass.

    Runs last: it empties raw_articles shard 3, which changes the corpus the model trains on."""
    resources, root, _ = pipeline
    store = resources["warehouse"].store()
    from sphere_assets.ingest.contract import RAW_ARTICLES_SCHEMA

    with store.partition_writer("raw_articles", "3") as writer:
        writer.write_table(RAW_ARTICLES_SCHEMA.empty_table())
    res = run(
        resources,
        dg.AssetSelection.assets(patching.blt_patches)
        | dg.AssetSelection.checks_for_assets(patching.blt_patches),
        "3",
    )
    assert all(e.passed for e in checks_of(res).values())
    assert store.read_table("blt_patches", "3").num_rows == 0
    res = run(
        resources,
        dg.AssetSelection.assets(patching.patch_embeddings)
        | dg.AssetSelection.checks_for_assets(patching.patch_embeddings),
        "3",
    )
    assert checks_of(res)["patch_embeddings_consistent"].passed
    arrays, _ = store.read_tensors("patch_embeddings", "3", "embeddings")
    assert arrays["embeddings"].shape == (0, 32)
    v3, meta = store.read_tensors("patch_embeddings", "3", "blt_v3")
    assert v3["bytes"].size == 0 and meta["num_patches"] == "0"
