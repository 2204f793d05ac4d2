"""raw_articles (and its blocking check), materialized into a temporary warehouse; the dagster CLI
on raw_articles."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.core.partitions import shard_keys, shard_partitions
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.ingest.io import rows_to_table
from sphere_assets.lib.text.corpus import ArticleRow, shard_of
from sphere_resources.corpus import CorpusSourceResource
from tests.dagster_cli import cli_env

REPO = Path(__file__).resolve().parents[2]


def materialize_shards(resources, keys=None, assets=None):
    results = {}
    for key in keys or shard_keys():
        res = dg.materialize(
            assets or [ingest.raw_articles, ingest.raw_articles_ids_unique_and_sharded],
            partition_key=key,
            resources=resources,
        )
        assert res.success
        results[key] = res
    return results


def materialization_metadata(result, asset="raw_articles"):
    mats = result.asset_materializations_for_node(asset)
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
    }


def test_every_bundled_article_lands_exactly_once_in_its_shard(resources, tmp_path):
    from pydoc_data.topics import topics

    results = materialize_shards(resources)
    root = Path(resources["warehouse"].root) / "raw_articles"
    seen = {}
    for key in shard_keys():
        table = pq.read_table(root / f"shard={key}" / "part-0.parquet")
        for row in table.to_pylist():
            assert row["article_id"] not in seen
            assert shard_of(row["article_id"], len(shard_keys())) == int(key)
            assert row["n_bytes"] == len(row["text"].encode())
            seen[row["article_id"]] = row
        meta = materialization_metadata(results[key])
        assert meta["dagster/row_count"] == table.num_rows
        assert meta["articles_in"] == meta["rows_out"] + meta["rejects_total"]
    assert set(seen) == {f"pydoc:{k}" for k in topics}
    for key, text in topics.items():
        assert seen[f"pydoc:{key}"]["text"] == text  # pydoc topics are already NFC
    first = file_digests(root)
    # a second run gives byte-identical files
    materialize_shards(resources)
    assert file_digests(root) == first


def write_messy_corpus(d: Path) -> int:
    d.mkdir()
    lines = [
        {"id": "ok1", "title": "One", "text": "first good article"},
        {"id": "ok2", "title": "Two", "text": "second good article", "url": "http://x/2"},
        {"id": "ok1", "title": "Dup", "text": "duplicate id"},
        {"id": "blank", "text": "   \n  "},
        {"id": "notext", "title": "no text field"},
        {"title": "no id", "text": "orphan"},
        {"id": "big", "text": "x" * 500},
    ]
    body = "\n".join(json.dumps(x) for x in lines) + "\n{broken json\n"
    (d / "a.jsonl").write_text(body)
    (d / "bad.txt").write_bytes(b"caf\xe9 latin-1 bytes")
    (d / "good.txt").write_text("a text file article")
    return len(lines) + 3


def test_files_source_counts_every_reject_by_reason(resources, tmp_path):
    n_in = write_messy_corpus(tmp_path / "corpus")
    resources["corpus"] = CorpusSourceResource(
        kind="files", path_glob=str(tmp_path / "corpus" / "*"), max_article_bytes=400
    )
    results = materialize_shards(resources)
    totals = {}
    for res in results.values():
        for k, v in materialization_metadata(res).items():
            if k.startswith("rejects/") or k in ("articles_in", "rows_out"):
                totals[k] = totals.get(k, 0) + v
    assert totals["articles_in"] == n_in
    assert totals["rows_out"] == 3  # ok1, ok2, good.txt
    assert totals["rejects/duplicate_id"] == 1
    assert totals["rejects/empty"] == 1
    assert totals["rejects/missing_text"] == 1
    assert totals["rejects/missing_id"] == 1
    assert totals["rejects/oversize"] == 1
    assert totals["rejects/invalid_json"] == 1
    assert totals["rejects/invalid_utf8"] == 1
    con = duckdb.connect()
    rows = con.execute(
        f"select article_id, url from read_parquet('{resources['warehouse'].root}/raw_articles/*/*.parquet', hive_partitioning=true) order by 1"
    ).fetchall()
    assert rows == [("good.txt", None), ("ok1", None), ("ok2", "http://x/2")]


def test_hf_source_streams_a_local_dataset_through_datasets(resources, tmp_path):
    data = tmp_path / "hf"
    data.mkdir()
    n = 60
    pq.write_table(
        pa.table(
            {
                "id": [str(i) for i in range(n)],
                "url": [f"https://example.org/wiki/{i}" for i in range(n)],
                "title": [f"Article {i}" for i in range(n)],
                "text": [f"Body of article {i}. " * (i + 1) for i in range(n)],
            }
        ),
        data / "train-00000.parquet",
    )
    resources["corpus"] = CorpusSourceResource(
        kind="hf", hf_name="parquet", hf_data_files=str(data / "*.parquet")
    )
    materialize_shards(resources)
    con = duckdb.connect()
    got = con.execute(
        f"select count(*), count(distinct article_id), min(source), sum(n_bytes) from read_parquet('{resources['warehouse'].root}/raw_articles/*/*.parquet')"
    ).fetchone()
    assert got[0] == got[1] == n
    assert got[2] == "hf:parquet/train"
    assert got[3] == sum(len((f"Body of article {i}. " * (i + 1)).encode()) for i in range(n))


def test_hf_source_missing_text_field_is_a_clear_error(resources, tmp_path):
    data = tmp_path / "hf"
    data.mkdir()
    pq.write_table(pa.table({"id": ["1"], "content": ["x"]}), data / "train.parquet")
    resources["corpus"] = CorpusSourceResource(
        kind="hf", hf_name="parquet", hf_data_files=str(data / "*.parquet")
    )
    with pytest.raises(KeyError, match="field 'text' is not a column"):
        dg.materialize([ingest.raw_articles], partition_key="0", resources=resources)


def test_partition_range_in_one_run_writes_each_partition(resources):
    res = dg.materialize(
        [ingest.raw_articles],
        resources=resources,
        tags={"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "3"},
    )
    assert res.success
    root = Path(resources["warehouse"].root) / "raw_articles"
    assert sorted(p.name for p in root.iterdir()) == ["shard=1", "shard=2", "shard=3"]


@pytest.mark.slow
def test_dagster_cli_materializes_a_partition_range(tmp_path):
    bindir = Path(sys.executable).parent
    env = cli_env(tmp_path)
    proc = subprocess.run(
        [
            str(bindir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "sphere_assets.definitions",
            "--select",
            "raw_articles",
            "--partition-range",
            "0...1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = sorted(p.name for p in (tmp_path / "wh" / "raw_articles").iterdir())
    assert parts == ["shard=0", "shard=1"]
    # the run is recorded in the instance under DAGSTER_HOME
    code = "import dagster as dg; i = dg.DagsterInstance.get(); print(len(i.get_runs()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) >= 1


@pytest.mark.slow
def test_env_configured_files_source_loads_and_materializes(tmp_path):
    """SPHERE_CORPUS / SPHERE_CORPUS_GLOB reach the resource through dg.EnvVar at run time."""
    write_messy_corpus(tmp_path / "corpus")
    env = cli_env(tmp_path)
    env.update(
        SPHERE_CORPUS="files", SPHERE_CORPUS_GLOB=str(tmp_path / "corpus" / "*"), SPHERE_SHARDS="1"
    )
    code = """
