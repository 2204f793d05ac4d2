"""Declarative automation and catalog defaults, applied to every asset in one place.

``apply_orchestration(assets)`` is called once in ``definitions.py`` on the full asset list, so an
asset family module only declares its assets; it does not have to know about automation:

* **automation** — every asset that has upstream assets gets ``AutomationCondition.eager()``
  unless it declares its own ``automation_condition`` (which then wins):

  - a *shard* asset whose shard parent changes is requested for exactly that shard
    (``any_deps_updated`` is evaluated per partition through the partition mapping), and its
    shard descendants follow in the same evaluation (``will_be_requested`` counts as updated);
  - a *global* (unpartitioned) merge over shards — ngram_vocabulary, adjacency_merged,
    duckdb_catalog — is requested **once** after its shards: ``~any_deps_in_progress`` holds it
    back while any shard of any parent is still being materialized (a run or a backfill), and
    ``since_last_handled`` makes the many shard updates of one backfill a single request;
  - nothing is requested while a parent is missing (``~any_deps_missing``).

  Root assets (``raw_articles``, ``sh_basis``) get no condition: they are driven by the
  incoming-files sensor, the nightly schedule, or by hand.

* **catalog metadata** — an asset without ``dagster/column_schema`` metadata gets one from its
  data contract (``sphere_assets.contracts``): Parquet columns, or for tensor-only assets one
  entry per safetensors array (``stem.name``, ``dtype[shape]``).

The conditions are evaluated by ``sphere_automation`` (an ``AutomationConditionSensorDefinition``
over all assets, running by default when the Dagster daemon runs; turn it off in the UI under
Automation, or with ``dagster sensor stop sphere_automation``).
"""

from collections.abc import Iterable, Sequence

import dagster as dg

from sphere_assets.contracts import CONTRACTS, column_schema_metadata

AUTOMATION_SENSOR_NAME = "sphere_automation"
COLUMN_SCHEMA_KEY = "dagster/column_schema"


def downstream_condition() -> dg.AutomationCondition:
    """Update when any upstream partition changed; never while a parent is missing/in progress."""
    return dg.AutomationCondition.eager()


def contract_column_schema(asset_name: str) -> dg.TableSchema | None:
    """Column schema from the asset's data contract, or None when it has no contract."""
    contract = CONTRACTS.get(asset_name)
    if contract is None:
        return None
    columns = []
    if contract.schema is not None:
        columns += [
            dg.TableColumn(name, type_, description=desc or None)
            for name, type_, desc in column_schema_metadata(contract.schema)
        ]
    for stem, specs in sorted(contract.tensors.items()):
        for name, spec in specs.items():
            shape = ", ".join(str(s) for s in spec.shape)
            columns.append(
                dg.TableColumn(
                    f"{stem}.{name}",
                    f"{spec.dtype}[{shape}]",
                    description=f"safetensors array in {stem}.safetensors",
                )
            )
    return dg.TableSchema(columns=columns) if columns else None


def _with_defaults(spec: dg.AssetSpec) -> dg.AssetSpec:
    changes = {}
    if spec.automation_condition is None and spec.deps:
        changes["automation_condition"] = downstream_condition()
    if COLUMN_SCHEMA_KEY not in (spec.metadata or {}):
        schema = contract_column_schema(spec.key.path[-1])
        if schema is not None:
            spec = spec.merge_attributes(metadata={COLUMN_SCHEMA_KEY: schema})
    return spec.replace_attributes(**changes) if changes else spec


def apply_orchestration(assets: Iterable) -> list:
    """Every AssetsDefinition with automation + contract metadata defaults (see module doc).

    Keys, partitions, code, pools and checks are unchanged; other objects pass through.
    """
    out = []
    for a in assets:
        out.append(a.map_asset_specs(_with_defaults) if isinstance(a, dg.AssetsDefinition) else a)
    return out


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
            "once after their shards (see sphere_assets/automation.py)."
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
