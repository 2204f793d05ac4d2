"""Declarative automation: a changed shard rebuilds exactly its downstream closure, each global
merge once, and never retrains a global fitted model (entropy_model), which refits only when
missing or when its code version changes; an asset's own automation condition wins over the
default."""

from pathlib import Path

import dagster as dg
import pytest

from sphere_assets import definitions
from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import ALL_ASSETS, defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.refresh import code_versions
from sphere_assets.refresh.automation import (
    FITTED_MODELS,
    apply_orchestration,
    automated_keys,
    catalog_database,
    with_code_references,
)
from tests.defs_graph import ASSET_KEYS, GRAPH

ENTROPY_MODEL = dg.AssetKey("entropy_model")


def _expected_closure(changed: dg.AssetKey, partition: str) -> set[tuple]:
    """(asset, partition) pairs that must be rebuilt after one shard of ``changed`` changed:
    a shard child of a changed shard follows that shard; whatever is below a changed global
    (or differently partitioned) asset is rebuilt whole; a global asset has partition None;
    a fitted model is not rebuilt by upstream changes, so nothing travels through it."""
    out: dict[dg.AssetKey, set] = {changed: {partition}}
    for key in GRAPH.toposorted_asset_keys:
        if key == changed or not GRAPH.get(key).is_materializable:
            continue
        if key.to_user_string() in FITTED_MODELS:
            continue
        pdef = GRAPH.get(key).partitions_def
        want: set = set()
        for parent in GRAPH.get(key).parent_keys:
            if parent not in out:
                continue
            if pdef is None:
                want.add(None)
            elif GRAPH.get(parent).partitions_def == pdef:
                want |= out[parent]
            else:
                want |= set(pdef.get_partition_keys())
        if want:
            out[key] = want
    del out[changed]
    return {(k, p) for k, ps in out.items() for p in ps}


def _materialize(instance, pairs):
    order = {k: i for i, k in enumerate(GRAPH.toposorted_asset_keys)}
    for key, pk in sorted(pairs, key=lambda kp: (order[kp[0]], str(kp[1]))):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=pk))


def _everything(keys=ASSET_KEYS) -> set[tuple]:
    out = set()
    for key in keys:
        pdef = GRAPH.get(key).partitions_def
        out |= {(key, pk) for pk in (pdef.get_partition_keys() if pdef else [None])}
    return out


def _requested_pairs(tick) -> set[tuple]:
    pairs = set()
    for r in tick.results:
        if r.true_subset.size:
            if GRAPH.get(r.key).partitions_def is None:
                pairs.add((r.key, None))
            else:
                pairs |= {(r.key, pk) for pk in r.true_subset.expensively_compute_partition_keys()}
    return pairs


def _settle(instance, tick, definitions=defs) -> list[tuple]:
    """Evaluate tick after tick, materializing every request before the next, until quiet."""
    requested: list[tuple] = []
    for _ in range(12):
        tick = dg.evaluate_automation_conditions(
            defs=definitions, instance=instance, cursor=tick.cursor
        )
        if tick.total_requested == 0:
            return requested
        pairs = _requested_pairs(tick)
        requested += sorted(pairs, key=str)
        _materialize(instance, pairs)
    pytest.fail("automation did not settle")


def test_automation_follows_the_changed_shard_and_merges_once():
    """Tick by tick, with every requested partition materialized before the next tick: one
    changed raw_articles shard rebuilds exactly its downstream closure — each descendant of that
    shard and each merge once — and does not retrain entropy_model."""
    assert automated_keys(ALL_ASSETS) == {k for k in ASSET_KEYS if GRAPH.get(k).parent_keys}
    with dg.instance_for_test() as instance:
        _materialize(instance, _everything())
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert tick.total_requested == 0  # everything present and nothing changed

        root, changed = dg.AssetKey("raw_articles"), shard_keys()[-1]
        _materialize(instance, {(root, changed)})
        requested = _settle(instance, tick)
        assert root not in {k for k, _ in requested}  # roots: sensor / schedule, not automation
        assert ENTROPY_MODEL not in {k for k, _ in requested}, "a shard update retrained the model"
        assert len(requested) == len(set(requested)), "requested twice: " + str(
            sorted({p for p in requested if requested.count(p) > 1}, key=str)
        )
        expected = _expected_closure(root, changed)
        assert set(requested) == expected
        # by hand: the closure is every shard descendant of raw_articles in that shard, only it
        blt = dg.AssetKey("blt_patches")
        assert (blt, changed) in expected and not {(blt, k) for k in shard_keys()[:-1]} & expected


