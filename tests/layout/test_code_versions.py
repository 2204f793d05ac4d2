"""Code versions follow the code: every asset has one (set in sphere_assets/refresh/code_versions.py),
and tests/layout/code_versions.json says which files its logic lives in — a change to any of them
without a version bump fails here (see tests/layout/code_versions.py)."""

import json

from sphere_assets.refresh.code_versions import CODE_VERSIONS
from tests.defs_graph import ASSET_KEYS, GRAPH
from tests.layout import code_versions as cv


def test_every_registered_asset_has_its_code_version_from_the_one_mapping():
    for key in ASSET_KEYS:
        name = key.to_user_string()
        assert name in CODE_VERSIONS, f"{name}: add it to sphere_assets/refresh/code_versions.py"
        assert GRAPH.get(key).code_version == CODE_VERSIONS[name], name


def test_lock_matches_the_tree():
    found = cv.problems(cv.read_lock(), cv.current_state())
    assert not found, "\n".join(found)


def test_logic_files_follow_statement_lazy_and_transitive_imports():
    files = {str(p.relative_to(cv.REPO)) for p in cv.logic_files("entropy_model")}
    # the asset module, its family's io/report/contract
    assert {
        "sphere_assets/patching/entropy_model.py",
        "sphere_assets/patching/io.py",
        "sphere_assets/patching/report.py",
        "sphere_assets/patching/contract.py",
    } <= files
    # lazy_module("sphere_assets.lib.text.entropy_training") is only a string in the asset module
    assert "sphere_assets/lib/text/entropy_training.py" in files
    # other assets' modules (the raw_articles dep, blt_patches beside it) are not its logic
    assert "sphere_assets/ingest/raw_articles.py" not in files
    assert "sphere_assets/patching/blt_patches.py" not in files
    assert not any(f.startswith("sphere_resources/") for f in files)
    # transitive within lib: every lib module a lib module imports is there too
    for f in files:
        if f.startswith("sphere_assets/lib/"):
            for mod in cv.imported_modules(cv.REPO / f):
                path = cv.module_file(mod)
                if path is not None and path.is_relative_to(cv.PACKAGE / "lib"):
                    assert str(path.relative_to(cv.REPO)) in files, (f, mod)


def _locked(edit=None) -> dict:
    """The lock as --update would write it now, with ``edit`` applied."""
    lock = json.loads(json.dumps(cv.current_state()))
    if edit is not None:
        edit(lock)
    return lock


def _patcher_changed(lock):
    lock["blt_patches"]["files"]["sphere_assets/lib/text/patcher.py"] = "0" * 64


def test_a_changed_file_without_a_bump_fails_and_names_the_file():
    found = cv.problems(_locked(_patcher_changed), cv.current_state())
    assert len(found) == 1, found
    assert found[0].startswith("blt_patches: its logic changed (sphere_assets/lib/text/patcher.py)")
    assert "bump it in sphere_assets/refresh/code_versions.py" in found[0]


OLD = CODE_VERSIONS["blt_patches"]
BUMPED = {**CODE_VERSIONS, "blt_patches": f"{OLD}-next"}


def test_a_bumped_version_with_a_stale_lock_fails_until_updated():
    found = cv.problems(_locked(), cv.current_state(BUMPED))
    assert found == [
        f"blt_patches: code_version '{OLD}-next', the lock records '{OLD}'; run `{cv.UPDATE_HINT}`"
    ]


def test_update_refuses_an_unbumped_change_and_accepts_a_bumped_one(tmp_path):
    path = tmp_path / "code_versions.json"
    stale = _locked(_patcher_changed)
    path.write_text(json.dumps(stale))
    refused = cv.update(path)
    assert len(refused) == 1 and refused[0].startswith(
        "blt_patches: sphere_assets/lib/text/patcher.py"
    )
    assert json.loads(path.read_text()) == stale  # left as it was

    assert cv.update(path, BUMPED) == []
    written = json.loads(path.read_text())
    assert written["blt_patches"]["code_version"] == f"{OLD}-next"
    assert written["blt_patches"]["files"] == cv.current_state()["blt_patches"]["files"]
    assert cv.problems(written, cv.current_state(BUMPED)) == []


def test_a_new_asset_without_a_lock_entry_fails():
    lock = _locked(lambda lk: lk.pop("sh_basis"))
    assert cv.problems(lock, cv.current_state()) == [
        f"sh_basis: not in code_versions.json; run `{cv.UPDATE_HINT}`"
    ]
