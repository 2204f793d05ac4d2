"""embedding_ann materialized into a temporary warehouse; semantic search through the Python
API and the CLI against brute-force cosine over every shard's embeddings (numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from sphere_assets.cli import main as sphere_main
from sphere_assets.lib.sphere import semantic as se
from sphere_assets.navigate import defs
from sphere_assets.navigate.io import MissingInput
from sphere_assets.navigate.navigate import Navigator
from sphere_resources.warehouse import WarehouseResource
from tests.navigate.conftest import pca3


def every_embedding(shards):
    keys, emb = [], []
    for key, (ids, pidx, e, _) in shards.items():
        keys += [(key, a, int(p)) for a, p in zip(ids, pidx, strict=True)]
        emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return keys, np.concatenate(emb)


def brute_top(q, keys, x, k):
    s = x @ q
    return [keys[i] for i in np.argsort(-s, kind="stable")[:k]]


def test_partition_files_and_summary(corpus):
    res, shards, _, results = corpus
    root = Path(res["warehouse"].root)
    for key, (ids, *_rest) in shards.items():
        part = root / "embedding_ann" / f"shard={key}"
        assert sorted(p.name for p in part.iterdir()) == [
            "_manifest.json",
            "ann.faiss",
            "part-0.parquet",
        ]
        (row,) = pq.read_table(part / "part-0.parquet").to_pylist()
        assert row["kind"] == "ivf" and row["rows"] == len(ids) and row["dim"] == 16
        assert row["index_bytes"] == (part / "ann.faiss").stat().st_size
        index = se.deserialize_ann((part / "ann.faiss").read_bytes())
        assert index.ntotal == len(ids) and index.nprobe == row["nprobe"]
        (mat,) = results[key].asset_materializations_for_node("embedding_ann")
        assert mat.metadata["recall_at_10_sample"].value >= 0.95


def test_search_paths_against_brute_force(corpus):
    res, shards, (mean, comps), _ = corpus
    keys, x = every_embedding(shards)
    nav = Navigator(res["warehouse"].store(), place=lambda e: pca3(e, mean, comps))
    rng = np.random.default_rng(8)
    recalls = {"ann": [], "exact": [], "cone": []}
    for i in rng.choice(len(keys), 40, replace=False):
        q = se.unit_rows(x[i] + 0.3 * rng.standard_normal(16).astype(np.float32))[0]
        want = brute_top(q, keys, x, 10)
        q_dir = pca3(q[None], mean, comps)[0]
        for path in recalls:
            found, _ = nav.search(q, 10, path, q_dir=q_dir, candidates=400)
            got = [nav.key_of(s, r) for s, r, _ in found]
            recalls[path].append(len(set(got) & set(want)) / 10)
            if path == "exact":
                assert got == want
    assert np.mean(recalls["ann"]) >= 0.95
    assert np.mean(recalls["cone"]) < 1.0 <= np.mean(recalls["exact"])
    # every point a candidate: the cone path is exact
    q = x[3]
    found, n = nav.search(q, 10, "cone", q_dir=pca3(q[None], mean, comps)[0], candidates=10**6)
    assert n == len(keys)
    assert [nav.key_of(s, r) for s, r, _ in found] == brute_top(q, keys, x, 10)


def test_query_patch_finds_itself_first_and_aggregates_articles(corpus):
    res, shards, _, _ = corpus
    ids, pidx, _, _ = shards["1"]
    nav = Navigator(res["warehouse"].store())
    for path in ("ann", "exact", "cone"):
        r = nav.query_patch(ids[40], int(pidx[40]), k=10, k_articles=3, path=path)
        top = r.patches[0]
        assert (top.article_id, top.patch_index, top.shard) == (ids[40], pidx[40], "1")
        assert top.cosine == pytest.approx(1.0, abs=1e-5)
        assert top.angle_deg == pytest.approx(0.0, abs=1e-5)
        assert len(r.patches) == 10 and r.placed
        cos = [h.cosine for h in r.patches]
        assert cos == sorted(cos, reverse=True)
        # the articles are the aggregation of the pooled hits (best cosine first)
        assert r.articles[0].article_id == ids[40] and r.articles[0].score == pytest.approx(
            1.0, abs=1e-5
        )
        assert [a.score for a in r.articles] == sorted((a.score for a in r.articles), reverse=True)
        assert all(a.best.article_id == a.article_id for a in r.articles)


def test_cli_query_json_and_errors(corpus, capsys):
    res, shards, _, _ = corpus
    root = res["warehouse"].root
    ids, pidx, _, _ = shards["0"]
    assert (
        sphere_main(
            [
                "query",
                "--article",
                ids[7],
                "--patch",
                str(pidx[7]),
                "--k",
                "5",
                "--json",
                "--warehouse",
                root,
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and rows[0]["article_id"] == ids[7] and rows[0]["patch_index"] == 7
    for o in rows:
        assert {"article_id", "patch_index", "shell", "theta", "phi", "angle_deg", "cosine"} <= set(
            o
        )
    assert (
        sphere_main(
            [
                "query",
                "--article",
                ids[7],
                "--patch",
                "7",
                "--articles",
                "--k",
                "3",
                "--json",
                "--warehouse",
                root,
            ]
        )
        == 0
    )
    arts = json.loads(capsys.readouterr().out)
    assert len(arts) == 3 and arts[0]["article_id"] == ids[7] and "score" in arts[0]
    assert sphere_main(["query", "--article", "nope", "--patch", "1", "--warehouse", root]) == 2
    assert "unknown article id 'nope'" in capsys.readouterr().err
    assert sphere_main(["query", "--article", ids[7], "--warehouse", root]) == 2
    assert "--article needs --patch" in capsys.readouterr().err
    assert sphere_main(["query", "--text", "  ", "--warehouse", root]) == 2
    assert "the query text is empty" in capsys.readouterr().err


def test_hnsw_kind_and_a_missing_index(corpus, tmp_path):
    res, shards, _, _ = corpus
    import shutil

    root = tmp_path / "warehouse"
    shutil.copytree(res["warehouse"].root, root, ignore=shutil.ignore_patterns(".staging"))
    store = WarehouseResource(root=str(root)).store()
    shutil.rmtree(root / "embedding_ann" / "shard=1")
    with pytest.raises(
        MissingInput, match=r"embedding_ann partition 1 is not materialized.*sphere materialize-all"
    ):
        Navigator(store).query_patch(shards["0"][0][0], 0, path="ann")
    result = dg.materialize(
        [defs.ASSETS[1]],
        partition_key="1",
        resources={"warehouse": WarehouseResource(root=str(root))},
        run_config={"ops": {"embedding_ann": {"config": {"kind": "hnsw"}}}},
    )
    assert result.success
    (row,) = pq.read_table(root / "embedding_ann" / "shard=1" / "part-0.parquet").to_pylist()
    assert row["kind"] == "hnsw" and row["nlist"] == 0 and row["ef_search"] == 128
    r = Navigator(store).query_patch(shards["1"][0][9], int(shards["1"][1][9]), path="ann")
    assert r.patches[0].article_id == shards["1"][0][9]
