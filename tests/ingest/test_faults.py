"""Bad records never abort raw_articles (issue 16, item 1): every record of the bad-record corpus
is either stored or a counted reject with its reason, and each reason has a sample (file, line,
id, field) in the materialization metadata the instance records."""

import json
import os
from pathlib import Path

import dagster as dg
import duckdb

from sphere_assets.core.partitions import shard_keys
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.lib.text.corpus import REJECT_REASONS
from sphere_resources.corpus import CorpusSourceResource


def j(obj) -> bytes:
    return json.dumps(obj).encode()


# (raw jsonl record bytes, [(line, id, reason, field) per record it holds]); reason None = stored.
# Line numbers count every line end (\n, \r\n, a bare \r), as an editor shows them.
BAD_RECORDS: list[tuple[bytes, list[tuple[int, str | None, str | None, str | None]]]] = [
    (j({"id": "ok1", "title": "One", "text": "good"}), [(1, "ok1", None, None)]),
    (b'{"id": "sur\\udc80", "text": "x"}', [(2, "sur\udc80", "invalid_field", "article_id")]),
    (b'{"id": "t1", "title": "bad \\udc80", "text": "x"}', [(3, "t1", "invalid_field", "title")]),
    (b'{"id": "u1", "url": "http://\\udc80", "text": "x"}', [(4, "u1", "invalid_field", "url")]),
    (j({"id": "u2", "url": 5, "text": "x"}), [(5, "u2", "invalid_field", "url")]),
    (j({"id": "n1", "text": 5}), [(6, "n1", "invalid_text", "text")]),
    (j({"id": "n2", "text": [1, 2]}), [(7, "n2", "invalid_text", "text")]),
    (j({"id": "n3", "text": {"a": 1}}), [(8, "n3", "invalid_text", "text")]),
    (j({"id": "n4", "text": True}), [(9, "n4", "invalid_text", "text")]),
    # two records separated by a bare CR: two records, both stored
    (
        j({"id": "cr1", "text": "a"}) + b"\r" + j({"id": "cr2", "text": "b"}),
        [
            (10, "cr1", None, None),
            (11, "cr2", None, None),
        ],
    ),
    # a CR between a good record and a broken one: one stored, one counted
    (
        j({"id": "cr3", "text": "c"}) + b"\r{broken",
        [
            (12, "cr3", None, None),
            (13, None, "invalid_json", None),
        ],
    ),
    # a CR as JSON whitespace inside one valid record: one record (counts as a line end)
    (b'{"id": "crws",\r "text": "w"}', [(14, "crws", None, None)]),
    # a raw U+2028 inside a string is data, not a line break (JSON Lines splits on \n only)
    (j({"id": "ls"})[:-1] + ', "text": "a\u2028b"}'.encode(), [(16, "ls", None, None)]),
    (b'{"id": "utf", "text": "caf\xe9"}', [(17, None, "invalid_utf8", None)]),
    (j({"id": "nul", "text": "a\x00b"}), [(18, "nul", "contains_nul", "text")]),
    (j({"id": "nul2", "title": "t\x00", "text": "ok"}), [(19, "nul2", "contains_nul", "title")]),
    (
        b'{"id": "deep", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        [
            (20, None, "invalid_json", None),
        ],
    ),
    (
        b'{"id": "bigint", "text": "x", "n": ' + b"1" * 5000 + b"}",
        [
            (21, None, "invalid_json", None),
        ],
    ),
    (j({"id": ["a"], "text": "x"}), [(22, "['a']", "invalid_field", "article_id")]),
    (j({"id": True, "text": "x"}), [(23, "True", "invalid_field", "article_id")]),
    (j({"id": 42, "text": "integer ids are their decimal text"}), [(24, "42", None, None)]),
    (j({"id": "ti", "title": 7, "text": "x"}), [(25, "ti", "invalid_field", "title")]),
    (j([1, 2]), [(26, None, "invalid_json", None)]),
    (j({"id": "ok1", "text": "again"}), [(27, "ok1", "duplicate_id", "article_id")]),
    (j({"title": "no id", "text": "x"}), [(28, None, "missing_id", "article_id")]),
    (j({"id": "nt"}), [(29, "nt", "missing_text", "text")]),
    (j({"id": "blank", "text": " \n "}), [(30, "blank", "empty", "text")]),
]
STORED = {"ok1", "cr1", "cr2", "cr3", "crws", "ls", "42", "latin-1-name-ok.txt"}


