"""`sphere restore --text` of a sentence copied from the middle of a bundled-corpus article, on a
warehouse built by the real pipeline (raw_articles -> entropy_model -> blt_patches -> ngrams)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from sphere_assets.core.partitions import shard_keys
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.ngrams.settings import HllSetResource
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.entropy_model import entropy_model
from tests.ngrams.materialize import SPAN, P, materialize_all, restore_cli_main
from tests.patching.materialize import ASSETS, MODEL_CONFIG, run

pytestmark = pytest.mark.slow


def test_restore_text_copied_from_the_middle_of_an_article(tmp_path, capsys):
    from pydoc_data.topics import topics

    from sphere_resources.corpus import CorpusSourceResource
    from sphere_resources.warehouse import WarehouseResource

    root = tmp_path / "warehouse"
    resources = {
        "warehouse": WarehouseResource(root=str(root)),
        "corpus": CorpusSourceResource(kind="bundled"),
    }
    keys = shard_keys()
    for key in keys:
        run(resources, [ingest.raw_articles.key], key)
    run(resources, [entropy_model.key], entropy_model=MODEL_CONFIG)
    assert dg.materialize(
        ASSETS,
        selection=[blt_patches.key],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    ).success
    materialize_all({**resources, "hll": HllSetResource(p=P, span_patches=SPAN)})

    article = topics["assert"]
    start = article.index("Assert statements") + 10  # mid-word: "tements are a convenient..."
    text = article[start : start + 150]
    argv = ["restore", "--text", text, "--warehouse", str(root), "--json"]
    capsys.readouterr()
    assert restore_cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"]["open_ends"] and out["report"]["reason"] is None
    assert "BLT patcher" in out["source"]
    best = out["candidates"][0]["text"]
    # the span's interior, in order: all but its cut first and last patches
    assert best in text and len(best) >= 0.6 * len(text), (best, text)
    # as a whole article (from _START_ to _END_) it cannot be restored
    assert restore_cli_main([*argv, "--whole-article"]) == 1
    assert "_START_ -> _END_" in json.loads(capsys.readouterr().out)["report"]["reason"]
