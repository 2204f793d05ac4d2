"""sphere_map materialized into a temporary warehouse; shell_placements placing with it.

Files and the fit-report row (on disk and through DuckDB), the instance's metadata, the check;
the same embedding gets the same map direction and score in two shards, bit for bit; a shard
the map never saw is placed out of sample with a drift figure; bad input and a missing map fail
with errors that name the asset.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pytest

from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.lib.sphere import sphere_map as sm
from sphere_assets.placements import io as placements_io
from sphere_assets.placements import shell_placements as placements
from sphere_assets.placements import sphere_map
from sphere_assets.placements.contract import SPHERE_MAP_SCHEMA
from tests.placements.test_shell_placements import (
    ASSETS,
    SMALL,
    SMALL_MAP,
    fit_map,
    write_embeddings,
)


@pytest.fixture
def shards(resources):
    store = resources["warehouse"].store()
    out = {key: write_embeddings(store, key, 6, seed=int(key)) for key in ("0", "1")}
    res = dg.materialize(
        [harmonics.sh_basis], partition_key=placements.BAND_LIMIT, resources=resources
    )
    assert res.success
    return out


def place(resources, key):
    return dg.materialize(
        ASSETS,
        partition_key=key,
        resources=resources,
        run_config={"ops": {"shell_placements": {"config": SMALL}}},
        raise_on_error=False,
    )


def test_sphere_map_files_row_metadata_and_check(resources, shards):
    res = fit_map(resources)
    assert res.success
    root = Path(resources["warehouse"].root)
    part = root / "sphere_map"
    assert sorted(p.name for p in part.iterdir()) == [
        "_manifest.json",
        "model.safetensors",
        "part-0.parquet",
    ]
    store = resources["warehouse"].store()
    model = placements_io.load_sphere_map(store)
    n_rows = sum(s[0].shape[0] for s in shards.values())
    assert model.method == "neighbour" and model.dim == 16
    assert model.positions.shape[0] == min(SMALL_MAP["sample_size"], n_rows)
    assert model.list_offsets[-1] == model.positions.shape[0]

    con = duckdb.connect()
    row = con.execute(
        f"select sample_rows, corpus_rows, shards, recall_at_10, recall_at_10_pca3 "
        f"from read_parquet('{part / 'part-0.parquet'}')"
    ).fetchone()
    con.close()
    assert row[0] == model.positions.shape[0] and row[1] == n_rows
    assert row[2].startswith("0:") and ", 1:" in row[2]  # both shards in the sample
    assert row[3] > row[4]  # the trained map keeps neighbourhoods better than PCA-3

    (mat,) = res.asset_materializations_for_node("sphere_map")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["dagster/row_count"] == 1
    names = [c.name for c in meta["dagster/column_schema"].columns]
    assert names[: len(SPHERE_MAP_SCHEMA)] == SPHERE_MAP_SCHEMA.names  # then the model tensors
    assert "model.positions" in names
    assert "data:image/png;base64" in meta["picture: the whole map (fit sample, by shard)"]
    assert 0.5 < meta["trustworthiness_at_10"] <= 1.0 and meta["fit_seconds"] > 0
    (check,) = res.get_asset_check_evaluations()
    assert check.check_name == "sphere_map_beats_pca3" and check.passed

    # re-fitting the same sample gives the same bytes
    before = (part / "model.safetensors").read_bytes()
    assert fit_map(resources).success
    assert (part / "model.safetensors").read_bytes() == before


@pytest.mark.slow  # materializes sphere_map and shell_placements twice
def test_same_embedding_same_place_in_any_shard_and_out_of_sample(resources, shards):
    store = resources["warehouse"].store()
    assert fit_map(resources).success
    # shard 2 arrives after the fit: shard 0's vectors followed by new ones
    emb0 = shards["0"][0]
    write_embeddings(store, "2", 4, seed=22)
    extra = store.read_tensors("patch_embeddings", "2", "embeddings")[0]["embeddings"]
    mixed = np.concatenate([extra, emb0]).astype(np.float32)
    arrays, meta = store.read_tensors("patch_embeddings", "0", "embeddings")
    table = store.read_table("patch_embeddings", "0")
    write_shard_rows(store, "2", mixed, arrays, meta, table, extra.shape[0])
    for key in ("0", "2"):
        res = place(resources, key)
        assert res.success, key
    cols = ["map_theta", "map_phi", "score"]
    t0 = store.read_table("shell_placements", "0", cols)
    t2 = store.read_table("shell_placements", "2", cols).slice(extra.shape[0])
    for c in cols:  # bit for bit
        np.testing.assert_array_equal(t0.column(c).to_numpy(), t2.column(c).to_numpy(), c)
    # the map stayed the one fitted before shard 2 existed (no refit), and the drift is reported
    (mat,) = place(resources, "2").asset_materializations_for_node("shell_placements")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert 0.0 <= meta["map_drift"] <= 1.0 and "map_reference_drift" in meta
    assert meta["crowding_0.01deg_after"] <= meta["crowding_0.01deg_before"]


def write_shard_rows(store, key, emb, arrays, meta, table, n_extra):
    """patch_embeddings/shard=key holding ``emb``: the first n_extra rows as written for key,
    then shard 0's rows (keys and side table continued)."""
    own = store.read_tensors("patch_embeddings", key, "embeddings")[0]
    own_v3, own_v3_meta = store.read_tensors("patch_embeddings", key, "blt_v3")
    v3, v3_meta = store.read_tensors("patch_embeddings", "0", "blt_v3")
    own_table = store.read_table("patch_embeddings", key)
    tensors = {
        "embeddings": emb,
        "prominence": np.concatenate([own["prominence"], arrays["prominence"]]),
        "article_index": np.concatenate(
            [own["article_index"], arrays["article_index"] + own["article_index"].max() + 1]
        ).astype(np.int32),
        "patch_index": np.concatenate([own["patch_index"], arrays["patch_index"]]),
    }
    from sphere_assets.lib.text import patch_embeddings as pe

    bytes_ = np.concatenate([own_v3["bytes"], v3["bytes"]])
    lengths = np.concatenate([own_v3["patch_lengths"], v3["patch_lengths"]])
    v3_new, v3_new_meta = pe.blt_v3_arrays(
        bytes_, lengths, np.zeros(bytes_.size, np.float32), emb, tensors["prominence"],
        np.zeros(emb.shape[0], np.float32),
    )  # fmt: skip
    moved = table.set_column(
        table.schema.get_field_index("article_index"), "article_index",
        pa.array(tensors["article_index"][n_extra:]),
    )  # fmt: skip
    side = pa.concat_tables([own_table, moved.cast(own_table.schema)])
    with store.partition_writer("patch_embeddings", key) as w:
        w.write_tensors("embeddings", tensors, meta)
        w.write_tensors("blt_v3", v3_new, v3_new_meta)
        w.write_table(side)


def test_missing_map_names_the_asset_and_the_command(resources, shards):
    res = place(resources, "0")
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    msg = str(failure.event_specific_data.error)
    assert "sphere_map" in msg and "shell_placements" in msg and "materialize" in msg


def test_nan_in_the_sample_fails_naming_the_asset(resources, shards):
    store = resources["warehouse"].store()
    write_embeddings(store, "1", 6, seed=1, bad_row=3)
    res = fit_map(resources)
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    msg = str(failure.event_specific_data.error)
    assert "asset 'sphere_map'" in msg and "NaN/inf" in msg
    assert not (Path(resources["warehouse"].root) / "sphere_map").exists()


def test_empty_corpus_is_a_clear_error(resources):
    res = dg.materialize(
        [sphere_map.sphere_map], resources=resources, raise_on_error=False,
        run_config={"ops": {"sphere_map": {"config": SMALL_MAP}}},
    )  # fmt: skip
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no materialized shard" in str(failure.event_specific_data.error)


def test_fit_config_is_the_library_config():
    built = sphere_map.SphereMapAssetConfig().build()
    assert built == sm.SphereMapConfig()
