"""shell_placements materialized into a temporary warehouse: files, DuckDB, checks, exports.

patch_embeddings partitions are written synthetically through the warehouse's own contract-
validated writer (training the entropy model is the patching tests' job); sh_basis is
materialized for real.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.patching.contract import PATCH_EMBEDDINGS_SCHEMA
from sphere_assets.placements import io as placements_io
from sphere_assets.placements import shell_placements as placements
from sphere_assets.placements import sphere_map
from sphere_assets.placements.contract import SHELL_PLACEMENTS_SCHEMA
from sphere_resources.store import read_safetensors

ASSETS = [
    placements.shell_placements,
    placements.shell_placements_balanced,
    placements.shell_placements_coordinates_valid,
]
SMALL = {"waterfill": {"n_shells": 16}, "recall_queries": 64, "plot_sample": 500}
SMALL_MAP = {"sample_size": 1500, "steps": 60}


def write_embeddings(store, key: str, n_articles: int, seed: int, dim: int = 16, bad_row=None):
    """A contract-valid patch_embeddings partition: clustered vectors, random patch bytes."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(20, 160, n_articles)
    ids = [f"art-{key}-{a}" for a in range(n_articles)]
    article_index = np.repeat(np.arange(n_articles, dtype=np.int32), lens)
    patch_index = np.concatenate(
        [np.zeros(0, np.int32), *(np.arange(m, dtype=np.int32) for m in lens)]
    )
    p = int(lens.sum())
    centres = rng.standard_normal((6, dim)).astype(np.float32)
    emb = centres[rng.integers(0, 6, p)] + 0.3 * rng.standard_normal((p, dim)).astype(np.float32)
    emb *= np.exp(0.4 * rng.standard_normal(p)).astype(np.float32)[:, None]
    if bad_row is not None:
        emb[bad_row, 0] = np.nan
    prom = np.linalg.norm(np.nan_to_num(emb), axis=1).astype(np.float32)
    patch_lengths = rng.integers(1, 9, p).astype(np.int32)
    data = rng.integers(32, 127, int(patch_lengths.sum())).astype(np.uint8)
    p_ent = rng.random(p).astype(np.float32)
    v3, v3_meta = pe.blt_v3_arrays(
        data, patch_lengths, rng.random(data.size).astype(np.float32), emb, prom, p_ent
    )
    with store.partition_writer("patch_embeddings", key) as w:
        w.write_tensors(
            "embeddings",
            {
                "embeddings": emb,
                "prominence": prom,
                "article_index": article_index,
                "patch_index": patch_index,
            },
            {"embedder": "synthetic"},
        )
        w.write_tensors("blt_v3", v3, v3_meta)
        w.write_table(
            pa.table(
                {
                    "article_id": pa.array([ids[a] for a in article_index], pa.string()),
                    "patch_index": pa.array(patch_index),
                    "article_index": pa.array(article_index),
                    "prominence": pa.array(prom),
                    "patch_entropy": pa.array(p_ent),
                },
                schema=PATCH_EMBEDDINGS_SCHEMA,
            )
        )
    return emb, patch_lengths, data, ids, article_index, patch_index


@pytest.fixture
def upstream(resources):
    store = resources["warehouse"].store()
    shards = {key: write_embeddings(store, key, 6, seed=int(key)) for key in ("0", "1")}
    res = dg.materialize(
        [harmonics.sh_basis], partition_key=placements.BAND_LIMIT, resources=resources
    )
    assert res.success
    assert fit_map(resources).success
    return shards


def fit_map(resources, **config):
    return dg.materialize(
        [sphere_map.sphere_map, sphere_map.sphere_map_beats_pca3],
        resources=resources,
        run_config={"ops": {"sphere_map": {"config": {**SMALL_MAP, **config}}}},
        raise_on_error=False,
    )


def materialize(resources, key, **config):
    return dg.materialize(
        ASSETS,
        partition_key=key,
        resources=resources,
        run_config={"ops": {"shell_placements": {"config": {**SMALL, **config}}}},
        raise_on_error=False,
    )


def metadata_of(result):
    (mat,) = result.asset_materializations_for_node("shell_placements")
    return {k: v.value for k, v in mat.metadata.items()}


