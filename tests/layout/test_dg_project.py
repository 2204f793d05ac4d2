"""Dagster's project CLI works from the repository root ([tool.dg] in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
DG = Path(sys.executable).with_name("dg")


def run_dg(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **extra_env, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)}
    env["PATH"] = f"{DG.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(DG), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_dg_check_defs_loads_every_definition():
    result = run_dg("check", "defs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


@pytest.mark.slow
def test_dg_list_defs_shows_the_asset_families():
    result = run_dg("list", "defs", "--json")
    assert result.returncode == 0, result.stderr
    for name in ("raw_articles", "blt_patches", "shell_placements", "ngram_index", "sh_basis"):
        assert f'"{name}"' in result.stdout, name


@pytest.mark.slow
def test_dg_launch_materializes_one_partition(tmp_path):
    warehouse = tmp_path / "warehouse"
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = run_dg(
        "launch",
        "--assets",
        "raw_articles",
        "--partition",
        "1",
        SPHERE_WAREHOUSE=str(warehouse),
        DAGSTER_HOME=str(home),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pq.read_table(warehouse / "raw_articles" / "shard=1" / "part-0.parquet")
    assert table.num_rows > 0
