"""`sphere hll compare` on the materialized ngrams family, and the stored article_hllsets against
sketches recomputed from the articles' patches, compared with the set-algebra estimator."""

import json

import numpy as np

from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.ngrams import io
from sphere_resources.store import Warehouse
from tests.ngrams.materialize import P, restore_cli_main


def test_stored_sketches_agree_with_recomputed_ones(materialized, corpus):
    root, _ = materialized
    store = Warehouse(root)
    for article_id in sorted(corpus)[:5]:
        stored, count = io.load_stored_span(store, article_id, -1)
        fresh = ng.hllset_of_patches(corpus[article_id], P)
        assert count == len(corpus[article_id])
        for e in stored.compare(fresh):  # identical sets: no private part, J = 1
            assert e.a_only.value == 0.0 and e.b_only.value == 0.0 and e.jaccard.value == 1.0
        span, _ = io.load_stored_span(store, article_id, 0)
        first = span.compare(stored)[0]  # a span's patches are among its article's
        assert first.a_only.value == 0.0 and first.tau.value <= 1.0


def test_hll_compare_cli_ids_files_json_and_errors(materialized, corpus, capsys):
    root, _ = materialized
    a_id, b_id = sorted(corpus)[:2]
    capsys.readouterr()
    assert restore_cli_main(["hll", "compare", a_id, b_id, "--warehouse", str(root)]) == 0
    text = capsys.readouterr().out
    assert "|A∩B|" in text and "τ(A,B)" in text and "joint-ml" in text

    a, _ = io.load_stored_span(Warehouse(root), a_id, -1)
    raw = root.parent / "compare_a.bin"
    raw.write_bytes(b"".join(a.layer_bytes()))
    argv = ["hll", "compare", str(raw), b_id, "--warehouse", str(root), "--json"]
    assert restore_cli_main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    b, _ = io.load_stored_span(Warehouse(root), b_id, -1)
    want = a.compare(b)
    assert got["p"] == P and got["a"].startswith("file") and "article_hllsets" in got["b"]
    for layer, e in zip(got["layers"], want, strict=True):
        assert np.isclose(layer["both"]["value"], e.both.value)
        assert np.isclose(layer["both"]["se"], e.both.se)
        assert np.isclose(layer["a_only"]["value"], e.a_only.value)

    assert restore_cli_main(["hll", "compare", a_id, a_id, "--warehouse", str(root), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert all(layer["jaccard"]["value"] == 1.0 for layer in same["layers"])

    assert restore_cli_main(["hll", "compare", a_id, "no-such-id", "--warehouse", str(root)]) == 2
    err = capsys.readouterr().err
    assert "article_hllsets" in err and "no-such-id" in err
