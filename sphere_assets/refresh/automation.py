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
    parent ``Q`` (``blt_patches → ngram_index → adjacency`` next to ``blt_patches →
    adjacency``), updates of ``P`` are ignored by this asset: they arrive through ``Q`` once
    ``Q`` was rebuilt. Without it a changed shard would run ``adjacency`` twice (once right
    away, once after ``ngram_index``) and every merge below it twice.

  Root assets (``raw_articles``, ``sh_basis``) get no condition: they are driven by the
  incoming-files sensor, the nightly schedule, or by hand.

* **global fitted models** (``FITTED_MODELS``: ``entropy_model``, ``sphere_map``) get :func:`fitted_model_condition`
  instead of ``eager()``: refit when missing, when their ``code_version`` changed, or on request
  (a run launched by hand) — never because one upstream shard changed. Retraining the model on
  every shard update would re-patch *every* shard and every merge below it; a changed shard is
  instead patched with the current model, so its descendants and the merges that read it run
  once. Because the model is no longer rebuilt by upstream updates, it does not count as a path
  in the fan-in refinement (``blt_patches`` follows ``raw_articles`` directly).

* **code versions** — every asset in ``code_versions.CODE_VERSIONS`` gets that ``code_version``
  (the one place they are set; ``tests/layout/test_code_versions.py`` keeps them honest).

* **table names** — every asset with a DuckDB view (a Parquet contract, see
  ``sphere_resources/duckdb_catalog.py``) gets ``dagster/table_name`` = ``<db>.main.<asset>``,
  ``<db>`` being the catalog file's stem as DuckDB names the attached database (``sphere`` for
  the default ``data/sphere.duckdb``; ``SPHERE_CATALOG`` when set).

* **source code** — :func:`with_code_references` (applied after ``apply_orchestration`` in
  ``definitions.py``) links every asset to the file and line of its compute function, or into
  the hosted repository when ``SPHERE_GIT_URL`` is set.

* **freshness policies** — with ``SPHERE_FRESHNESS=nightly``, the shard assets the nightly
  schedule refreshes get its cron freshness policy (``schedules.with_schedule_freshness``; off
  by default, see there why).

* **catalog metadata** — an asset without ``dagster/column_schema`` metadata gets one from its
  data contract (``sphere_resources.contracts``): Parquet columns, or for tensor-only assets one
  entry per safetensors array (``stem.name``, ``dtype[shape]``).

