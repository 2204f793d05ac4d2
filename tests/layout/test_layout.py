"""The house rules of the layout (README, "Layout"), checked on the registered definitions.

* one hop: every asset's code lies in its family folder ``sphere_assets/<family>/<asset>.py``, the
  family has a ``contract.py``, and the test mirror ``tests/<family>/test_<asset>.py`` exists;
* ``sphere_assets/lib`` is pure: it imports neither Dagster nor the storage layer;
* ``sphere_resources`` never imports ``sphere_assets`` (no cycle between the packages).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import dagster as dg
import pytest

from sphere_assets.definitions import defs

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sphere_assets"


def _asset_modules() -> dict[str, Path]:
    """Asset name -> the file that defines its compute function."""
    out = {}
    for assets_def in defs.assets or []:
        if not isinstance(assets_def, dg.AssetsDefinition):
            continue
        fn = assets_def.op.compute_fn
        fn = getattr(fn, "decorated_fn", fn)
        path = Path(inspect.getsourcefile(fn)).resolve()
        for key in assets_def.keys:
            out[key.to_user_string()] = path
    return out


ASSET_MODULES = _asset_modules()


def test_every_registered_asset_is_found():
    assert len(ASSET_MODULES) >= 12, sorted(ASSET_MODULES)


@pytest.mark.parametrize("asset", sorted(ASSET_MODULES))
def test_asset_code_contract_and_test_are_one_hop_away(asset):
    path = ASSET_MODULES[asset]
    rel = path.relative_to(PACKAGE)
    assert len(rel.parts) == 2, (
        f"{asset}: defined in {rel}, expected sphere_assets/<family>/<file>.py"
    )
    family = rel.parts[0]
    assert family not in {"lib", "core"}, f"{asset}: defined in {rel}, not in a family folder"
    assert rel.name == f"{asset}.py", f"{asset}: defined in {rel}, expected {family}/{asset}.py"
    assert (PACKAGE / family / "contract.py").is_file(), f"{family}: no contract.py"
    test_file = REPO / "tests" / family / f"test_{asset}.py"
    assert test_file.is_file(), f"{asset}: no test mirror {test_file.relative_to(REPO)}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        for name in sorted(_imports(path)):
            if name == forbidden or name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    return bad


def test_lib_imports_neither_dagster_nor_the_storage_layer():
    assert _violations(PACKAGE / "lib", ("dagster", "sphere_resources")) == []


def test_lib_does_no_file_or_database_io():
    forbidden = ("psycopg", "duckdb", "pyarrow.parquet", "safetensors", "glob", "shutil")
    bad = []
    for path in sorted((PACKAGE / "lib").rglob("*.py")):
        bad += [f"{path.relative_to(REPO)} imports {n}" for n in _imports(path) if n in forbidden]
    assert bad == []


def test_resources_never_import_the_asset_package():
    assert _violations(REPO / "sphere_resources", ("sphere_assets",)) == []
