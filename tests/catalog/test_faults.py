"""Faults at the catalogs (issue 16, items 3, 7, 8): NUL never reaches Postgres, permanent
Postgres errors are not retried while transient ones are, no part of a password is printed,
duckdb_catalog warns about a missing shard (metadata + a non-blocking check) and works under a
warehouse path with glob characters."""

import json
import socket
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from sphere_assets.catalog import postgres_catalog as publish
from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import CATALOG_CHECKS, duckdb_catalog
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.ingest.io import rows_to_table
from sphere_assets.lib.text.corpus import ArticleRow
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.postgres import PostgresResource, PostgresUnavailable, redact_url
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource
from tests.resources.pg_util import fresh_database, with_database

UPSTREAM = [dg.AssetKey("raw_articles")]
FAST_RETRY = dg.RetryPolicy(max_retries=2, delay=0.1)
PARTITIONS_CHECK = next(
    c for c in CATALOG_CHECKS if "duckdb_catalog_partitions_complete" in str(c.check_keys)
)


def materialize_publish(url, root, shard="0", connect_timeout=3):
    asset, check = publish.build_postgres_catalog(UPSTREAM, FAST_RETRY)
    return dg.materialize(
        [asset, check],
        partition_key=shard,
        resources={
            "warehouse": WarehouseResource(root=str(root)),
            "postgres": PostgresResource(url=url, connect_timeout=connect_timeout),
        },
        raise_on_error=False,
    )


def failure_text(result) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            err = event.step_failure_data.error
            while err is not None:
                texts.append(err.message)
                err = err.cause
    return "\n".join(texts)


def retries(result) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")


def all_event_text(result) -> str:
    """Everything the run recorded (messages, metadata, errors), serialized."""
    from dagster._serdes import serialize_value

    return "\n".join(serialize_value(e) for e in result.all_events)


