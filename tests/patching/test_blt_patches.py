"""blt_patches materialized from a trained entropy_model into a temporary warehouse."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.patching.blt_patches import (
    BltPatchesConfig,
    blt_patches,
    reassembly_problems,
)
from sphere_assets.patching.contract import BLT_PATCHES_SCHEMA
from tests.patching.materialize import (
    SHARDS,
    checks_of,
    digests,
    metadata_of,
    run,
    with_checks,
)


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
        hist = meta["picture: patch length histogram"]
        assert hist.startswith("![") and "base64," in hist
        assert meta["bytes_per_second"] > 0

        table = pq.read_table(root / "blt_patches" / f"shard={key}" / "part-0.parquet")
        assert table.schema.names == BLT_PATCHES_SCHEMA.names
        raw = store.read_table("raw_articles", key, ["article_id", "text"])
        assert reassembly_problems(key, raw, table) == []
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
    problems = reassembly_problems("0", raw, bad)
    assert problems and "patches != article bytes" in problems[0]
    dropped = table.slice(1)
    assert reassembly_problems("0", raw, dropped)


def test_blt_patches_rematerialization_is_byte_identical(pipeline):
    resources, root, _ = pipeline
    patches_before = digests(root / "blt_patches" / "shard=0")
    run(resources, [blt_patches.key], "0")
    assert digests(root / "blt_patches" / "shard=0") == patches_before


@pytest.mark.slow
def test_worker_processes_give_byte_identical_patches(pipeline):
    """workers=2 (spawned processes, each a model copy, whole articles) writes the same bytes as
    the in-process run the fixture made (small shards stay in-process when workers=0)."""
    resources, root, results = pipeline
    assert metadata_of(results["patches/0"], "blt_patches")["workers"] == 1
    patches_before = digests(root / "blt_patches" / "shard=0")
    res = run(resources, [blt_patches.key], "0", blt_patches=BltPatchesConfig(workers=2))
    meta = metadata_of(res, "blt_patches")
    assert meta["workers"] == 2 and 0 < meta["entropy_share_of_time"] <= 1
    assert digests(root / "blt_patches" / "shard=0") == patches_before


def test_empty_shard_gives_empty_patches_and_passing_checks(pipeline_copy):
    """A shard without articles: zero patch rows, checks pass (on a copy of the warehouse:
    emptying raw_articles shard 3 changes the corpus the model trains on)."""
    resources, root, _ = pipeline_copy
    store = resources["warehouse"].store()
    from sphere_assets.ingest.contract import RAW_ARTICLES_SCHEMA

    with store.partition_writer("raw_articles", "3") as writer:
        writer.write_table(RAW_ARTICLES_SCHEMA.empty_table())
    res = run(resources, with_checks(blt_patches), "3")
    assert all(e.passed for e in checks_of(res).values())
    assert store.read_table("blt_patches", "3").num_rows == 0
