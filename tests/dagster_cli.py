"""The environment of a dagster CLI subprocess: a temporary DAGSTER_HOME (the repo's dagster.yaml),
warehouse and catalog under ``tmp_path``."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent


def cli_env(tmp_path) -> dict:
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        SPHERE_WAREHOUSE=str(tmp_path / "wh"),
        SPHERE_CATALOG=str(tmp_path / "cat.duckdb"),
    )
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    (tmp_path / "dagster_home" / "dagster.yaml").write_text(
        (REPO.parent / "dagster.yaml").read_text()
    )
    return env
