"""incoming_files: new, changed and deleted files re-ingest exactly the shards they touch."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from sphere_assets.definitions import defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.refresh import sensors
from sphere_assets.refresh.incoming import loads_state
from sphere_resources.corpus import CorpusSourceResource
from tests.defs_graph import N


def _sensor_eval(instance, cursor):
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"corpus": CorpusSourceResource(kind="files", path_glob="")},
    ) as ctx:
        return sensors.incoming_files_sensor(ctx)


def _requests(result) -> dict[str, dg.RunRequest]:
    return {r.partition_key: r for r in (result.run_requests or [])}


def test_incoming_sensor_triggers_only_affected_shards_and_is_idempotent(
    tmp_path, monkeypatch, resources
):
    inc = tmp_path / "incoming"
    inc.mkdir()
    monkeypatch.delenv("SPHERE_INCOMING_DIR", raising=False)
    with dg.instance_for_test() as instance:
        skipped = _sensor_eval(instance, None)
        assert "SPHERE_INCOMING_DIR is not set" in skipped.skip_reason.skip_message
        monkeypatch.setenv("SPHERE_INCOMING_DIR", str(inc))
        (inc / "sub").mkdir()
        (inc / "a.txt").write_text("alpha article")
        (inc / "sub" / "b.md").write_text("# beta\nbeta article")
        (inc / "rows.jsonl").write_text(
            "\n".join(json.dumps({"id": i, "text": f"row {i}"}) for i in ("r1", "r2")) + "\n"
        )
        (inc / ".c.txt.partial").write_text("half written")  # dot-files are invisible
        first = _sensor_eval(instance, None)
        want = {shard_of(x, N) for x in ("a.txt", "sub/b.md", "r1", "r2")}
        reqs = _requests(first)
        assert set(reqs) == {str(s) for s in want}
        for pk, r in reqs.items():
            assert r.asset_selection[0] == ingest.raw_articles.key
            assert r.run_config["resources"]["corpus"]["config"] == {
                "kind": "files",
                "path_glob": str(inc / "**" / "*"),
            }
            assert r.run_key.startswith(f"incoming/g1/shard={pk}/")
        state = json.loads(first.cursor)
        mtime_ns, size, sha, shards = state["files"]["a.txt"]
        assert size == len("alpha article") and len(sha) == 64 and shards == [shard_of("a.txt", N)]
        assert ".c.txt.partial" not in state["files"]
        # same tick evaluated again from the same cursor: the same run keys (Dagster dedupes)
        assert [r.run_key for r in _requests(_sensor_eval(instance, None)).values()] == [
            r.run_key for r in reqs.values()
        ]
        # nothing changed; a touch (new mtime, same bytes) is not a change either
        assert _sensor_eval(instance, first.cursor).skip_reason is not None
        os.utime(inc / "a.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
        touched = _sensor_eval(instance, first.cursor)
        assert touched.skip_reason is not None and not touched.run_requests
        cursor = touched.cursor
        # change one text file: exactly its shard
        (inc / "a.txt").write_text("alpha article, second edition")
        changed = _sensor_eval(instance, cursor)
        assert set(_requests(changed)) == {str(shard_of("a.txt", N))}
        assert loads_state(changed.cursor, N).generation == 2
        # rewrite the jsonl: r1 removed, r3 added -> shards of r1, r2 and r3
        (inc / "rows.jsonl").write_text(
            "\n".join(json.dumps({"id": i, "text": f"row {i}"}) for i in ("r2", "r3")) + "\n"
        )
        rewritten = _sensor_eval(instance, changed.cursor)
        assert set(_requests(rewritten)) == {str(shard_of(i, N)) for i in ("r1", "r2", "r3")}
        # delete a file: its old shard
        (inc / "sub" / "b.md").unlink()
        deleted = _sensor_eval(instance, rewritten.cursor)
        assert set(_requests(deleted)) == {str(shard_of("sub/b.md", N))}

        # the requested run really ingests the new state into that shard
        req = _requests(changed)[str(shard_of("a.txt", N))]
        cfg = req.run_config["resources"]["corpus"]["config"]
        resources["corpus"] = CorpusSourceResource(**cfg)
        assert dg.materialize(
            [ingest.raw_articles], partition_key=req.partition_key, resources=resources
        ).success
        table = pq.read_table(
            Path(resources["warehouse"].partition_dir("raw_articles", req.partition_key))
            / "part-0.parquet"
        )
        rows = {r["article_id"]: r["text"] for r in table.to_pylist()}
        assert rows["a.txt"] == "alpha article, second edition"