def test_entropy_model_refits_when_missing_and_when_its_code_version_changes(monkeypatch):
    """Missing → requested once (after every raw_articles shard exists); present and unchanged →
    never; a bumped code version → requested once, then every shard below it follows once."""
    with dg.instance_for_test() as instance:
        roots = [k for k in ASSET_KEYS if not GRAPH.get(k).parent_keys]
        _materialize(instance, _everything(roots))
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        first = _requested_pairs(tick)
        assert (ENTROPY_MODEL, None) in first  # missing, parents present
        _materialize(instance, first)
        requested = list(first) + _settle(instance, tick)
        assert requested.count((ENTROPY_MODEL, None)) == 1
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=None)
        settled_cursor = tick.cursor
        assert (ENTROPY_MODEL, None) not in _requested_pairs(tick)

        monkeypatch.setitem(code_versions.CODE_VERSIONS, "entropy_model", "bumped")
        unorchestrated = [*definitions.FAMILY_ASSETS, *definitions.CATALOG_ASSETS]
        bumped = dg.Definitions(
            assets=apply_orchestration(unorchestrated), resources=definitions.RESOURCES
        )
        tick = dg.evaluate_automation_conditions(
            defs=bumped, instance=instance, cursor=settled_cursor
        )
        assert _requested_pairs(tick) == {(ENTROPY_MODEL, None)}
        _materialize(instance, {(ENTROPY_MODEL, None)})
        after = _settle(instance, tick, bumped)
        assert (ENTROPY_MODEL, None) not in after
        blt = dg.AssetKey("blt_patches")
        assert [pk for k, pk in after if k == blt] == sorted(shard_keys())


def test_apply_orchestration_keeps_an_assets_own_condition():
    own = dg.AutomationCondition.on_cron("0 * * * *")

    @dg.asset(deps=[ingest.raw_articles], automation_condition=own)
    def custom() -> None: ...

    @dg.asset(deps=[ingest.raw_articles])
    def plain() -> None: ...

    mapped = {a.key.path[-1]: a for a in apply_orchestration([custom, plain, ingest.raw_articles])}
    assert mapped["custom"].specs_by_key[custom.key].automation_condition == own
    assert mapped["plain"].specs_by_key[plain.key].automation_condition is not None
    raw = mapped["raw_articles"].specs_by_key[ingest.raw_articles.key]
    assert raw.automation_condition is None


def test_every_asset_with_a_duckdb_view_names_it_as_its_table(tmp_path):
    """dagster/table_name is <db>.main.<view> for exactly the assets build_catalog makes views of
    (on an empty warehouse it lists them all as missing), and <db> is what DuckDB calls the file."""
    import duckdb

    from sphere_resources.duckdb_catalog import build_catalog

    catalog = tmp_path / "sphere.duckdb"
    (tmp_path / "warehouse").mkdir()
    views = build_catalog(tmp_path / "warehouse", catalog)["missing"]
    with duckdb.connect(str(catalog)) as con:
        database = con.execute("select current_database()").fetchone()[0]
    assert database == catalog_database(str(catalog)) == catalog_database()
    names = {
        k.to_user_string(): GRAPH.get(k).metadata["dagster/table_name"]
        for k in ASSET_KEYS
        if "dagster/table_name" in GRAPH.get(k).metadata
    }
    assert names == {v: f"{database}.main.{v}" for v in views if dg.AssetKey(v) in ASSET_KEYS}
    assert "raw_articles" in names and "duckdb_catalog" not in names


def test_every_asset_links_to_its_source_file_and_line(monkeypatch):
    for key in ASSET_KEYS:
        refs = GRAPH.get(key).metadata["dagster/code_references"].code_references
        name = key.to_user_string()
        (local,) = refs
        path = Path(local.file_path)
        assert path.parent.parent.name == "sphere_assets" and path.name == f"{name}.py", path
        # the line of the compute function (its first decorator), whose def follows
        block = path.read_text().splitlines()[local.line_number - 1 :]
        assert block[0].lstrip().startswith(("@", "def ")), (name, local.line_number, block[0])
        assert any(line.lstrip().startswith(f"def {name}(") for line in block[:40]), name
    unorchestrated = [*definitions.FAMILY_ASSETS, *definitions.CATALOG_ASSETS]
    linked = with_code_references(
        apply_orchestration(unorchestrated), git_url="https://github.com/example/sphere"
    )
    spec = next(s for a in linked for s in a.specs if s.key.to_user_string() == "blt_patches")
    (url,) = spec.metadata["dagster/code_references"].code_references
    assert url.url.startswith(
        "https://github.com/example/sphere/tree/main/sphere_assets/patching/blt_patches.py#L"
    ), url.url
