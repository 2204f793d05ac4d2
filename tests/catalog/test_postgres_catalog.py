"""postgres_catalog against the real server: a fresh database, shards from a temporary warehouse.

Upstream: raw_articles materialized by Dagster; blt_patches written by the synthetic stand-in
(sphere_assets.catalog.synthetic) because the real one needs a trained model.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.catalog import postgres_catalog as publish
from sphere_assets.catalog.synthetic import (
    write_synthetic_embeddings,
    write_synthetic_patches,
    write_synthetic_placements,
)
from sphere_assets.core.partitions import shard_keys
from sphere_assets.ingest import raw_articles as ingest
from sphere_resources import pg_publish
from sphere_resources.contracts import CONTRACTS
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.postgres import PostgresResource
from sphere_resources.store import Warehouse
from sphere_resources.warehouse import WarehouseResource
from tests.resources.pg_util import fresh_database, with_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # slow: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = [dg.AssetKey(a) for a in pg_publish.SOURCE_ASSETS]
FAST_RETRY = dg.RetryPolicy(max_retries=1, delay=0.1)


@pytest.fixture(scope="module")
def catalog_url(postgres_url):
    with fresh_database(postgres_url, "sphere_catalog") as url:
        yield url


@pytest.fixture(scope="module")
def placements_contract():
    """shell_placements' registered contract (the synthetic writer follows its schema)."""
    return CONTRACTS["shell_placements"]


@pytest.fixture(scope="module")
def source_root(tmp_path_factory, placements_contract) -> Path:
    """raw_articles (through Dagster) and synthetic patches, embeddings, placements per shard."""
    root = tmp_path_factory.mktemp("pg_sources") / "warehouse"
    wh = WarehouseResource(root=str(root))
    corpus = CorpusSourceResource(kind="bundled")
    for key in shard_keys():
        res = dg.materialize(
            [ingest.raw_articles], partition_key=key, resources={"warehouse": wh, "corpus": corpus}
        )
        assert res.success
        write_synthetic_patches(wh.store(), key)
        write_synthetic_embeddings(wh.store(), key)
        write_synthetic_placements(wh.store(), key)
    return root


def materialize_publish(url, root, shard, retry=FAST_RETRY, upstream=UPSTREAM):
    asset, check = publish.build_postgres_catalog(upstream, retry)
    return dg.materialize(
        [asset, check],
        partition_key=shard,
        resources={
            "warehouse": WarehouseResource(root=str(root)),
            "postgres": PostgresResource(url=url, connect_timeout=3),
        },
        raise_on_error=False,
    )


def fingerprint(url, shard) -> dict[str, tuple[int, str]]:
    """(rows, md5 of every row in key order) per catalog table for one shard."""
    out = {}
    with psycopg.connect(url) as conn:
        for table, order in [
            ("articles", "article_id"),
            ("patches", "article_id, patch_index"),
            ("embeddings", "article_id, patch_index"),
            ("placements", "article_id, patch_index"),
        ]:
            out[table] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), ''))"
                f" FROM sphere.{table} t WHERE shard = %s",
                (int(shard),),
            ).fetchone()
    return out


def step_failure_text(result) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            err = event.step_failure_data.error
            while err is not None:
                texts.append(err.message)
                err = err.cause
    return "\n".join(texts)


