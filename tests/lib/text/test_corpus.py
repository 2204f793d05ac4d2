import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.lib.text.corpus import ShardSplitter, normalize_record, shard_of
from sphere_resources.corpus_sources import FieldNames, SourceRecord, bundled_records, file_records


def rec(text, article_id="a", **kw):
    return SourceRecord(
        locator="loc", article_id=article_id, title="t", text=text, source="test", **kw
    )


def test_shard_of_is_mmh3_x64_low64_mod_n():
    # known answer: mmh3 x64-128 low 64 bits (unsigned) of b"pydoc:assert" = 12201158627258903940
    assert 12201158627258903940 % 4 == 0 and shard_of("pydoc:assert", 4) == 0
    assert 12201158627258903940 % 7 == shard_of("pydoc:assert", 7)
    # b"hello" -> 14688674573012802306 (the HLLSet known answer)
    assert shard_of("hello", 1000) == 14688674573012802306 % 1000


@pytest.mark.parametrize(
    "record,expected",
    [
        (rec("   \n\t "), "empty"),
        (rec(""), "empty"),
        (rec(b"\xff\xfeabc"), "invalid_utf8"),
        (rec("bad \udcff surrogate"), "invalid_utf8"),
        (rec("x" * 11), "oversize"),
        (rec(None), "missing_text"),
        (rec("text", article_id=None), "missing_id"),
        (rec("text", problem="invalid_json"), "invalid_json"),
    ],
)
def test_normalize_rejects(record, expected):
    assert normalize_record(record, max_article_bytes=10).reason == expected


def test_normalize_decodes_strips_bom_and_applies_nfc():
    row = normalize_record(rec("\ufeff".encode() + "e\u0301t\u00e9".encode()), 100)
    assert row.text == "\u00e9t\u00e9"  # NFC composes e + combining acute
    assert row.n_bytes == len(row.text.encode()) == 5  # c3 a9 74 c3 a9
    # exactly at the limit is kept (no truncation, no off-by-one)
    assert normalize_record(rec("x" * 10), 10).n_bytes == 10


def test_bundled_corpus_is_pydoc_topics():
    from pydoc_data.topics import topics

    records = list(bundled_records())
    assert len(records) == len(topics) > 50
    assert {r.article_id for r in records} == {f"pydoc:{k}" for k in topics}


def test_file_records_all_formats(tmp_path):
    (tmp_path / "a.txt").write_text("plain text article")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Heading\nmarkdown")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"doc": "j1", "body": "one"})
        + "\n{not json\n"
        + json.dumps({"doc": "j2"})
        + "\n"
    )
    pq.write_table(
        pa.table({"doc": ["p1", "p2"], "body": ["x", "y"], "name": ["P1", "P2"]}),
        tmp_path / "d.parquet",
    )
    fields = FieldNames(id_field="doc", text_field="body", title_field="name")
    records = list(file_records(str(tmp_path / "**" / "*"), fields))
    ids = [r.article_id for r in records]
    assert ids == ["a.txt", "j1", None, "j2", "p1", "p2", "sub/b.md"]
    assert records[2].problem == "invalid_json"
    assert records[3].text is None  # j2 has no body -> missing_text downstream
    assert records[4].title == "P1"


def test_parquet_without_text_field_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"id": ["1"], "content": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(KeyError, match=r"field 'text' is not a column"):
        list(file_records(str(tmp_path / "*.parquet")))


def test_no_matching_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        list(file_records(str(tmp_path / "*.txt")))


def test_splitter_accounts_for_everything_and_bounds_batches():
    flushed = {}

    def flush(shard, rows):
        assert len(rows) <= 3
        flushed.setdefault(shard, []).extend(r.article_id for r in rows)

    records = [rec(f"text {i}", article_id=f"id{i % 40}") for i in range(50)]  # 10 duplicates
    records += [rec(" "), rec(None, article_id="nope"), rec("x", article_id=None)]
    splitter = ShardSplitter(3, [0, 1, 2], flush, max_article_bytes=100, batch_rows=3)
    for r in records:
        splitter.add(r)
    stats = splitter.finish()
    assert sum(s.articles_in for s in stats.values()) == len(records)
    assert sum(s.rows_out for s in stats.values()) == 40
    assert sum(s.rejects["duplicate_id"] for s in stats.values()) == 10
    for shard, ids in flushed.items():
        assert all(shard_of(i, 3) == shard for i in ids)
        assert len(ids) == len(set(ids))
