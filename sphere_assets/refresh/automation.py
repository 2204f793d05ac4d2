"""Declarative automation and catalog defaults, applied to every asset in one place.

``apply_orchestration(assets)`` is called once in ``definitions.py`` on the full asset list, so an
asset family module only declares its assets; it does not have to know about automation:

* **automation** — every asset that has upstream assets gets :func:`downstream_condition`
  (``AutomationCondition.eager()`` plus one refinement below) unless it declares its own
  ``automation_condition``, which then wins:

  - a *shard* asset whose shard parent changes is requested for exactly that shard
    (``any_deps_updated`` is evaluated per partition through the partition mapping), and its
    shard descendants follow in the same evaluation, in the same run (``will_be_requested``
    counts as updated for parents that can run in the same run);
  - a *global* (unpartitioned) merge over shards — ngram_vocabulary, adjacency_merged,
    duckdb_catalog — is requested **once** after its shards: ``~any_deps_in_progress`` holds it
    back while any shard of any parent is still being materialized (a run or a backfill), and
    ``since_last_handled`` makes the many shard updates of one backfill a single request;
  - nothing is requested while a parent is missing (``~any_deps_missing``);
  - **fan-in refinement**: when a parent ``P`` also reaches the asset through another automated
    parent ``Q`` (``raw_articles → entropy_model → blt_patches`` next to
    ``raw_articles → blt_patches``), updates of ``P`` are ignored by this asset: they arrive
    through ``Q`` once ``Q`` was rebuilt. Without it a changed shard would run the shard chain
    twice (once right away, once after the retrained model) and every merge below it twice.

  Root assets (``raw_articles``, ``sh_basis``) get no condition: they are driven by the
  incoming-files sensor, the nightly schedule, or by hand.

* **catalog metadata** — an asset without ``dagster/column_schema`` metadata gets one from its
  data contract (``sphere_resources.contracts``): Parquet columns, or for tensor-only assets one
  entry per safetensors array (``stem.name``, ``dtype[shape]``).

The conditions are evaluated by ``sphere_automation`` (an ``AutomationConditionSensorDefinition``
over all assets, running by default when the Dagster daemon runs; turn it off in the UI under
Automation, or with ``dagster sensor stop sphere_automation``).
"""

from collections.abc import Iterable, Sequence

import dagster as dg

from sphere_assets.core.metadata import column_schema
from sphere_resources.contracts import CONTRACTS

AUTOMATION_SENSOR_NAME = "sphere_automation"
COLUMN_SCHEMA_KEY = "dagster/column_schema"


def downstream_condition(ignore_updates_of: Iterable[dg.AssetKey] = ()) -> dg.AutomationCondition:
    """eager(): update when an upstream partition changed, never while a parent is missing or in
    progress — with updates of ``ignore_updates_of`` not counted (see the fan-in refinement)."""
    ignore = sorted(set(ignore_updates_of), key=lambda k: k.to_user_string())
    if not ignore:
        return dg.AutomationCondition.eager()
    updated = dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets(*ignore))
    names = ", ".join(k.to_user_string() for k in ignore)
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (dg.AutomationCondition.newly_missing() | updated).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"eager, updates of {names} arrive through other parents")


def fan_in_ignores(
    parents: dict[dg.AssetKey, set[dg.AssetKey]], automated: set[dg.AssetKey]
) -> dict[dg.AssetKey, set[dg.AssetKey]]:
    """For each automated asset, its parents P that also reach it through another parent Q along
    automated assets only (so an update of P is bound to rebuild Q, which then updates it)."""
    children: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    for child, ps in parents.items():
        for p in ps:
            children.setdefault(p, set()).add(child)

    def automated_descendants(start: dg.AssetKey) -> set[dg.AssetKey]:
        seen: set[dg.AssetKey] = set()
        frontier = [start]
        while frontier:
            for c in children.get(frontier.pop(), ()):
                if c in automated and c not in seen:
                    seen.add(c)
                    frontier.append(c)
        return seen

    out = {}
    for key in automated:
        ps = parents.get(key, set())
        ignored = {p for p in ps if (automated_descendants(p) & (ps - {p}))}
        if ignored:
            out[key] = ignored
    return out


def contract_column_schema(asset_name: str) -> dg.TableSchema | None:
    """Column schema from the asset's data contract, or None when it has no contract."""
    contract = CONTRACTS.get(asset_name)
    return column_schema(contract) if contract is not None else None


def _with_defaults(spec: dg.AssetSpec, ignores: dict) -> dg.AssetSpec:
    changes = {}
    if spec.automation_condition is None and spec.deps:
        changes["automation_condition"] = downstream_condition(ignores.get(spec.key, ()))
    if COLUMN_SCHEMA_KEY not in (spec.metadata or {}):
        schema = contract_column_schema(spec.key.path[-1])
        if schema is not None:
            spec = spec.merge_attributes(metadata={COLUMN_SCHEMA_KEY: schema})
    return spec.replace_attributes(**changes) if changes else spec


def apply_orchestration(assets: Iterable) -> list:
    """Every AssetsDefinition with automation + contract metadata defaults (see module doc).

    Keys, partitions, code, pools and checks are unchanged; other objects pass through.
    """
    assets = list(assets)
    specs = [s for a in assets if isinstance(a, dg.AssetsDefinition) for s in a.specs]
    parents = {s.key: {d.asset_key for d in s.deps} for s in specs}
    # assets that will carry the default condition (have parents, declare none themselves)
    automated = {s.key for s in specs if s.deps and s.automation_condition is None}
    ignores = fan_in_ignores(parents, automated)
    return [
        a.map_asset_specs(lambda spec: _with_defaults(spec, ignores))
        if isinstance(a, dg.AssetsDefinition)
        else a
        for a in assets
    ]


def automation_sensor(
    run_tags: dict[str, str] | None = None, minimum_interval_seconds: int = 30
) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates every asset's AutomationCondition (needs the daemon)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        run_tags={"sphere/trigger": "automation", **(run_tags or {})},
        description=(
            "Declarative automation: shard assets follow their upstream shards, global merges run "
            "once after their shards (see sphere_assets/refresh/automation.py)."
        ),
    )


def automated_keys(assets: Sequence) -> set[dg.AssetKey]:
    """Keys that carry an automation condition (for tests and docs)."""
    return {
        spec.key
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for spec in a.specs
        if spec.automation_condition is not None
    }
