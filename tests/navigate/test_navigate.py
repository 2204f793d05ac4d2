"""Text queries end to end on a real (tiny) pipeline: raw_articles -> entropy_model ->
blt_patches -> patch_embeddings materialized for shard 0, placements from a PCA-3 map of the
embeddings, both navigate assets; a text equal to an article's prefix ending at a stored patch
finds that patch first on every path (the pipeline's own patcher, threshold and pooling)."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from sphere_assets.cli import main as sphere_main
from sphere_assets.core.partitions import shard_keys
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.navigate import defs
from sphere_assets.navigate.navigate import Navigator
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.entropy_model import entropy_model
from sphere_assets.patching.patch_embeddings import patch_embeddings
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource
from tests.navigate.conftest import fit_pca3, pca3, write_placements
from tests.patching.materialize import MODEL_CONFIG, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("navigate_text") / "warehouse"
    res = {
        "warehouse": WarehouseResource(root=str(root)),
        "corpus": CorpusSourceResource(kind="bundled"),
    }
    for key in shard_keys():
        run(res, [ingest.raw_articles.key], key)
    run(res, [entropy_model.key], entropy_model=MODEL_CONFIG)
    run(res, [blt_patches.key], "0")
    run(res, [patch_embeddings.key], "0")
    store = res["warehouse"].store()
    emb = store.read_tensors("patch_embeddings", "0", "embeddings")[0]["embeddings"]
    side = store.read_table("patch_embeddings", "0", ["article_id", "patch_index"])
    mean, comps = fit_pca3(emb.astype(np.float64))
    shell = np.arange(emb.shape[0]) % 16
    ids = side.column("article_id").to_pylist()
    pidx = side.column("patch_index").to_numpy()
    write_placements(store, "0", ids, pidx, pca3(emb.astype(np.float64), mean, comps), shell)
    result = dg.materialize([*defs.ASSETS, *defs.CHECKS], partition_key="0", resources=res)
    assert result.success
    return res, (mean, comps)


def unique_patch(store):
    """(article_id, patch_index, the article's text up to the end of that patch) of a patch in
    the middle of an article whose 48 preceding bytes + own bytes occur once in the shard."""
    t = store.read_table(
        "blt_patches", "0", ["article_id", "patch_index", "byte_start", "byte_len"]
    )
    raw = store.read_table("raw_articles", "0", ["article_id", "text"]).to_pylist()
    texts = {r["article_id"]: r["text"].encode() for r in raw}
    corpus = b"\x00".join(texts.values())
    rows = t.to_pylist()
    for r in rows[len(rows) // 3 :]:
        s, n = r["byte_start"], r["byte_len"]
        data = texts[r["article_id"]]
        if n >= 4 and s >= 48 and corpus.count(data[s - 48 : s + n]) == 1:
            try:
                prefix = data[: s + n].decode("utf-8", "strict")
            except UnicodeDecodeError:  # the patch ends inside a character
                continue
            return r["article_id"], r["patch_index"], prefix
    raise AssertionError("no unique patch")


def test_text_query_finds_the_stored_patch_first_on_every_path(pipeline):
    res, (mean, comps) = pipeline
    store = res["warehouse"].store()
    nav = Navigator(store, place=lambda e: pca3(e.astype(np.float64), mean, comps))
    aid, patch, text = unique_patch(store)
    for path in ("ann", "exact", "cone"):
        r = nav.query_text(text, k=5, k_articles=2, path=path)
        top = r.patches[0]
        assert (top.article_id, top.patch_index) == (aid, patch), path
        assert top.cosine == pytest.approx(1.0, abs=1e-4)
        assert top.angle_deg == pytest.approx(0.0, abs=0.5)
        assert r.articles[0].article_id == aid and r.placed
        assert r.query_patches > 1


def test_cli_text_query_and_cone_from_text(pipeline, capsys):
    res, _ = pipeline
    root = res["warehouse"].root
    assert (
        sphere_main(
            [
                "query",
                "--text",
                "The assert statement",
                "--k",
                "3",
                "--json",
                "--path",
                "exact",
                "--warehouse",
                root,
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3
    assert {"article_id", "patch_index", "shell", "theta", "phi", "angle_deg", "cosine"} <= set(
        rows[0]
    )
    # no sphere_map is materialized in this warehouse: the semantic query runs unplaced (angle
    # null) and `sphere cone --text` names what is missing and how to build it
    code = sphere_main(
        [
            "cone",
            "--text",
            "The assert statement",
            "--aperture",
            "20",
            "--json",
            "--warehouse",
            root,
        ]
    )
    out = capsys.readouterr()
    if rows[0]["angle_deg"] is None:
        assert code == 2 and "sphere_map" in out.err and "materialize" in out.err
    else:
        assert code == 0 and json.loads(out.out)


def test_queries_are_placed_with_the_fitted_sphere_map(pipeline):
    """With the real sphere_map materialized, a Navigator places query vectors with it: the
    same direction as ``map_directions`` (and so as shell_placements' map_theta/map_phi)."""
    from sphere_assets.lib.sphere.sphere_map import map_directions
    from sphere_assets.placements.io import load_sphere_map
    from sphere_assets.placements.sphere_map import sphere_map

    res, _ = pipeline
    store = res["warehouse"].store()
    run_config = {"ops": {"sphere_map": {"config": {"sample_size": 1500, "steps": 40}}}}
    assert dg.materialize([sphere_map], resources=res, run_config=run_config).success
    nav = Navigator(store)  # the default place: the fitted map
    emb = store.read_tensors("patch_embeddings", "0", "embeddings")[0]["embeddings"]
    want = map_directions(load_sphere_map(store), emb[:3])
    for i in range(3):
        np.testing.assert_allclose(nav.place_vectors(emb[i])[0], want[i], atol=1e-12)
    aid, patch, text = unique_patch(store)
    r = nav.query_text(text, k=3, path="exact")
    assert r.placed and (r.patches[0].article_id, r.patches[0].patch_index) == (aid, patch)
