"""sphere_index materialized into a temporary warehouse: files, metadata, check; cone queries
through the Python API, the DuckDB macro and the CLI, each against brute force over every
placement read straight from shell_placements' Parquet files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sphere_assets.catalog.navigate_sql import create_cone_macros
from sphere_assets.cli import main as sphere_main
from sphere_assets.navigate import defs, sphere_index
from sphere_assets.navigate.navigate import NavigateError, Navigator
from sphere_resources.duckdb_catalog import build_catalog
from sphere_resources.store import read_safetensors
from sphere_resources.warehouse import WarehouseResource


def all_placements(root: Path):
    """(keys [(shard, article_id, patch_index)], float64 unit [N, 3], shells) of every shard."""
    keys, units, shells = [], [], []
    for part in sorted((root / "shell_placements").glob("shard=*")):
        t = pq.read_table(part / "part-0.parquet")
        shard = part.name.split("=")[1]
        keys += [
            (shard, a, p)
            for a, p in zip(t["article_id"].to_pylist(), t["patch_index"].to_pylist(), strict=True)
        ]
        xyz = np.stack([t[c].to_numpy().astype(np.float64) for c in "xyz"], axis=1)
        units.append(xyz / np.linalg.norm(xyz, axis=1, keepdims=True))
        shells.append(t["shell"].to_numpy())
    return keys, np.concatenate(units), np.concatenate(shells)


def brute(unit, shell, d, aperture_deg, band=None) -> np.ndarray:
    """Every point within the aperture, the plain way (float64 dot >= cos)."""
    dot = unit[:, 0] * d[0] + unit[:, 1] * d[1] + unit[:, 2] * d[2]
    m = (
        dot >= math.cos(math.radians(aperture_deg))
        if aperture_deg < 180
        else np.ones(len(dot), bool)
    )
    if band is not None:
        m &= (shell >= band[0]) & (shell <= band[1])
    return np.flatnonzero(m)


def direction(theta_deg, phi_deg):
    t, p = math.radians(theta_deg), math.radians(phi_deg)
    return np.array([math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)])


def keyset(hits):
    return {(h.shard, h.article_id, h.patch_index) for h in hits}


def test_partition_files_metadata_and_check(corpus):
    res, shards, _, results = corpus
    root = Path(res["warehouse"].root)
    for key, (ids, _pidx, _, shell) in shards.items():
        part = root / "sphere_index" / f"shard={key}"
        assert sorted(p.name for p in part.iterdir()) == [
            "_manifest.json",
            "csr.safetensors",
            "map.safetensors",
            "part-0.parquet",
        ]
        # map.safetensors: the index over the sphere_map directions (map_theta, map_phi)
        placed = pq.read_table(root / "shell_placements" / f"shard={key}" / "part-0.parquet")
        mt, mp = (placed[c].to_numpy().astype(np.float64) for c in ("map_theta", "map_phi"))
        map_unit = np.stack([np.sin(mt) * np.cos(mp), np.sin(mt) * np.sin(mp), np.cos(mt)], 1)
        arrays = read_safetensors(part / "map.safetensors")[0]
        np.testing.assert_array_equal(arrays["unit"], map_unit[arrays["row"]])
        np.testing.assert_array_equal(np.sort(arrays["row"]), np.arange(len(ids)))
        t = pq.read_table(part / "part-0.parquet")
        assert t.num_rows == len(ids)
        rows = t["row"].to_numpy()
        np.testing.assert_array_equal(np.sort(rows), np.arange(len(ids)))
        assert t["article_id"].to_pylist() == [ids[r] for r in rows]
        np.testing.assert_array_equal(t["shell"].to_numpy(), shell[rows])
        np.testing.assert_array_equal(t["band"].to_numpy(), shell[rows] // 8)
        (mat,) = [m for m in results[key].asset_materializations_for_node("sphere_index")]
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert meta["dagster/row_count"] == len(ids)
        assert meta["random_cones_mismatched"] == 0 and meta["random_cones_tested"] == 64
        assert meta["band_width"] == 8


def test_check_fails_when_the_index_no_longer_matches_the_placements(corpus, tmp_path):
    res, shards, _, _ = corpus
    root = tmp_path / "warehouse"
    shutil.copytree(res["warehouse"].root, root, ignore=shutil.ignore_patterns(".staging"))
    from tests.navigate.conftest import write_placements

    ids, pidx, _, shell = shards["0"]
    rng = np.random.default_rng(3)
    moved = rng.standard_normal((len(ids), 3))
    store = WarehouseResource(root=str(root)).store()
    write_placements(store, "0", ids, pidx, moved / np.linalg.norm(moved, axis=1)[:, None], shell)
    problems = sphere_index.index_problems(store, "0")
    assert problems and "unit vectors differ" in problems[0]


def test_python_api_cones_equal_brute_force(corpus):
    res, *_ = corpus
    root = Path(res["warehouse"].root)
    keys, unit, shell = all_placements(root)
    nav = Navigator.open(str(root))
    rng = np.random.default_rng(11)
    cases = [
        (0.0, 0.0, [5, 30], None),
        (180.0, 10.0, [10], None),
        (90.0, 359.9, [4, 12], None),
        (45.0, 0.05, [0, 180], None),
        (60.0, 200.0, [15, 25], (4, 9)),
        (70, 20, [20], (40, 50)),
    ]
    for _ in range(40):
        cases.append(
            (
                rng.uniform(0, 180),
                rng.uniform(0, 360),
                sorted(rng.uniform(1, 30, 2)),
                None if rng.random() < 0.5 else tuple(sorted(rng.integers(0, 32, 2))),
            )
        )
    for theta, phi, apertures, band in cases:
        results = nav.cone(apertures, band, theta=theta, phi=phi)
        d = direction(theta, phi)
        for r, a in zip(results, apertures, strict=True):
            want = {keys[i] for i in brute(unit, shell, d, a, band)}
            assert keyset(r.hits) == want, (theta, phi, a, band)
            assert sum(r.shell_counts.values()) == len(want)
            angles = [h.angle_deg for h in r.hits]
            assert angles == sorted(angles) and all(x <= a + 1e-9 for x in angles)
    # an empty band, and the whole sphere
    assert nav.cone([90], (100, 120), theta=10, phi=10)[0].count == 0
    assert nav.cone([180], theta=10, phi=10)[0].count == len(keys)


def test_cone_around_a_stored_patch_and_bad_input(corpus):
    res, shards, _, _ = corpus
    nav = Navigator.open(res["warehouse"].root)
    ids, pidx, _, _ = shards["1"]
    (r,) = nav.cone([0.0], patch=(ids[5], int(pidx[5])))
    assert (r.hits[0].article_id, r.hits[0].patch_index, r.hits[0].angle_deg) == (ids[5], 5, 0.0)
    assert r.hits[0].text == f"{ids[5]}/5" and r.hits[0].title == f"Title of {ids[5]}"
    with pytest.raises(NavigateError, match="unknown article id 'nope'"):
        nav.cone([5], patch=("nope", 1))
    with pytest.raises(NavigateError, match="not 999"):
        nav.cone([5], patch=(ids[5], 999))
    with pytest.raises(NavigateError, match="aperture"):
        nav.cone([200], theta=10, phi=10)
    with pytest.raises(NavigateError, match="theta"):
        nav.cone([5], theta=190, phi=10)
    with pytest.raises(NavigateError, match="exactly one"):
        nav.cone([5], theta=10, phi=10, xyz=[1, 0, 0])


def test_duckdb_macro_returns_the_python_api_rows(corpus, tmp_path):
    res, *_ = corpus
    root = res["warehouse"].root
    catalog = tmp_path / "sphere.duckdb"
    result = build_catalog(root, catalog, ["sphere_index", "blt_patches", "raw_articles"])
    assert create_cone_macros(catalog, result["views"]) == ["sphere_cone", "sphere_cone_text"]
    nav = Navigator.open(root)
    con = duckdb.connect(str(catalog), read_only=True)
    rng = np.random.default_rng(5)
    try:
        for i in range(25):
            theta, phi, a = rng.uniform(0, 180), rng.uniform(0, 360), rng.uniform(1, 30)
            band = (0, 2**31 - 1) if i % 2 else tuple(sorted(rng.integers(0, 32, 2).tolist()))
            rows = con.execute(
                "select shard, article_id, patch_index, angle_deg from "
                "sphere_cone(?, ?, ?, s0 := ?, s1 := ?)",
                [theta, phi, a, int(band[0]), int(band[1])],
            ).fetchall()
            (r,) = nav.cone([a], band, theta=theta, phi=phi)
            assert {(str(s), aid, p) for s, aid, p, _ in rows} == keyset(r.hits)
            got = {(str(s), aid, p): g for s, aid, p, g in rows}
            for h in r.hits:
                assert got[(h.shard, h.article_id, h.patch_index)] == pytest.approx(h.angle_deg)
        text_rows = con.execute(
            "select article_id, patch_index, title, text from sphere_cone_text(30, 40, 20)"
        ).fetchall()
        assert text_rows
        for aid, p, title, text in text_rows:
            assert (title, text) == (f"Title of {aid}", f"{aid}/{p}")
        assert con.execute("select count(*) from sphere_cone(1, 2, 180)").fetchone()[0] == sum(
            len(s[0]) for s in corpus[1].values()
        )
    finally:
        con.close()


def test_cli_cone_json_and_errors(corpus, capsys, tmp_path):
    res, *_ = corpus
    root = res["warehouse"].root
    assert (
        sphere_main(
            [
                "cone",
                "--theta",
                "40",
                "--phi",
                "350",
                "--aperture",
                "10,20",
                "--shells",
                "3:20",
                "--json",
                "--warehouse",
                root,
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    nav = Navigator.open(root)
    r10, r20 = nav.cone([10, 20], (3, 20), theta=40, phi=350)
    assert {
        (o["shard"], o["article_id"], o["patch_index"]) for o in rows if o["aperture_deg"] == 10
    } == keyset(r10.hits)
    assert sum(o["aperture_deg"] == 20 for o in rows) == r20.count > 0
    for o in rows:
        assert {"article_id", "patch_index", "shell", "theta", "phi", "angle_deg"} <= set(o)
        assert 3 <= o["shell"] <= 20 and o["angle_deg"] <= o["aperture_deg"]
    assert (
        sphere_main(
            ["cone", "--theta", "40", "--phi", "350", "--aperture", "5", "--warehouse", root]
        )
        == 0
    )
    assert "cone theta=40.000 phi=350.000 aperture=5 deg" in capsys.readouterr().out

    def error(argv):
        assert sphere_main(argv) == 2
        return capsys.readouterr().err

    assert "unknown article id 'nope'" in error(
        ["cone", "--article", "nope", "--patch", "0", "--aperture", "5", "--warehouse", root]
    )
    assert "--shells must be A:B" in error(
        [
            "cone",
            "--theta",
            "1",
            "--phi",
            "1",
            "--aperture",
            "5",
            "--shells",
            "x",
            "--warehouse",
            root,
        ]
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    err = error(
        ["cone", "--theta", "1", "--phi", "1", "--aperture", "5", "--warehouse", str(empty)]
    )
    assert "sphere_index is not materialized" in err and "sphere materialize-all" in err


def test_missing_placements_fail_naming_the_asset_and_the_command(tmp_path):
    res = {"warehouse": WarehouseResource(root=str(tmp_path / "wh"))}
    result = dg.materialize(
        [defs.ASSETS[0]], partition_key="0", resources=res, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = str(failure.step_failure_data.error)
    assert "shell_placements partition 0 is not materialized" in text
    assert "sphere materialize-all" in text


def test_duckdb_catalog_asset_creates_the_cone_macros(corpus, tmp_path):
    """The catalog asset of the code location (duckdb_catalog) adds the macros when the
    sphere_index view exists, and `sphere sql` answers a cone query through them."""
    from sphere_assets.catalog.duckdb_catalog import DuckDBCatalogResource
    from sphere_assets.definitions import duckdb_catalog

    res, shards, _, _ = corpus
    catalog = tmp_path / "sphere.duckdb"
    result = dg.materialize(
        [duckdb_catalog],
        resources={**res, "catalog": DuckDBCatalogResource(path=str(catalog))},
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("duckdb_catalog")
    assert mat.metadata["macros"].value == "sphere_cone, sphere_cone_text"
    nav = Navigator.open(res["warehouse"].root)
    (r,) = nav.cone([25], theta=100, phi=200)
    with duckdb.connect(str(catalog), read_only=True) as con:
        n = con.execute("select count(*) from sphere_cone(100, 200, 25)").fetchone()[0]
    assert n == r.count > 0
    assert (
        sphere_main(
            ["sql", "select count(*) from sphere_cone(100, 200, 25)", "--catalog", str(catalog)]
        )
        == 0
    )