@pytest.fixture
def articles_root(tmp_path) -> Path:
    """raw_articles of a small jsonl corpus with a NUL article, every shard, through Dagster."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [{"id": f"a{i}", "title": f"T{i}", "text": f"article {i}"} for i in range(12)]
    lines.append({"id": "nul", "title": "has NUL", "text": "before\x00after"})
    (corpus / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    root = tmp_path / "warehouse"
    resources = {
        "warehouse": WarehouseResource(root=str(root)),
        "corpus": CorpusSourceResource(kind="files", path_glob=str(corpus / "*.jsonl")),
    }
    rejects = 0
    for key in shard_keys():
        res = dg.materialize([ingest.raw_articles], partition_key=key, resources=resources)
        assert res.success
        (mat,) = res.asset_materializations_for_node("raw_articles")
        rejects += mat.metadata["rejects/contains_nul"].value
        if mat.metadata["rejects/contains_nul"].value:
            sample = mat.metadata["reject_samples"].value["contains_nul"]
            assert (sample["id"], sample["line"], sample["field"]) == ("nul", 13, "text")
    assert rejects == 1
    return root


# -- item 3: NUL ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_nul_is_rejected_at_ingest_so_every_shard_publishes(postgres_url, articles_root):
    with fresh_database(postgres_url, "sphere_faults") as url:
        for key in shard_keys():
            res = materialize_publish(url, articles_root, key)
            assert res.success, failure_text(res)
        with psycopg.connect(url) as conn:
            published = dict(
                conn.execute("SELECT article_id, text FROM sphere.articles").fetchall()
            )
    stored = duckdb.connect().execute(
        "select article_id, text from read_parquet(?, hive_partitioning=true)",
        [f"{articles_root}/raw_articles/*/*.parquet"],
    )
    assert published == dict(stored.fetchall())
    assert len(published) == 12 and "nul" not in published


@pytest.mark.postgres
def test_nul_in_a_stored_partition_fails_the_publish_at_once_naming_the_row(
    postgres_url, articles_root
):
    """A partition written before the rule (or by hand) with a NUL: a clear, unretried error
    naming asset, table, field and article_id; the previous rows stay."""
    with fresh_database(postgres_url, "sphere_faults") as url:
        assert materialize_publish(url, articles_root, "0").success
        with psycopg.connect(url) as conn:
            before = conn.execute(
                "SELECT article_id FROM sphere.articles WHERE shard = 0 ORDER BY 1"
            ).fetchall()
        store = Warehouse(articles_root)
        rows = store.read_table("raw_articles", "0").to_pylist()
        rows.insert(1, {**rows[0], "article_id": "zz-nul", "text": "a\x00b"})
        with store.partition_writer("raw_articles", "0") as w:
            w.write_table(rows_to_table([ArticleRow(**r) for r in rows]))
        res = materialize_publish(url, articles_root, "0")
        assert not res.success
        assert retries(res) == 0
        message = failure_text(res)
        assert "sphere.articles" in message and "raw_articles" in message
        assert "column 'text'" in message and "NUL" in message
        assert "row 1 (article_id='zz-nul')" in message
        with psycopg.connect(url) as conn:
            after = conn.execute(
                "SELECT article_id FROM sphere.articles WHERE shard = 0 ORDER BY 1"
            ).fetchall()
        assert after == before


# -- item 7: permanent vs transient errors, passwords --------------------------------------------


@pytest.mark.postgres
def test_permanent_connection_errors_fail_at_once(postgres_url, articles_root):
    """Nothing listening (wrong port), a missing database, an unknown role: no retry."""
    cases = [
        ("postgresql://sphere:s3cret@127.0.0.1:1/sphere_db", "127.0.0.1:1/sphere_db"),
        (with_database(postgres_url, "sphere_no_such_db"), "does not exist"),
        (postgres_url.replace("postgres@", "sphere_no_such_role@"), "sphere_no_such_role"),
    ]
    for url, expected in cases:
        t0 = time.perf_counter()
        res = materialize_publish(url, articles_root)
        assert not res.success
        message = failure_text(res)
        assert expected in message and "not retried" in message
        assert "s3cret" not in all_event_text(res)
        assert retries(res) == 0, message
        assert time.perf_counter() - t0 < 30


class SilentServer:
    """A TCP port that accepts connections and never answers: libpq's connect_timeout fires."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.postgres
@pytest.mark.slow  # two 2 s connect timeouts per retry cycle (libpq's minimum)
def test_transient_errors_are_retried(postgres_url, articles_root):
    # a server that does not answer in time
    server = SilentServer()
    try:
        res = materialize_publish(
            f"postgresql://sphere:s3cret@127.0.0.1:{server.port}/db",
            articles_root,
            connect_timeout=2,
        )
    finally:
        server.close()
    assert not res.success
    assert retries(res) == FAST_RETRY.max_retries
    assert "timeout" in failure_text(res) and "s3cret" not in all_event_text(res)

    # a role over its connection limit (SQLSTATE 53300): retried
    role = f"sphere_limited_{time.time_ns() % 10**9}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(role))
        )
    try:
        res = materialize_publish(postgres_url.replace("postgres@", f"{role}@"), articles_root)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert not res.success
    assert "too many connections" in failure_text(res)
    assert retries(res) == FAST_RETRY.max_retries


