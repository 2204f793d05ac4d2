"""`sphere restore` on the materialized ngrams family: a stored span, a raw HLLSet file with
and without its length, JSON output."""

from sphere_assets.ngrams import io, restore_cli
from sphere_resources.store import Warehouse
from tests.ngrams.materialize import SPAN, restore_cli_main


def test_restore_cli_article_file_and_json(materialized, corpus):
    root, _ = materialized
    article_id = sorted(corpus)[1]
    h, _ = io.load_stored_span(Warehouse(root), article_id, 0)
    assert (
        restore_cli_main(
            ["restore", "--article", article_id, "--span", "0", "--warehouse", str(root)]
        )
        == 0
    )
    raw = root.parent / "set.bin"
    raw.write_bytes(b"".join(h.layer_bytes()))
    assert (
        restore_cli_main(
            ["restore", "--file", str(raw), "--length", str(SPAN), "--warehouse", str(root)]
        )
        == 0
    )
    assert (
        restore_cli_main(["restore", "--file", str(raw), "--warehouse", str(root), "--json"]) == 0
    )
    assert restore_cli.hllset_from_file(str(raw)) == h


def _mid_article_set(corpus, p: int):
    """The patches of a span cut out of the middle of an article, as `--text` patches it: the
    interior is the corpus' own patches, the first and last ones are cut (unknown to the
    vocabulary), and (START, first) / (last, END) are sentinels no article has."""
    from sphere_assets.lib.sketch import ngrams as ng

    article_id = max(sorted(corpus), key=lambda a: len(corpus[a]))
    patches = corpus[article_id]
    interior = patches[10:40]
    span = [b"\xffcut-head", *interior, b"cut-tail\xff"]
    return interior, span, ng.hllset_of_patches(span, p)


def test_restore_a_span_that_starts_and_ends_mid_article(materialized, corpus):
    from sphere_assets.lib.sketch import restore as rs

    root, _ = materialized
    index = io.load_restore_index(Warehouse(root), None)
    interior, span, hll = _mid_article_set(corpus, index.p)
    closed = rs.restore(hll, index, length=len(span))
    assert not closed.ok and "_START_ -> _END_" in closed.reason
    opened = rs.restore(hll, index, length=len(span), open_ends=True)
    assert opened.ok and opened.report.open_ends, opened.reason
    best = opened.candidates[0]
    # the restorable interior, in order: the cut patches are not in the vocabulary
    assert b"".join(interior) in b"".join(best.patches)
    assert len(best.patches) <= len(span) + 2


def test_restore_cli_open_ends_flags(materialized, corpus, capsys):
    root, _ = materialized
    _, _, hll = _mid_article_set(corpus, 10)
    raw = root.parent / "mid.bin"
    raw.write_bytes(b"".join(hll.layer_bytes()))
    base = ["restore", "--file", str(raw), "--warehouse", str(root)]
    assert restore_cli_main(base) == 1  # a file is restored _START_ to _END_ by default
    assert "--open-ends" in capsys.readouterr().out
    assert restore_cli_main([*base, "--open-ends"]) == 0
    assert "open ends" in capsys.readouterr().out
