"""patch_embeddings pooled from blt_patches and the entropy model into a temporary warehouse."""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.contract import PATCH_EMBEDDINGS_SCHEMA
from sphere_assets.patching.patch_embeddings import PatchEmbeddingsConfig, patch_embeddings
from tests.lib.text.blt_v3_files import load_blt_v3
from tests.patching.materialize import (
    ASSETS,
    SHARDS,
    checks_of,
    digests,
    metadata_of,
    run,
    with_checks,
)


def test_patch_embeddings_files_join_and_v3_export(pipeline):
    resources, root, results = pipeline
    store = resources["warehouse"].store()
    for key in SHARDS:
        res = results[f"embeddings/{key}"]
        assert checks_of(res)["patch_embeddings_consistent"].passed
        part = root / "patch_embeddings" / f"shard={key}"
        assert sorted(p.name for p in part.iterdir()) == [
            "_manifest.json",
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
        v3, v3_meta = load_blt_v3(part / "blt_v3.safetensors")
        assert v3_meta["format"] == "blt_patches_v3"
        assert int(v3_meta["num_patches"]) == patches.num_rows
        assert int(v3["patch_lengths"].sum()) == v3["bytes"].size == int(v3_meta["total_bytes"])
        raw = store.read_table("raw_articles", key, ["text"]).column("text").to_pylist()
        assert v3["bytes"].tobytes() == "".join(raw).encode("utf-8")
        np.testing.assert_array_equal(v3["embeddings"], arrays["embeddings"])


def test_duckdb_views_join_patches_embeddings_and_articles(pipeline):
    from sphere_assets.definitions import duckdb_catalog

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


def test_patch_embeddings_rematerialization_is_byte_identical(pipeline):
    resources, root, _ = pipeline
    emb_before = digests(root / "patch_embeddings" / "shard=0")
    run(resources, [patch_embeddings.key], "0")
    assert digests(root / "patch_embeddings" / "shard=0") == emb_before


@pytest.mark.slow
def test_worker_processes_give_byte_identical_embeddings(pipeline):
    """workers=2 (spawned processes, each a model copy, whole articles) writes the same bytes as
    the in-process run the fixture made."""
    resources, root, results = pipeline
    assert metadata_of(results["embeddings/0"], "patch_embeddings")["workers"] == 1
    emb_before = digests(root / "patch_embeddings" / "shard=0")
    res = run(
        resources,
        [patch_embeddings.key],
        "0",
        patch_embeddings=PatchEmbeddingsConfig(workers=2),
    )
    assert metadata_of(res, "patch_embeddings")["workers"] == 2
    assert digests(root / "patch_embeddings" / "shard=0") == emb_before


@pytest.mark.slow
def test_minilm_embedder_option(pipeline_copy, minilm_installed):
    """embedder=minilm swaps the vectors (384-d) and keeps prominence from the entropy model
    (on a copy of the warehouse: the shared one keeps the entropy-model vectors)."""
    resources, root, _ = pipeline_copy
    store = resources["warehouse"].store()
    before, _ = store.read_tensors("patch_embeddings", "1", "embeddings")
    res = run(
        resources,
        with_checks(patch_embeddings),
        "1",
        patch_embeddings=PatchEmbeddingsConfig(embedder="minilm"),
    )
    assert checks_of(res)["patch_embeddings_consistent"].passed
    arrays, meta = store.read_tensors("patch_embeddings", "1", "embeddings")
    assert arrays["embeddings"].shape == (before["embeddings"].shape[0], 384)
    np.testing.assert_array_equal(arrays["prominence"], before["prominence"])
    assert meta["embedder"] == "minilm"


def test_empty_shard_gives_empty_embeddings_and_passing_checks(pipeline_copy):
    """A shard without articles: zero patch rows, empty tensors, v3 with 0 bytes, checks pass
    (on a copy of the warehouse: emptying raw_articles shard 3 changes the corpus the model
    trains on)."""
    resources, root, _ = pipeline_copy
    store = resources["warehouse"].store()
    from sphere_assets.ingest.contract import RAW_ARTICLES_SCHEMA

    with store.partition_writer("raw_articles", "3") as writer:
        writer.write_table(RAW_ARTICLES_SCHEMA.empty_table())
    res = run(resources, with_checks(blt_patches), "3")
    assert all(e.passed for e in checks_of(res).values())
    assert store.read_table("blt_patches", "3").num_rows == 0
    res = run(resources, with_checks(patch_embeddings), "3")
    assert checks_of(res)["patch_embeddings_consistent"].passed
    arrays, _ = store.read_tensors("patch_embeddings", "3", "embeddings")
    assert arrays["embeddings"].shape == (0, 32)
    v3, meta = store.read_tensors("patch_embeddings", "3", "blt_v3")
    assert v3["bytes"].size == 0 and meta["num_patches"] == "0"