@pytest.mark.postgres
def test_password_with_an_unencoded_at_is_parsed_and_never_printed(postgres_url, articles_root):
    secret = "p@ss:w0rd/x"
    url = postgres_url.replace("postgres@", f"postgres:{secret}@")  # not percent-encoded
    assert redact_url(url) == "postgres@127.0.0.1:5432/test"
    # the server (trust auth) accepts it: the host was parsed right, not 'ss:w0rd/x@127.0.0.1'
    assert PostgresResource(url=url).execute("SELECT 1") == [(1,)]

    down = url.replace(":5432/", ":1/")
    with pytest.raises(PostgresUnavailable) as err:
        with PostgresResource(url=down).connection():
            pass
    for part in ("p@ss", "ss:w0rd", "w0rd", "w0rd/x"):
        assert part not in str(err.value)
    res = materialize_publish(down, articles_root)
    assert not res.success
    text = all_event_text(res)
    for part in ("p@ss", "ss:w0rd", "w0rd"):
        assert part not in text

    with fresh_database(postgres_url, "sphere_faults") as base:
        ok = base.replace("postgres@", f"postgres:{secret}@")
        res = materialize_publish(ok, articles_root)
        assert res.success, failure_text(res)
        (mat,) = res.asset_materializations_for_node(publish.POSTGRES_CATALOG_NAME)
        assert mat.metadata["target"].value == redact_url(base)
        for part in ("p@ss", "ss:w0rd", "w0rd"):
            assert part not in all_event_text(res)


# -- item 8: duckdb_catalog --------------------------------------------------------------------


def catalog_run(resources, instance):
    return dg.materialize(
        [ingest.raw_articles, duckdb_catalog, PARTITIONS_CHECK],
        selection=[duckdb_catalog.key],
        resources=resources,
        instance=instance,
    )


def test_missing_shard_is_a_warning_and_a_failed_non_blocking_check(resources):
    instance = dg.DagsterInstance.ephemeral()
    keys = shard_keys()
    for key in keys[:2] + keys[3:]:  # every shard but "2"
        assert dg.materialize([ingest.raw_articles], partition_key=key, resources=resources)
    res = catalog_run(resources, instance)
    assert res.success  # the check does not block: the catalog serves the shards that exist

    (record,) = instance.fetch_materializations(duckdb_catalog.key, limit=1).records
    meta = {k: v.value for k, v in record.event_log_entry.asset_materialization.metadata.items()}
    assert meta["missing_partitions"] == {"raw_articles": ["2"]}
    assert "view raw_articles lacks partition(s) 2" in meta["warnings"]
    (evaluation,) = res.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["missing_partitions"].value["raw_articles"] == ["2"]

    # a leftover shard from a larger SPHERE_SHARDS is reported too
    root = Path(resources["warehouse"].root) / "raw_articles"
    (root / "shard=9").mkdir()
    (root / "shard=9" / "part-0.parquet").write_bytes(
        (root / "shard=0" / "part-0.parquet").read_bytes()
    )
    assert dg.materialize([ingest.raw_articles], partition_key="2", resources=resources)
    res = catalog_run(resources, instance)
    (evaluation,) = res.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["missing_partitions"].value == {}
    assert evaluation.metadata["extra_partitions"].value == {"raw_articles": ["9"]}

    (root / "shard=9" / "part-0.parquet").unlink()
    (root / "shard=9").rmdir()
    res = catalog_run(resources, instance)
    (evaluation,) = res.get_asset_check_evaluations()
    assert evaluation.passed
    (record,) = instance.fetch_materializations(duckdb_catalog.key, limit=1).records
    meta = record.event_log_entry.asset_materialization.metadata
    assert meta["warnings"].value == "-" and meta["missing_partitions"].value == {}


def test_warehouse_path_with_glob_characters(resources, tmp_path):
    root = tmp_path / "wh[1] *?" / "warehouse"
    resources["warehouse"] = WarehouseResource(root=str(root))
    for key in shard_keys():
        assert dg.materialize([ingest.raw_articles], partition_key=key, resources=resources)
    res = catalog_run(resources, dg.DagsterInstance.ephemeral())
    assert res.success
    con = duckdb.connect(resources["catalog"].path, read_only=True)
    counts = dict(con.execute("select shard, count(*) from raw_articles group by 1").fetchall())
    con.close()
    expected = {
        int(k): pq.read_metadata(root / "raw_articles" / f"shard={k}" / "part-0.parquet").num_rows
        for k in shard_keys()
    }
    assert counts == expected and sum(counts.values()) > 0