def test_lateral_partition_files_checks_and_determinism(resources, upstream):
    res = materialize(resources, "0")
    assert res.success
    root = Path(resources["warehouse"].root)
    part = root / "shell_placements" / "shard=0"
    assert sorted(p.name for p in part.iterdir()) == [
        "_manifest.json",
        "coordinates.safetensors",
        "librarian.safetensors",
        "lvm.safetensors",
        "part-0.parquet",
    ]
    emb, lengths, data, ids, art, pidx = upstream["0"]
    n = emb.shape[0]
    table = pq.read_table(part / "part-0.parquet")
    assert table.schema.names == SHELL_PLACEMENTS_SCHEMA.names and table.num_rows == n
    assert table.column("article_id").to_pylist() == [ids[a] for a in art]
    np.testing.assert_array_equal(table.column("patch_index").to_numpy(), pidx)

    # balance, recomputed independently of the asset's own report
    shells = table.column("shell").to_numpy()
    _, targets = wf.shell_targets(n, wf.WaterfillConfig(n_shells=16))
    counts = np.bincount(shells, minlength=16)
    assert np.all(np.abs(counts - targets) <= np.maximum(1, 0.01 * targets))

    coords, meta = read_safetensors(part / "coordinates.safetensors")
    assert meta["format"] == placements_io.FORMAT and meta["n_shells"] == "16"
    np.testing.assert_array_equal(coords["shell"], shells)
    np.testing.assert_array_equal(coords["xyz"][:, 0], table.column("x").to_numpy())
    np.testing.assert_array_equal(coords["rtp"][:, 2], table.column("phi").to_numpy())

    lib, _ = read_safetensors(part / "librarian.safetensors")
    assert lib["bytes"].shape == (n, int(lengths.max()))
    starts = np.cumsum(lengths) - lengths
    for i in (0, n // 2, n - 1):
        assert bytes(lib["bytes"][i, : lengths[i]]) == bytes(
            data[starts[i] : starts[i] + lengths[i]]
        )
    np.testing.assert_array_equal(lib["target"][:, 0], table.column("r").to_numpy())

    lvm, _ = read_safetensors(part / "lvm.safetensors")
    assert set(lvm) == {"rows"}  # indices into patch_embeddings, no copied windows
    m = lvm["rows"].shape[0]
    assert m == sum(max(c - 5, 0) for c in np.bincount(art))
    assert np.all(art[lvm["rows"]] == art[lvm["rows"][:, :1]])  # windows stay in one article
    np.testing.assert_array_equal(np.diff(pidx[lvm["rows"]], axis=1), 1)  # consecutive patches

    meta = metadata_of(res)
    assert meta["dagster/row_count"] == n and meta["balanced_every_shard"] is True
    assert meta["points_per_s"] > 0 and meta["jax/platform"] == "cpu"
    assert meta["recall_at_10_projection"] > meta["recall_at_10_random"]
    assert "data:image/png;base64" in meta["picture: shell occupancy vs capacity"]
    assert "data:image/png;base64" in meta["picture: points on the sphere (Mollweide, by shell)"]
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert set(checks) == {"shell_placements_balanced", "shell_placements_coordinates_valid"}
    assert all(e.passed for e in checks.values())

    # rows through DuckDB with the Hive shard column
    materialize(resources, "1")
    glob = str(root / "shell_placements" / "*" / "*.parquet")
    got = duckdb.sql(
        f"select shard, count(*) n, min(r) lo, max(r) hi from read_parquet('{glob}', "
        "hive_partitioning=true) group by shard order by shard"
    ).fetchall()
    assert [(str(s), c) for s, c, _, _ in got] == [
        ("0", n),
        ("1", upstream["1"][0].shape[0]),
    ]
    assert all(1.0 <= lo and hi <= 2.0 for _, _, lo, hi in got)
    # and through the catalog view of the registered definitions
    from sphere_assets.definitions import duckdb_catalog

    res = dg.materialize(
        [placements.shell_placements, duckdb_catalog], selection=[duckdb_catalog],
        resources=resources,
    )  # fmt: skip
    assert res.success
    con = duckdb.connect(resources["catalog"].path, read_only=True)
    view = con.execute(
        "select count(*), count(distinct shard), max(shell) from shell_placements"
    ).fetchone()
    con.close()
    assert view == (n + upstream["1"][0].shape[0], 2, 15)

    # same inputs + seed -> byte-identical partition
    before = {p.name: p.read_bytes() for p in part.iterdir()}
    assert materialize(resources, "0").success
    assert {p.name: p.read_bytes() for p in part.iterdir()} == before


@pytest.mark.slow
def test_thrml_method(resources, upstream):
    res = materialize(resources, "1", method="thrml", thrml={"n_steps": 40, "knn_k": 5})
    assert res.success
    meta = metadata_of(res)
    assert meta["method"] == "thrml" and meta["energy_decreased"] is True
    assert meta["balanced_every_shard"] is True
    assert all(e.passed for e in res.get_asset_check_evaluations())


@pytest.mark.slow  # a second materialization; the fast lane keeps the lateral one
def test_nan_embedding_fails_naming_the_patch(resources, upstream):
    store = resources["warehouse"].store()
    write_embeddings(store, "2", 3, seed=9, bad_row=17)
    res = materialize(resources, "2")
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    msg = str(failure.event_specific_data.error)
    art = store.read_table("patch_embeddings", "2", ["article_id", "patch_index"]).slice(17, 1)
    key = (art.column("article_id")[0].as_py(), art.column("patch_index")[0].as_py())
    assert "NaN/inf" in msg and repr(key) in msg
    assert not (Path(resources["warehouse"].root) / "shell_placements" / "shard=2").exists()


@pytest.mark.slow  # two more materializations
def test_checks_fail_on_a_tampered_partition(resources, upstream):
    assert materialize(resources, "0").success
    store = resources["warehouse"].store()
    table = store.read_table("shell_placements", "0")
    coords, meta = store.read_tensors("shell_placements", "0", "coordinates")
    lib, lib_meta = store.read_tensors("shell_placements", "0", "librarian")
    lvm, lvm_meta = store.read_tensors("shell_placements", "0", "lvm")
    shells = table.column("shell").to_numpy().copy()
    shells[: len(shells) // 3] = 0  # pile a third of the points into the innermost shell
    table = table.set_column(2, "shell", pa.array(shells.astype(np.int32)))
    with store.partition_writer("shell_placements", "0") as w:
        w.write_tensors("coordinates", coords, meta)
        w.write_tensors("librarian", lib, lib_meta)
        w.write_tensors("lvm", lvm, lvm_meta)
        w.write_table(table)
    problems, _ = placements.balance_problems(store, ["0"])
    assert problems and "shard 0" in problems[0] and "[0" in problems[0]
    assert placements.coordinate_problems(store, ["0"])[0] == []
    # r off its bounds and a row dropped are caught by the coordinate rules
    r = table.column("r").to_numpy().copy()
    r[5] = 2.5
    table = table.set_column(3, "r", pa.array(r)).slice(1)
    with store.partition_writer("shell_placements", "0") as w:
        w.write_tensors("coordinates", {k: v[1:] for k, v in coords.items()}, meta)
        w.write_tensors("librarian", {k: v[1:] for k, v in lib.items()}, lib_meta)
        w.write_tensors("lvm", lvm, lvm_meta)
        w.write_table(table)
    problems, _ = placements.coordinate_problems(store, ["0"])
    assert any("rows but" in p for p in problems) and any("r outside" in p for p in problems)


@pytest.mark.slow  # a second materialization
def test_empty_shard_materializes_and_passes_checks(resources, upstream):
    store = resources["warehouse"].store()
    write_embeddings(store, "3", 0, seed=3)
    res = materialize(resources, "3")
    assert res.success
    table = store.read_table("shell_placements", "3")
    assert table.num_rows == 0 and table.schema.names == SHELL_PLACEMENTS_SCHEMA.names
    coords, _ = store.read_tensors("shell_placements", "3", "coordinates")
    assert coords["xyz"].shape == (0, 3)
    assert all(e.passed for e in res.get_asset_check_evaluations())
