"""workspace.yaml (what ``dagster dev`` and the webserver load) validates."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.dagster_cli import cli_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_definitions_validate_through_workspace_yaml(tmp_path):
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
