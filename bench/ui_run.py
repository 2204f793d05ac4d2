"""Benchmark: a UI run of one ``raw_articles`` partition with its checks, as a Dagster user
launches it (the "Materialize" button: GraphQL ``launchRun`` of the asset and its checks).

Starts ``dagster-webserver -w workspace.yaml`` on a free loopback port with a temporary
DAGSTER_HOME and warehouse (bundled corpus), waits for the code location, launches the run and
polls it to SUCCESS. Printed per executor variant (the default multiprocess executor, the same
with ``start_method: forkserver``, and ``SPHERE_EXECUTOR=in_process``): the wall time from launch to SUCCESS and the run's
own start-to-end time, with the step times. References measured in the same run: the same asset
and check materialized in this process (``dg.materialize``: the compute alone, no processes) and
the import of the code location (bench/code_location.py), which every run worker and every
multiprocess step pays. Target (issue 18): <= 15 s on 2 cores with the default executor.

    .venv/bin/python bench/ui_run.py [--partition 0] [--variants multiprocess,forkserver,in_process]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ package
from tests.ui.webserver import INSTANCE_YAML, dagster_webserver, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 15.0


CHECKS = """
query { assetNodes(assetKeys: [{path: ["raw_articles"]}]) { assetChecksOrError {
  ... on AssetChecks { checks { name } } } } }
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN = """
query Run($runId: ID!) { runOrError(runId: $runId) { ... on Run {
  status startTime endTime stepStats { stepKey status startTime endTime } } } }
"""


# variant -> (SPHERE_EXECUTOR, run config of the launch)
VARIANTS = {
    # what the UI's Materialize button runs today: every step in a fresh (spawned) interpreter
    "multiprocess": ("multiprocess", {}),
    # the same executor forking its steps from a server that imported the code location once
    "forkserver": (
        "multiprocess",
        {"execution": {"config": {"multiprocess": {"start_method": {"forkserver": {}}}}}},
    ),
    # every step in the run worker itself (SPHERE_EXECUTOR=in_process)
    "in_process": ("in_process", {}),
}


def ui_run(variant: str, partition: str, tmp: Path) -> dict:
    """One webserver, one launch of raw_articles[partition] + its checks; times in seconds."""
    executor, run_config = VARIANTS[variant]
    home = tmp / f"home_{variant}"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPHERE_")}
    env.update(
        DAGSTER_HOME=str(home),
        SPHERE_WAREHOUSE=str(tmp / f"warehouse_{variant}"),
        SPHERE_CATALOG=str(tmp / f"catalog_{variant}.duckdb"),
        SPHERE_EXECUTOR=executor,
    )
    log = tmp / f"webserver_{variant}.log"
    with dagster_webserver(env, log) as (client, proc):
        node = client.gql(CHECKS)["assetNodes"][0]
        checks = [c["name"] for c in node["assetChecksOrError"]["checks"]]
        params = {
            "selector": {
                "repositoryLocationName": "sphere",
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": ["raw_articles"]}],
                "assetCheckSelection": [
                    {"assetKey": {"path": ["raw_articles"]}, "name": c} for c in checks
                ],
            },
            "runConfigData": run_config,
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        t0 = time.perf_counter()
        launched = client.gql(LAUNCH_RUN, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(launched)
        run_id = launched["run"]["runId"]

        def finished():
            run = client.gql(RUN, {"runId": run_id})["runOrError"]
            return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

        run = wait_for(finished, 300, f"run {run_id}", proc, log)
        wall = time.perf_counter() - t0
        if run["status"] != "SUCCESS":
            raise RuntimeError(f"run {run_id}: {run['status']}\n{log.read_text()[-3000:]}")
        steps = {
            s["stepKey"]: s["endTime"] - s["startTime"]
            for s in run["stepStats"]
            if s["startTime"] and s["endTime"]
        }
        return {
            "wall": wall,
            "run": run["endTime"] - run["startTime"],
            "steps": steps,
            "checks": checks,
        }


IN_PROCESS = """
import json, os, sys, time
import dagster as dg
from sphere_assets.definitions import defs
graph = defs.resolve_asset_graph()
key = dg.AssetKey("raw_articles")
job = defs.resolve_implicit_global_asset_job_def()
t0 = time.perf_counter()
result = job.get_subset(
    asset_selection={key}, asset_check_selection=set(graph.get_check_keys_for_assets({key}))
).execute_in_process(partition_key=sys.argv[1], instance=dg.DagsterInstance.ephemeral())
assert result.success
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

IMPORT = """
import json, time
t0 = time.perf_counter()
import sphere_assets.definitions
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def in_python(code: str, tmp: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPHERE_")}
    env.update(SPHERE_WAREHOUSE=str(tmp / "warehouse_ref"), DAGSTER_HOME=str(tmp))
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", default="0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sphere-ui-bench-") as tmp_name:
        tmp = Path(tmp_name)
        imports = in_python(IMPORT, tmp)
        compute = in_python(IN_PROCESS, tmp, args.partition)
        runs = {v: ui_run(v, args.partition, tmp) for v in args.variants.split(",")}
    print(f"reference: import sphere_assets.definitions {imports:.2f} s")
    print(f"reference: raw_articles[{args.partition}] + checks in-process {compute:.2f} s")
    print(f"{'variant':<14} {'launch->SUCCESS s':>18} {'run s':>7} {'/ in-process':>13}  steps (s)")
    ok = True
    for variant, r in runs.items():
        steps = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["steps"].items()))
        print(
            f"{variant:<14} {r['wall']:>18.1f} {r['run']:>7.1f} {r['wall'] / compute:>12.1f}x  "
            f"{steps}"
        )
        if variant == "multiprocess":
            ok = r["wall"] <= TARGET_S
    checks = next(iter(runs.values()))["checks"]
    print(f"checks in the run: {', '.join(checks)}")
    print(f"target (default executor <= {TARGET_S:.0f} s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
