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
