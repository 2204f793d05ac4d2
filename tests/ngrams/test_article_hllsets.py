"""article_hllsets materialized from synthetic blt_patches: spans per article over the Hive
layout, stored sets read back, rows without spans."""

import duckdb
import numpy as np

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.lib.sketch import hllset as hs
from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import synthetic_patches as sp
from sphere_assets.lib.sketch.span_sets import article_span_sets
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.ngrams import io
from sphere_resources.store import Warehouse
from tests.ngrams.materialize import SPAN, P


def test_spans_per_article_over_the_hive_layout(materialized, corpus):
    root, _ = materialized
    con = duckdb.connect()
    rows = con.sql(
        f"select article_id, count(*) filter (where span_index >= 0) as spans, "
        f"max(patch_count) filter (where span_index < 0) as patches, min(shard) as shard "
        f"from read_parquet('{root}/article_hllsets/*/*.parquet', hive_partitioning=true) "
        "group by article_id order by article_id"
    ).fetchall()
    assert [r[0] for r in rows] == sorted(corpus)
    for article_id, spans, patches, shard_key in rows:
        assert patches == len(corpus[article_id])
        assert spans == -(-patches // SPAN)
        assert str(shard_key) == str(
            shard_of(article_id, len(shard_partitions.get_partition_keys()))
        )


def test_stored_span_reads_back(materialized, corpus):
    root, _ = materialized
    store = Warehouse(root)
    article_id = sorted(corpus)[1]
    h = io.load_stored_span(store, article_id, 0)[0]
    assert h == ng.hllset_of_patches(corpus[article_id][:SPAN], P)
    assert io.load_stored_span(store, article_id, 0) == (h, SPAN)


def test_hllset_rows_without_spans(corpus):
    ids = sorted(corpus)[:5]
    c = sp.from_sequences([corpus[a] for a in ids])
    rows = io.hllset_table(ids, article_span_sets(c.patches, c.offsets, P, 0))
    assert rows.column("span_index").to_pylist() == [-1] * 5
    assert rows.column("patch_count").to_pylist() == [len(corpus[a]) for a in ids]
    h = hs.HLLSet.from_layer_bytes([rows.column(f"layer{i}")[2].as_py() for i in (1, 2, 3)], P)
    assert h == ng.hllset_of_patches(corpus[ids[2]], P)
    cards = [rows.column(f"card{i}")[2].as_py() for i in (1, 2, 3)]
    assert np.allclose(cards, h.cardinality())
