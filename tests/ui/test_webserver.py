"""The Dagster UI end to end: dagster-webserver on a loopback port, its GraphQL API, one launch.

Starts ``dagster-webserver -w workspace.yaml`` in a subprocess (temporary DAGSTER_HOME and
warehouse), waits for ``/server_info`` and the code location, reads the asset graph (every asset
key of ``defs``, partition keys of every partitioned asset), launches ``raw_articles`` partition 1
through ``launchRun`` (the UI's "Materialize" button does the same), polls the run to SUCCESS,
checks the partition on disk and in the UI's partition status, and stops the server.
"""

import os
from pathlib import Path

import pytest

from sphere_assets.definitions import defs
from tests.ui.webserver import INSTANCE_YAML, LOCATION, REPOSITORY, dagster_webserver, wait_for

# a real web server: left out of `make test-fast`
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


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
    log = tmp_path / "webserver.log"
    with dagster_webserver(env, log) as (client, proc):
        yield client, tmp_path, proc, log


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
