"""The Dagster UI end to end: dagster-webserver on a loopback port, its GraphQL API, one launch.

Starts ``dagster-webserver -w workspace.yaml`` in a subprocess (temporary DAGSTER_HOME and
warehouse), waits for ``/server_info`` and the code location, reads the asset graph (every asset
key of ``defs``, partition keys of every partitioned asset), launches ``raw_articles`` partition 1
through ``launchRun`` (the UI's "Materialize" button does the same), polls the run to SUCCESS,
checks the partition on disk and in the UI's partition status, and stops the server.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sphere_assets.definitions import defs

# a real web server: left out of `make test-fast`
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LOCATION = "sphere"
REPOSITORY = "__repository__"

# Launched runs start right away: the queued coordinator of the repo's dagster.yaml needs the
# daemon, which this test does not run.
INSTANCE_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

ASSET_NODES = """
query {
  assetNodes {
    assetKey { path }
    groupName
    description
    isPartitioned
    partitionKeysByDimension { name partitionKeys }
  }
}
"""

LOCATION_STATUS = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_STATUS = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

PARTITION_STATUS = """
query {
  assetNodes(assetKeys: [{path: ["raw_articles"]}]) {
    assetPartitionStatuses {
      __typename
      ... on DefaultPartitionStatuses { materializedPartitions }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return resp.status, resp.read()

    def gql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            self.base + "/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
        assert "errors" not in out, out["errors"]
        return out["data"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            last = predicate()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what} (last: {last}):\n{log.read_text()[-4000:]}")


@pytest.fixture
def webserver(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        SPHERE_WAREHOUSE=str(tmp_path / "warehouse"),
        SPHERE_CATALOG=str(tmp_path / "sphere.duckdb"),
    )
    for name in ("SPHERE_INCOMING_DIR", "SPHERE_CORPUS", "SPHERE_CORPUS_GLOB"):
        env.pop(name, None)
    # the run worker executes its step itself: one interpreter start-up less on a 2-core CI box
    env["SPHERE_EXECUTOR"] = "in_process"
    port = free_port()
    log = tmp_path / "webserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers share the group
        )
    client = Client(port)
    try:
        wait_for(lambda: client.get("/server_info")[0] == 200, 120, "/server_info", proc, log)

        def location_loaded():
            entries = client.gql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
            entry = next(e for e in entries if e["name"] == LOCATION)
            if entry["loadStatus"] != "LOADED":
                return None
            loaded = entry["locationOrLoadError"]
            assert loaded["__typename"] == "RepositoryLocation", loaded
            return True

        wait_for(location_loaded, 180, "the code location", proc, log)
        yield client, tmp_path, proc, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.timeout(420)
def test_ui_lists_the_asset_graph_and_materializes_a_partition(webserver):
    client, tmp_path, proc, log = webserver

    nodes = client.gql(ASSET_NODES)["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    graph = defs.resolve_asset_graph()
    expected = {
        k.to_user_string(): graph.get(k).partitions_def
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_materializable
    }
    assert set(expected) <= set(by_key), set(expected) - set(by_key)
    for name, pdef in expected.items():
        node = by_key[name]
        assert node["description"] and node["groupName"] != "default", name
        assert node["isPartitioned"] == (pdef is not None), name
        if pdef is not None:
            keys = [k for d in node["partitionKeysByDimension"] for k in d["partitionKeys"]]
            assert keys == pdef.get_partition_keys(), name

    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": "shards_job",
            "assetSelection": [{"path": ["raw_articles"]}],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "1"}]},
    }
    launched = client.gql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def finished():
        run = client.gql(RUN_STATUS, {"runId": run_id})["runOrError"]
        return run["status"] if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = wait_for(finished, 300, f"run {run_id}", proc, log)
    assert status == "SUCCESS", log.read_text()[-4000:]
    assert (tmp_path / "warehouse" / "raw_articles" / "shard=1" / "part-0.parquet").is_file()
    assert not (tmp_path / "warehouse" / "raw_articles" / "shard=0").exists()
    statuses = client.gql(PARTITION_STATUS)["assetNodes"][0]["assetPartitionStatuses"]
    assert statuses["materializedPartitions"] == ["1"]
