"""The code-version lock: which files each asset's logic lives in, and their sha256.

An asset's logic is its asset module ``sphere_assets/<family>/<asset>.py``, its family's
``io.py`` / ``report.py`` / ``contract.py``, the family's helper modules they import (not other
asset modules, not ``defs.py``), and every ``sphere_assets.lib`` module reached from those by
imports — ``import``/``from`` statements and the module names given to ``lazy_module(...)``
(sphere_assets/core/lazy.py), followed through lib modules transitively.

``tests/layout/code_versions.json`` records, per asset, its ``code_version`` (from
``sphere_assets/refresh/code_versions.py``) and the sha256 of each of those files.
``tests/layout/test_code_versions.py`` fails when a file changed and the version did not.

    python -m tests.layout.code_versions            # report what is out of date (exit 1 if any)
    python -m tests.layout.code_versions --update   # rewrite the lock; refuses (exit 1) while an
                                                    # asset's files changed but its version did not
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sys
from pathlib import Path

from sphere_assets.refresh.code_versions import CODE_VERSIONS

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sphere_assets"
LOCK = Path(__file__).with_name("code_versions.json")
FAMILY_SUPPORT = ("io.py", "report.py", "contract.py")
NOT_FAMILIES = {"lib", "core", "refresh", "compute"}
UPDATE_HINT = "python -m tests.layout.code_versions --update"


def asset_module(name: str) -> Path:
    """``sphere_assets/<family>/<name>.py`` (exactly one family folder holds it)."""
    found = [p for p in sorted(PACKAGE.glob(f"*/{name}.py")) if p.parent.name not in NOT_FAMILIES]
    if len(found) != 1:
        raise LookupError(f"asset {name}: expected one sphere_assets/<family>/{name}.py, {found}")
    return found[0]


def module_file(module: str) -> Path | None:
    """The file of a ``sphere_assets.…`` module name (module or package), or None."""
    if not module.startswith("sphere_assets."):
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Module names a file imports: statements (relative ones resolved), ``from M import n``
    as both ``M`` and ``M.n`` (n may be a submodule), and string constants naming a
    ``sphere_assets`` module (``lazy_module("sphere_assets.lib.…")``)."""
    stat = path.stat()  # parsed once per file version: every asset walks the same lib modules
    return set(_imported_modules(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4096)
def _imported_modules(path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("sphere_assets.") and module_file(node.value):
                out.add(node.value)
    return frozenset(out)


def logic_files(name: str) -> list[Path]:
    """Every file the asset's logic lives in (see module doc), sorted."""
    module = asset_module(name)
    family = module.parent
    other_assets = {f"{a}.py" for a in CODE_VERSIONS} - {module.name}

    def followed(path: Path) -> bool:
        if path.is_relative_to(PACKAGE / "lib"):
            return True
        return path.parent == family and path.name not in other_assets | {"defs.py"}

    seen = {module} | {family / f for f in FAMILY_SUPPORT if (family / f).is_file()}
    frontier = list(seen)
    while frontier:
        for mod in imported_modules(frontier.pop()):
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parts = mod.split(".")
            for path in (module_file(".".join(parts[:i])) for i in range(2, len(parts) + 1)):
                if path is not None and path not in seen and followed(path):
                    seen.add(path)
                    frontier.append(path)
    return sorted(seen)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_state(versions: dict[str, str] | None = None) -> dict[str, dict]:
    """{asset: {"code_version": v, "files": {repo-relative path: sha256}}} as the tree is now."""
    versions = CODE_VERSIONS if versions is None else versions
    return {
        name: {
            "code_version": versions[name],
            "files": {str(p.relative_to(REPO)): file_sha256(p) for p in logic_files(name)},
        }
        for name in sorted(versions)
    }


def read_lock(path: Path = LOCK) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def unbumped(lock: dict, state: dict) -> dict[str, list[str]]:
    """Assets whose files differ from the lock while their version equals the locked one:
    {asset: [changed, added or removed files]}."""
    out = {}
    for name, now in state.items():
        was = lock.get(name)
        if was is None or was["code_version"] != now["code_version"]:
            continue
        changed = sorted(
            f
            for f in set(was["files"]) | set(now["files"])
            if was["files"].get(f) != now["files"].get(f)
        )
        if changed:
            out[name] = changed
    return out


def problems(lock: dict, state: dict) -> list[str]:
    """Why the lock does not match the tree, one sentence each (empty: it matches)."""
    out = [
        f"{name}: its logic changed ({', '.join(files)}) but its code_version is still "
        f"{state[name]['code_version']!r}: bump it in sphere_assets/refresh/code_versions.py, "
        f"then run `{UPDATE_HINT}`"
        for name, files in unbumped(lock, state).items()
    ]
    for name in sorted(set(lock) | set(state)):
        if name not in lock:
            out.append(f"{name}: not in {LOCK.name}; run `{UPDATE_HINT}`")
        elif name not in state:
            out.append(
                f"{name}: in {LOCK.name} but has no code version any more; run `{UPDATE_HINT}`"
            )
        elif lock[name]["code_version"] != state[name]["code_version"]:
            out.append(
                f"{name}: code_version {state[name]['code_version']!r}, the lock records "
                f"{lock[name]['code_version']!r}; run `{UPDATE_HINT}`"
            )
    return out


def update(lock_path: Path = LOCK, versions: dict[str, str] | None = None) -> list[str]:
    """Rewrite the lock from the tree, unless an asset's files changed without a version bump:
    then the lock is left as it is and those refusals are returned."""
    state = current_state(versions)
    refused = unbumped(read_lock(lock_path), state)
    if refused:
        return [
            f"{name}: {', '.join(files)} changed but code_version is still "
            f"{state[name]['code_version']!r}; bump it in sphere_assets/refresh/code_versions.py"
            for name, files in refused.items()
        ]
    lock_path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return []


def main(argv: list[str]) -> int:
    if "--update" in argv:
        refused = update()
        for line in refused:
            print(f"refused: {line}", file=sys.stderr)
        if not refused:
            print(f"wrote {LOCK.relative_to(REPO)}")
        return 1 if refused else 0
    found = problems(read_lock(), current_state())
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