The conditions are evaluated by ``sphere_automation`` (an ``AutomationConditionSensorDefinition``
over all assets, running by default when the Dagster daemon runs; turn it off in the UI under
Automation, or with ``dagster sensor stop sphere_automation``).
"""

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg

from sphere_assets.core.metadata import column_schema
from sphere_assets.refresh.code_versions import CODE_VERSIONS
from sphere_assets.refresh.schedules import with_schedule_freshness
from sphere_resources.contracts import CONTRACTS, DEFAULT_CATALOG_PATH

AUTOMATION_SENSOR_NAME = "sphere_automation"
COLUMN_SCHEMA_KEY = "dagster/column_schema"
TABLE_NAME_KEY = "dagster/table_name"
# global fitted models: refit when missing / code version changed / by hand (see module doc)
FITTED_MODELS = frozenset({"entropy_model", "sphere_map"})
EAGER_LABEL = "eager: after an upstream update, once per changed partition"
FITTED_LABEL = "fitted model: refit when missing or its code version changed, or by hand"


def fitted_model_condition() -> dg.AutomationCondition:
    """Missing (unless its latest run failed: then by hand) or code version changed (held until
    handled), all parents present and idle.

    Upstream updates are deliberately not part of it: a shard update must not retrain the model.
    ``missing`` is a level, not ``newly_missing``: a model that was never built (a fresh
    deployment) is missing from the first evaluation on, which ``newly_missing`` never sees;
    ``~execution_failed`` keeps a failing fit from being retried every tick.
    """
    missing = dg.AutomationCondition.missing() & ~dg.AutomationCondition.execution_failed()
    changed = dg.AutomationCondition.code_version_changed().since_last_handled()
    return (
        (missing.with_label("missing") | changed.with_label("code version changed"))
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(FITTED_LABEL)


def downstream_condition(ignore_updates_of: Iterable[dg.AssetKey] = ()) -> dg.AutomationCondition:
    """eager(): update when an upstream partition changed, never while a parent is missing or in
    progress — with updates of ``ignore_updates_of`` not counted (see the fan-in refinement)."""
    ignore = sorted(set(ignore_updates_of), key=lambda k: k.to_user_string())
    if not ignore:
        return dg.AutomationCondition.eager().with_label(EAGER_LABEL)
    updated = dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets(*ignore))
    names = ", ".join(k.to_user_string() for k in ignore)
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (dg.AutomationCondition.newly_missing() | updated).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"{EAGER_LABEL}; updates of {names} arrive through other parents")


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


def catalog_database(catalog_path: str | None = None) -> str:
    """The name DuckDB gives the catalog file when it is opened: its file stem."""
    path = catalog_path or os.environ.get("SPHERE_CATALOG") or DEFAULT_CATALOG_PATH
    return Path(path).stem


def duckdb_table_name(asset_name: str, database: str) -> str | None:
    """``<db>.main.<asset>`` for an asset the DuckDB catalog makes a view of, else None."""
    contract = CONTRACTS.get(asset_name)
    if contract is None or not contract.has_rows:
        return None
    return f"{database}.main.{asset_name}"


def _code_version(spec: dg.AssetSpec) -> str | None:
    name = spec.key.path[-1]
    version = CODE_VERSIONS.get(name)
    if version is not None and spec.code_version not in (None, version):
        raise ValueError(
            f"asset {name}: code_version {spec.code_version!r} set on the asset and {version!r} in "
            "sphere_assets/refresh/code_versions.py; set it only there"
        )
    return version if version is not None else spec.code_version


def _with_defaults(spec: dg.AssetSpec, ignores: dict, database: str) -> dg.AssetSpec:
    name = spec.key.path[-1]
    changes = {}
    if spec.automation_condition is None and spec.deps:
        changes["automation_condition"] = (
            fitted_model_condition()
            if name in FITTED_MODELS
            else downstream_condition(ignores.get(spec.key, ()))
        )
    version = _code_version(spec)
    if version != spec.code_version:
        changes["code_version"] = version
    metadata = spec.metadata or {}
    extra = {}
    if COLUMN_SCHEMA_KEY not in metadata:
        schema = contract_column_schema(name)
        if schema is not None:
            extra[COLUMN_SCHEMA_KEY] = schema
    table_name = duckdb_table_name(name, database)
    if table_name is not None and TABLE_NAME_KEY not in metadata:
        extra[TABLE_NAME_KEY] = table_name
    if extra:
        spec = spec.merge_attributes(metadata=extra)
    return spec.replace_attributes(**changes) if changes else spec


def apply_orchestration(assets: Iterable) -> list:
    """Every AssetsDefinition with automation + contract metadata defaults (see module doc).

    Keys, partitions, code, pools and checks are unchanged; other objects pass through.
    """
    assets = list(assets)
    specs = [s for a in assets if isinstance(a, dg.AssetsDefinition) for s in a.specs]
    parents = {s.key: {d.asset_key for d in s.deps} for s in specs}
    # assets that will carry the eager default (have parents, declare none themselves, are not
    # fitted models — those are not rebuilt by upstream updates, so no update travels through them)
    automated = {
        s.key
        for s in specs
        if s.deps and s.automation_condition is None and s.key.path[-1] not in FITTED_MODELS
    }
    ignores = fan_in_ignores(parents, automated)
    database = catalog_database()
    return with_schedule_freshness(
        a.map_asset_specs(lambda spec: _with_defaults(spec, ignores, database))
        if isinstance(a, dg.AssetsDefinition)
        else a
        for a in assets
    )


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
            "once after their shards; global fitted models (entropy_model, sphere_map) refit only when "
            "missing or their code version changed (see sphere_assets/refresh/automation.py)."
        ),
    )


def with_code_references(assets: Sequence, git_url: str | None = None, branch: str = "main"):
    """Source-code links for every asset (the UI's "Code" entry): the local file and line of its
    compute function; with ``git_url`` (``SPHERE_GIT_URL``,
    branch ``SPHERE_GIT_BRANCH``) they become links into the hosted repository."""
    with warnings.catch_warnings():  # beta API: its warnings would reach every CLI command
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references(list(assets))
    git_url = git_url if git_url is not None else os.environ.get("SPHERE_GIT_URL", "")
    if not git_url:
        return list(assets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _linked(assets, git_url, branch)


def _linked(assets: list, git_url: str, branch: str) -> list:
    return list(
        dg.link_code_references_to_git(
            assets,
            git_url=git_url,
            git_branch=os.environ.get("SPHERE_GIT_BRANCH", branch),
            file_path_mapping=dg.AnchorBasedFilePathMapping(
                local_file_anchor=Path(__file__).resolve().parents[2],
                file_anchor_path_in_repository="",
            ),
        )
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
