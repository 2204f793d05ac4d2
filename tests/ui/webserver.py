"""A real ``dagster-webserver`` on this repository's workspace, for the UI tests and
bench/ui_run.py: start it on a free port, talk GraphQL/HTTP to it, wait for it, stop its whole
process group (code server and run workers included)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCATION = "sphere"
REPOSITORY = "__repository__"
# launched runs start at once: the queued coordinator of the repo's dagster.yaml needs the
# daemon, which the tests and the bench do not run
INSTANCE_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""
LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
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
        if "errors" in out:
            raise AssertionError(out["errors"])
        return out["data"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    """``predicate()``'s first truthy value; fails when the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"dagster-webserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            )
        try:
            last = predicate()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last}):\n{log.read_text()[-4000:]}")


def location_loaded(client: Client) -> bool:
    """The sphere code location is loaded (a load error is raised, not waited out)."""
    entries = client.gql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
    entry = next((e for e in entries if e["name"] == LOCATION), None)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded
    return True


@contextmanager
def dagster_webserver(env: dict, log: Path) -> Iterator[tuple[Client, subprocess.Popen]]:
    """A webserver with ``env``, its output in ``log``, the code location loaded."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml"]
            + ["-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers share the group
        )
    client = Client(port)
    try:
        wait_for(lambda: client.get("/server_info")[0] == 200, 120, "/server_info", proc, log)
        wait_for(lambda: location_loaded(client), 180, "the code location", proc, log)
        yield client, proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
