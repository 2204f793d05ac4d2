"""Declarative automation: a changed shard rebuilds exactly its downstream closure, each global
merge once; an asset's own automation condition wins over the default."""

import dagster as dg
import pytest

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import ALL_ASSETS, defs
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.refresh.automation import apply_orchestration, automated_keys
from tests.defs_graph import ASSET_KEYS, GRAPH


def _expected_closure(changed: dg.AssetKey, partition: str) -> set[tuple]:
    """(asset, partition) pairs that must be rebuilt after one shard of ``changed`` changed:
    a shard child of a changed shard follows that shard; whatever is below a changed global
    (or differently partitioned) asset is rebuilt whole; a global asset has partition None."""
    out: dict[dg.AssetKey, set] = {changed: {partition}}
    for key in GRAPH.toposorted_asset_keys:
        if key == changed or not GRAPH.get(key).is_materializable:
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


def test_automation_follows_the_changed_shard_and_merges_once():
    """Tick by tick, with every requested partition materialized before the next tick: one
    changed shard rebuilds exactly its downstream closure, and nothing — in particular no global
    merge — is requested twice."""
    assert automated_keys(ALL_ASSETS) == {k for k in ASSET_KEYS if GRAPH.get(k).parent_keys}
    with dg.instance_for_test() as instance:

        def materialize(pairs):
            order = {k: i for i, k in enumerate(GRAPH.toposorted_asset_keys)}
            for key, pk in sorted(pairs, key=lambda kp: (order[kp[0]], str(kp[1]))):
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=pk))

        everything = set()
        for key in ASSET_KEYS:
            pdef = GRAPH.get(key).partitions_def
            everything |= {(key, pk) for pk in (pdef.get_partition_keys() if pdef else [None])}
        materialize(everything)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert tick.total_requested == 0  # everything present and nothing changed

        root, changed = dg.AssetKey("raw_articles"), shard_keys()[-1]
        materialize({(root, changed)})
        requested: list[tuple] = []
        for _ in range(12):
            tick = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=tick.cursor
            )
            if tick.total_requested == 0:
                break
            pairs = set()
            for r in tick.results:
                if r.true_subset.size:
                    if GRAPH.get(r.key).partitions_def is None:
                        pairs.add((r.key, None))
                    else:
                        pairs |= {
                            (r.key, pk) for pk in r.true_subset.expensively_compute_partition_keys()
                        }
            requested += sorted(pairs, key=str)
            materialize(pairs)
        else:
            pytest.fail("automation did not settle")
        assert root not in {k for k, _ in requested}  # roots: sensor / schedule, not automation
        assert len(requested) == len(set(requested)), "requested twice: " + str(
            sorted({p for p in requested if requested.count(p) > 1}, key=str)
        )
        assert set(requested) == _expected_closure(root, changed)


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