import dagster as dg
from sphere_assets.definitions import defs
job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("raw_articles")})
res = job.execute_in_process(partition_key="0", instance=dg.DagsterInstance.ephemeral())
mat = res.asset_materializations_for_node("raw_articles")[0]
print(mat.metadata["rows_out"].value, mat.metadata["source"].value)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows, source = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(rows) == 4 and source.startswith(
        "files:"
    )  # ok1, ok2, big (no size limit here), good.txt
    env["SPHERE_CORPUS"] = "wikipedia"
    bad = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 and "not one of ('bundled', 'files', 'hf')" in bad.stderr


@dg.asset(
    partitions_def=shard_partitions,
    deps=[ingest.raw_articles],
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def downstream_probe(context: dg.AssetExecutionContext) -> None:
    context.log.info("ran")


def test_failing_blocking_check_blocks_downstream(resources, monkeypatch):
    check = ingest.raw_articles_ids_unique_and_sharded
    assert any(spec.blocking for spec in check.check_specs)
    store = resources["warehouse"].store()
    real_write_shards = ingest.write_shards

    def buggy_write_shards(*args, **kwargs):
        """The real writer, then a row that hashes to another shard appended to shard 0."""
        result = real_write_shards(*args, **kwargs)
        table = store.read_table("raw_articles", "0")
        bad_id = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", len(shard_keys())) != 0)
        bad = rows_to_table([ArticleRow(bad_id, "t", "text", "test", 4, None)])
        with store.partition_writer("raw_articles", "0") as w:
            w.write_table(pa.concat_tables([table, bad.cast(table.schema)]))
        return result

    monkeypatch.setattr(ingest, "write_shards", buggy_write_shards)
    res = dg.materialize(
        [ingest.raw_articles, check, downstream_probe],
        partition_key="0",
        resources=resources,
        raise_on_error=False,
    )
    assert not res.success
    evals = res.get_asset_check_evaluations()
    assert [(e.partition, e.passed) for e in evals] == [("0", False)]
    assert evals[0].metadata["rows_in_wrong_shard"].value == 1
    assert res.asset_materializations_for_node("raw_articles")
    assert not res.asset_materializations_for_node("downstream_probe")
    # once the writer is fixed, the same run goes through
    monkeypatch.setattr(ingest, "write_shards", real_write_shards)
    res = dg.materialize(
        [ingest.raw_articles, check, downstream_probe], partition_key="0", resources=resources
    )
    assert res.success and res.asset_materializations_for_node("downstream_probe")