def test_publish_every_shard_matches_parquet_and_republish_is_idempotent(catalog_url, source_root):
    for shard in shard_keys():
        res = materialize_publish(catalog_url, source_root, shard)
        assert res.success
        meta = {
            k: v.value
            for k, v in res.asset_materializations_for_node("postgres_catalog")[0].metadata.items()
        }
        n_articles = pq.ParquetFile(
            source_root / f"raw_articles/shard={shard}/part-0.parquet"
        ).metadata.num_rows
        n_patches = pq.ParquetFile(
            source_root / f"blt_patches/shard={shard}/part-0.parquet"
        ).metadata.num_rows
        assert meta["rows/articles"] == n_articles and meta["rows/patches"] == n_patches
        assert meta["rows/embeddings"] == meta["rows/placements"] == n_patches
        assert meta["dagster/row_count"] == n_articles + 3 * n_patches
        assert meta["rows_per_s"] > 0 and meta["seconds"] > 0
        assert meta["target"].endswith(catalog_url.rsplit("/", 1)[1])
        assert meta["skipped"] == "-"
        (check,) = res.get_asset_check_evaluations()
        assert check.passed, check.metadata
        assert check.partition == shard  # recorded against its own shard

    store = Warehouse(source_root)
    with psycopg.connect(catalog_url) as conn:
        for shard in shard_keys():
            # articles: every column equal to the Parquet rows
            parquet = store.read_table("raw_articles", shard).sort_by("article_id").to_pylist()
            rows = conn.execute(
                "SELECT article_id, title, text, source, n_bytes, url FROM sphere.articles"
                " WHERE shard = %s ORDER BY article_id",
                (int(shard),),
            ).fetchall()
            assert [tuple(r.values()) for r in parquet] == rows
            # patches: an article's patches in order concatenate to its UTF-8 bytes
            texts = {r["article_id"]: r["text"] for r in parquet}
            joined = conn.execute(
                "SELECT article_id, string_agg(patch, ''::bytea ORDER BY patch_index)"
                " FROM sphere.patches WHERE shard = %s GROUP BY article_id",
                (int(shard),),
            ).fetchall()
            assert {a: bytes(b) for a, b in joined} == {a: t.encode() for a, t in texts.items()}
            # embeddings: row i of the Parquet keys <-> row i of the safetensors matrix
            keys = store.read_table("patch_embeddings", shard, ["article_id", "patch_index"])
            arrays, _ = store.read_tensors("patch_embeddings", shard, "embeddings")
            stored = conn.execute(
                "SELECT article_id, patch_index, prominence, embedding FROM sphere.embeddings"
                " WHERE shard = %s",
                (int(shard),),
            ).fetchall()
            by_key = {(a, i): (p, e) for a, i, p, e in stored}
            assert len(by_key) == keys.num_rows == len(arrays["embeddings"])
            for row, (a, i) in enumerate(
                zip(
                    keys.column("article_id").to_pylist(),
                    keys.column("patch_index").to_pylist(),
                    strict=True,
                )
            ):
                prominence, embedding = by_key[(a, i)]
                assert prominence == arrays["prominence"][row]
                assert np.array_equal(np.asarray(embedding, np.float32), arrays["embeddings"][row])
        sample = conn.execute(
            "SELECT patch_index, byte_start, byte_len, text, mean_entropy, first_entropy"
            " FROM sphere.patches WHERE article_id = 'pydoc:if' ORDER BY patch_index LIMIT 3"
        ).fetchall()
    ref = pa.concat_tables([store.read_table("blt_patches", s) for s in shard_keys()]).filter(
        pa.compute.equal(pa.compute.field("article_id"), "pydoc:if")
    )
    ref = ref.sort_by("patch_index").slice(0, 3).to_pylist()
    assert sample == [
        (
            r["patch_index"],
            r["byte_start"],
            r["byte_len"],
            r["text"],
            pytest.approx(r["mean_entropy"]),
            pytest.approx(r["first_entropy"]),
        )
        for r in ref
    ]

    before = {s: fingerprint(catalog_url, s) for s in shard_keys()}
    res = materialize_publish(catalog_url, source_root, "1")
    assert res.success
    assert {s: fingerprint(catalog_url, s) for s in shard_keys()} == before

    # placements: shells and coordinates as stored (float32 -> double precision exactly)
    ref = store.read_table("shell_placements", "2").sort_by(
        [("article_id", "ascending"), ("patch_index", "ascending")]
    )
    with psycopg.connect(catalog_url) as conn:
        got = conn.execute(
            "SELECT shell, r, theta, phi FROM sphere.placements WHERE shard = 2"
            " ORDER BY article_id, patch_index"
        ).fetchall()
    assert got == list(
        zip(*(ref.column(c).to_pylist() for c in ("shell", "r", "theta", "phi")), strict=True)
    )

    # a publish whose code location has no shell_placements empties that table and says why
    res = materialize_publish(catalog_url, source_root, "1", upstream=UPSTREAM[:3])
    meta = res.asset_materializations_for_node("postgres_catalog")[0].metadata
    assert "shell_placements' is not an upstream" in meta["skipped"].value
    assert fingerprint(catalog_url, "1")["placements"][0] == 0
    (check,) = res.get_asset_check_evaluations()
    assert check.passed  # the check expects 0 rows for a table the publish does not feed
    assert materialize_publish(catalog_url, source_root, "1").success
    assert fingerprint(catalog_url, "1") == before["1"]