def write_bad_corpus(d: Path) -> Path:
    d.mkdir()
    path = d / "bad.jsonl"
    path.write_bytes(b"\n".join(raw for raw, _ in BAD_RECORDS) + b"\n")
    # a text file whose name is not UTF-8: its id (the path) cannot be stored
    fd = os.open(os.fsencode(d) + b"/caf\xe9.txt", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"text of a file with a latin-1 name")
    os.close(fd)
    (d / "latin-1-name-ok.txt").write_text("a good text file")
    return path


def expected_rejects() -> dict[str, list[tuple[int, str | None, str | None]]]:
    out: dict[str, list] = {}
    for _, records in BAD_RECORDS:
        for line, rid, reason, field in records:
            if reason is not None:
                out.setdefault(reason, []).append((line, rid, field))
    return out


def printable_id(rid):
    return None if rid is None else rid.encode("utf-8", "backslashreplace").decode()


def test_bad_record_corpus_is_counted_never_aborts(resources, tmp_path):
    jsonl = write_bad_corpus(tmp_path / "corpus")
    resources["corpus"] = CorpusSourceResource(
        kind="files", path_glob=str(tmp_path / "corpus" / "*")
    )
    instance = dg.DagsterInstance.ephemeral()
    for key in shard_keys():
        res = dg.materialize(
            [ingest.raw_articles, ingest.raw_articles_ids_unique_and_sharded],
            partition_key=key,
            resources=resources,
            instance=instance,
        )
        assert res.success

    # what the instance recorded, summed over the shards
    totals: dict[str, int] = {}
    samples: dict[str, list[dict]] = {}
    for key in shard_keys():
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_articles"), asset_partitions=[key]),
            limit=1,
        ).records
        mat = record.event_log_entry.asset_materialization
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert meta["articles_in"] == meta["rows_out"] + meta["rejects_total"]
        for name in ["articles_in", "rows_out"] + [f"rejects/{r}" for r in REJECT_REASONS]:
            totals[name] = totals.get(name, 0) + meta[name]
        for reason, sample in meta["reject_samples"].items():
            samples.setdefault(reason, []).append(sample)

    expected = expected_rejects()
    n_records = sum(len(recs) for _, recs in BAD_RECORDS) + 2  # + the two text files
    assert totals["articles_in"] == n_records
    assert totals["rows_out"] == len(STORED)
    expected_counts = {r: len(v) for r, v in expected.items()}
    expected_counts["invalid_field"] += 1  # the text file with a latin-1 name
    assert {r: totals[f"rejects/{r}"] for r in REJECT_REASONS if totals[f"rejects/{r}"]} == (
        expected_counts
    )

    # every reason's sample points at one of its records: file, line, id and field
    assert set(samples) == set(expected_counts)
    for reason, found in samples.items():
        for sample in found:
            if sample["line"] is None:  # the text file: its id is the escaped file name
                assert reason == "invalid_field" and sample["id"] == "caf\\udce9.txt"
                assert sample["field"] == "article_id"
                continue
            assert sample["source"] == str(jsonl)
            assert sample["locator"] == f"bad.jsonl:{sample['line']}"
            allowed = {(line, printable_id(rid), f) for line, rid, f in expected[reason]}
            assert (sample["line"], sample["id"], sample["field"]) in allowed

    # on disk (through DuckDB): exactly the good records, with the text as written
    con = duckdb.connect()
    rows = dict(
        con.execute(
            "select article_id, text from read_parquet(?, hive_partitioning=true)",
            [f"{resources['warehouse'].root}/raw_articles/*/*.parquet"],
        ).fetchall()
    )
    assert set(rows) == STORED
    assert rows["ls"] == "a\u2028b" and rows["cr2"] == "b" and rows["ok1"] == "good"
    assert not any("\x00" in t for t in rows.values())
