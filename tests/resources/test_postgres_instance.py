"""Dagster instance storage in Postgres: deploy/postgres/dagster.yaml on a fresh database.

Two runs through the `dagster asset materialize` CLI (a single partition, then a partition range
— one run for two partitions, as raw_articles' single-run backfill policy makes a backfill),
then plain SQL on Dagster's own tables (runs, run_tags, event_logs) shows both.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.resources.pg_util import fresh_database, with_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # slow: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


@pytest.fixture(scope="module")
def dagster_pg(postgres_url, tmp_path_factory):
    """(libpq URL of a fresh database, env for the CLI with DAGSTER_HOME using the deploy yaml)."""
    with fresh_database(postgres_url, "sphere_dagster") as url:
        home = tmp_path_factory.mktemp("dagster_home_pg")
        shutil.copyfile(REPO / "deploy/postgres/dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPHERE_")}
        env.update(
            DAGSTER_HOME=str(home),
            SPHERE_DAGSTER_PG_URL=with_database(url, url.rsplit("/", 1)[1], "postgresql+psycopg2"),
            SPHERE_WAREHOUSE=str(home / "warehouse"),
            SPHERE_CATALOG=str(home / "sphere.duckdb"),
        )
        yield url, env


def materialize(env, *partition_args) -> None:
    cmd = [DAGSTER, "asset", "materialize", "-m", "sphere_assets.definitions"]
    cmd += ["--select", "raw_articles", *partition_args, "--config-json", IN_PROCESS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]


def materializations(conn, run_id) -> list[str]:
    rows = conn.execute(
        "SELECT partition FROM event_logs WHERE run_id = %s"
        " AND dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s ORDER BY partition",
        (run_id, json.dumps(["raw_articles"])),
    ).fetchall()
    return [p for (p,) in rows]


def test_cli_runs_are_recorded_in_postgres(dagster_pg):
    url, env = dagster_pg
    materialize(env, "--partition", "0")
    materialize(env, "--partition-range", "1...2")

    with psycopg.connect(url) as conn:
        runs = conn.execute(
            "SELECT run_id, status, pipeline_name FROM runs ORDER BY create_timestamp"
        ).fetchall()
        assert [(s, j) for _, s, j in runs] == [("SUCCESS", "__ASSET_JOB")] * 2
        (single, ranged) = [r for r, _, _ in runs]
        tags = {
            run: dict(
                conn.execute("SELECT key, value FROM run_tags WHERE run_id = %s", (run,)).fetchall()
            )
            for run in (single, ranged)
        }
        assert tags[single]["dagster/partition"] == "0"
        assert tags[ranged]["dagster/asset_partition_range_start"] == "1"
        assert tags[ranged]["dagster/asset_partition_range_end"] == "2"

        assert materializations(conn, single) == ["0"]
        assert materializations(conn, ranged) == ["1", "2"]  # one run, two partitions
        events = dict(
            conn.execute(
                "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s"
                " AND dagster_event_type IS NOT NULL GROUP BY 1",
                (ranged,),
            ).fetchall()
        )
        # the check reports per partition: one evaluation for each of the range's two shards
        assert events["PIPELINE_SUCCESS"] == 1 and events["ASSET_CHECK_EVALUATION"] == 2
        # the asset index Dagster keeps for the UI
        (last_run,) = conn.execute(
            "SELECT last_run_id FROM asset_keys WHERE asset_key = %s",
            (json.dumps(["raw_articles"]),),
        ).fetchone()
        assert last_run == ranged

    # the written files went to the warehouse of this environment
    assert sorted(p.name for p in (Path(env["SPHERE_WAREHOUSE"]) / "raw_articles").iterdir()) == [
        "shard=0",
        "shard=1",
        "shard=2",
    ]