def test_failed_publish_keeps_the_previous_rows(catalog_url, source_root, tmp_path):
    root = tmp_path / "warehouse"
    shutil.copytree(source_root, root)
    assert materialize_publish(catalog_url, root, "0").success
    before = fingerprint(catalog_url, "0")

    # New sources for shard 0: one article fewer (valid), and a patch whose text holds a NUL,
    # which Postgres text cannot store — the COPY of patches fails after articles were replaced.
    store = Warehouse(root)
    articles = store.read_table("raw_articles", "0")
    with store.partition_writer("raw_articles", "0") as w:
        w.write_table(articles.slice(1))
    patches = store.read_table("blt_patches", "0")
    bad = patches.num_rows // 2
    texts = patches.column("text").to_pylist()
    texts[bad] = "bad\x00row"
    patches = patches.set_column(
        patches.schema.get_field_index("text"), "text", pa.array(texts, pa.string())
    )
    with store.partition_writer("blt_patches", "0") as w:
        w.write_table(patches)
    bad_row = patches.slice(bad, 1).to_pylist()[0]

    res = materialize_publish(catalog_url, root, "0")
    assert not res.success
    message = step_failure_text(res)
    assert "rolled back" in message and "sphere.patches" in message and "blt_patches" in message
    assert f"row {bad}" in message and repr(bad_row["article_id"]) in message
    assert f"patch_index={bad_row['patch_index']}" in message
    # a data error is not retried
    assert not [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert fingerprint(catalog_url, "0") == before

    # the same failure straight from the publishing function
    with psycopg.connect(catalog_url) as conn:
        with pytest.raises(pg_publish.PublishError, match=r"column 'text'.* NUL \(U\+0000\)"):
            pg_publish.publish_shard(conn, store, "0")
    assert fingerprint(catalog_url, "0") == before

    # embeddings whose safetensors rows are not the Parquet rows' patches
    with store.partition_writer("blt_patches", "0") as w:
        w.write_table(Warehouse(source_root).read_table("blt_patches", "0"))
    keys = store.read_table("patch_embeddings", "0")
    arrays, meta = store.read_tensors("patch_embeddings", "0", "embeddings")
    arrays["patch_index"] = np.roll(arrays["patch_index"], 1)
    with store.partition_writer("patch_embeddings", "0") as w:
        w.write_table(keys)
        w.write_tensors("embeddings", arrays, meta)
    with psycopg.connect(catalog_url) as conn:
        with pytest.raises(
            pg_publish.PublishError, match="'patch_index': row 0 .*different patches"
        ):
            pg_publish.publish_shard(conn, store, "0")
    assert fingerprint(catalog_url, "0") == before


def test_check_catches_duplicated_keys_and_stale_counts(catalog_url, source_root, tmp_path):
    root = tmp_path / "warehouse"
    shutil.copytree(source_root, root)
    store = Warehouse(root)
    patches = store.read_table("blt_patches", "3")
    with store.partition_writer("blt_patches", "3") as w:
        w.write_table(pa.concat_tables([patches, patches.slice(5, 2)]))
    res = materialize_publish(catalog_url, root, "3")
    assert res.asset_materializations_for_node("postgres_catalog")  # published ...
    (check,) = res.get_asset_check_evaluations()  # ... but the check fails
    assert not check.passed
    assert "shard 3 patches: 2 duplicated keys" in check.metadata["mismatches"].value

    # upstream changed after the publish: the check run on its own reports the stale counts
    with store.partition_writer("blt_patches", "3") as w:
        w.write_table(patches)
    asset, check_def = publish.build_postgres_catalog(UPSTREAM, FAST_RETRY)
    res = dg.materialize(
        [asset, check_def],
        selection=dg.AssetSelection.checks(check_def),  # on its own: checks every shard
        resources={
            "warehouse": WarehouseResource(root=str(root)),
            "postgres": PostgresResource(url=catalog_url),
        },
        raise_on_error=False,  # a failed blocking check fails the run
    )
    checks = {e.partition: e for e in res.get_asset_check_evaluations()}
    n = patches.num_rows
    # one evaluation per shard (a failure in shard 3 is not hidden by the shards after it) and
    # the summary of the unpartitioned check run
    assert {k: e.passed for k, e in checks.items()} == {
        "0": True,
        "1": True,
        "2": True,
        "3": False,
        None: False,
    }
    assert f"shard 3 patches: {n + 2} != {n}" in checks["3"].metadata["mismatches"].value
    assert checks["2"].metadata["mismatches"].value == "-"
    assert checks[None].metadata["failed_partitions"].value == "3"
    assert materialize_publish(catalog_url, source_root, "3").success  # restore for other tests


def test_unreachable_postgres_names_host_and_database_and_is_not_retried(source_root, catalog_url):
    # nothing listens on port 1, and a missing database: permanent, so no retry
    # (tests/catalog/test_faults.py has the transient cases that are retried)
    res = materialize_publish("postgresql://sphere:s3cret@127.0.0.1:1/sphere_db", source_root, "0")
    assert not res.success
    message = step_failure_text(res)
    assert "127.0.0.1:1/sphere_db" in message and "s3cret" not in message
    retries = [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []

    missing = with_database(catalog_url, "sphere_no_such_db")
    res = materialize_publish(missing, source_root, "0")
    message = step_failure_text(res)
    assert not res.success and "sphere_no_such_db" in message and "does not exist" in message
    assert not [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    # the code location's asset uses the backoff policy (for transient errors)
    asset, _ = publish.build_postgres_catalog(UPSTREAM)
    assert asset.op.retry_policy == publish.RETRY_POLICY


PUBLISH_SCRIPT = """
import json, sys, psycopg
import sphere_assets  # registers the data contracts, as the publishing asset's process does
from sphere_resources import pg_publish
from sphere_resources.store import Warehouse
url, root, shard = sys.argv[1:4]
with psycopg.connect(url) as conn:
    rep = pg_publish.publish_shard(conn, Warehouse(root), shard, ["articles", "patches"])
print(json.dumps({t: r.rows for t, r in rep.tables.items()}))
"""


def run_publishers(url, root, shards, lock_timeout="10s"):
    env = {**os.environ, "PGOPTIONS": f"-c lock_timeout={lock_timeout}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISH_SCRIPT, url, str(root), shard],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in shards
    ]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def test_concurrent_publishes_of_different_shards(catalog_url, source_root):
    with psycopg.connect(catalog_url) as conn:
        pg_publish.apply_migrations(conn)
    results = run_publishers(catalog_url, source_root, ["2", "3"])
    for (rc, out, err), shard in zip(results, ["2", "3"], strict=True):
        assert rc == 0, err
        rows = json.loads(out)
        assert rows["articles"] == Warehouse(source_root).read_table("raw_articles", shard).num_rows

    # While shard 1 is being published (transaction open, its rows deleted), a publish of
    # shard 2 goes through; a second publish of shard 1 waits for it (here: hits lock_timeout).
    holder = psycopg.connect(catalog_url)
    try:
        holder.execute(
            "SELECT pg_advisory_xact_lock(%s, 1)", (pg_publish.lock_class("publish", "sphere"),)
        )
        holder.execute("DELETE FROM sphere.articles WHERE shard = 1")
        holder.execute("DELETE FROM sphere.patches WHERE shard = 1")
        t0 = time.perf_counter()
        (other, same) = run_publishers(catalog_url, source_root, ["2", "1"], lock_timeout="2s")
        assert other[0] == 0, other[2]
        assert same[0] != 0 and "lock timeout" in same[2]
        assert time.perf_counter() - t0 < 60
    finally:
        holder.rollback()
        holder.close()
    with psycopg.connect(catalog_url) as conn:
        for shard in ["1", "2"]:
            (n,) = conn.execute(
                "SELECT count(*) FROM sphere.articles WHERE shard = %s", (int(shard),)
            ).fetchone()
            if n:  # shard 1 may not have been published by an earlier test when run alone
                assert n == Warehouse(source_root).read_table("raw_articles", shard).num_rows


def readme_catalog_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks if "sphere." in b]


def test_readme_queries_run_and_use_the_indexes(catalog_url, source_root):
    for shard in shard_keys():
        assert materialize_publish(catalog_url, source_root, shard).success
    queries = readme_catalog_queries()
    assert len(queries) >= 3, "README must show the Postgres catalog queries"
    with psycopg.connect(catalog_url) as conn:
        results = [conn.execute(q).fetchall() for q in queries]
        conn.execute("SET enable_seqscan = off")  # tiny tables: ask whether an index *can* serve
        plans = ["\n".join(r[0] for r in conn.execute("EXPLAIN " + q).fetchall()) for q in queries]
    by_article = next(i for i, q in enumerate(queries) if "pydoc:if" in q)
    rows = results[by_article]
    assert rows and [r[0] for r in rows] == list(range(len(rows)))  # patch_index in order
    assert "patches_key_idx" in plans[by_article]
    occupancy = next(i for i, q in enumerate(queries) if "GROUP BY shell" in q)
    assert "placements_shell_idx" in plans[occupancy]
    shells = dict(results[occupancy])
    with psycopg.connect(catalog_url) as conn:
        (total,) = conn.execute("SELECT count(*) FROM sphere.patches").fetchone()
    assert sum(shells.values()) == total and len(shells) > 1
    prominent = next(i for i, q in enumerate(queries) if "prominence DESC" in q)
    assert "embeddings_prominence_idx" in plans[prominent]
    top = [r[2] for r in results[prominent]]
    assert len(top) == 20 and top == sorted(top, reverse=True)


def test_migrations_apply_once_and_refuse_edits(catalog_url, tmp_path):
    with psycopg.connect(catalog_url) as conn:
        pg_publish.apply_migrations(conn)
        assert pg_publish.apply_migrations(conn) == []
        versions = conn.execute("SELECT version FROM sphere.schema_migrations").fetchall()
        assert versions == [(m.version,) for m in pg_publish.migration_files()]
        edited = tmp_path / "migrations"
        shutil.copytree(pg_publish.MIGRATIONS_DIR, edited)
        first = sorted(edited.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(pg_publish.MigrationError, match="changed after it was applied"):
            pg_publish.apply_migrations(conn, directory=edited)
        # a different schema gets its own copy of the tables
        assert pg_publish.apply_migrations(conn, schema="sphere_mig_test") == [
            v for (v,) in versions
        ]
        conn.execute("DROP SCHEMA sphere_mig_test CASCADE")
        conn.commit()


def test_postgres_catalog_joins_the_code_location_only_with_a_url():
    family = [ingest.raw_articles]
    assert publish.publish_definitions(family, enabled=False) == ([], [])
    (asset,), (check,) = publish.publish_definitions(family, enabled=True)
    assert asset.key == dg.AssetKey("postgres_catalog")
    assert {k.asset_key for k in check.check_keys} == {asset.key}
    assert set(asset.dependency_keys) == {dg.AssetKey("raw_articles")}

    from sphere_assets.definitions import defs

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert (dg.AssetKey("postgres_catalog") in keys) == bool(os.environ.get("SPHERE_POSTGRES_URL"))
