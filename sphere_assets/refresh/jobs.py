"""Jobs built from the registered assets, retry policies, the heavy pool, and the executor.

The asset graph mixes three partitions definitions (shard, band limit L, none), and a Dagster
job runs one partition of one partitions definition, so "the whole graph" is not one job (it is
``sphere materialize-all``, which runs the stages in order). The jobs are derived from whatever
assets ``definitions.py`` registers, so a new family gets its jobs without editing this file:

* ``<group>_job`` per asset group (ingest, patching, ngrams, harmonics, placements, catalog, ...);
  a group whose assets have more than one partitions definition gets one job per definition,
  ``<group>_shards_job`` / ``<group>_global_job`` / ``<group>_L_job``;
* ``shards_job`` — every shard-partitioned asset (targets of the nightly schedule and the
  incoming-files sensor, which narrow it with an asset selection per run);
* ``global_job`` — every unpartitioned asset (entropy model, merges, catalogs), in order;
* ``band_limits_job`` — every asset partitioned by band limit L.

Every job carries

* an op retry policy (``OP_RETRY_POLICY``: 1 retry after 2 s) for a transient exception in a step;
* run-retry tags (``dagster/max_retries=2``, ``dagster/retry_strategy=FROM_FAILURE``): when a run
  fails — a step process killed (OOM, SIGKILL), a lost worker, a step that failed twice — the
  daemon re-executes it from the failure (needs ``run_retries.enabled`` in dagster.yaml, which the
  repo's dagster.yaml sets). Partition writes are atomic (staging + rename), so a killed attempt
  leaves the previous partition and the re-execution replaces it whole;
* ``family`` / ``partitions`` tags for filtering runs in the UI.

Heavy JAX/torch steps declare ``pool="heavy"`` on their asset decorator (``HEAVY_POOL``); the
pool's limit is instance configuration (``dagster.yaml`` ``concurrency.pools.default_limit``, or
``dagster instance concurrency set heavy 2``), so one heavy step runs at a time on a small box.

Executor: ``SPHERE_EXECUTOR`` picks it for every job launched through the instance (UI, CLI,
schedules, sensors) — unset/``multiprocess`` = Dagster's default multiprocess executor,
``in_process``, or ``celery`` = ``dagster_celery.celery_executor`` with the broker from
``SPHERE_CELERY_BROKER`` (default ``pyamqp://guest:guest@127.0.0.1:5672//``), steps sent to the
queue ``SPHERE_CELERY_QUEUE`` (default ``dagster``). ``sphere materialize-all`` launches these jobs
through the instance too (refresh/materialize.py); ``execute_in_process`` (tests) always runs
in process.
"""

import os
from collections.abc import Iterable

import dagster as dg

from sphere_assets.core.partitions import band_limit_partitions, shard_partitions
from sphere_assets.core.pools import HEAVY_KINDS, HEAVY_POOL

OP_RETRY_POLICY = dg.RetryPolicy(max_retries=1, delay=2.0)
RUN_RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}
DEFAULT_CELERY_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
# the cross-family jobs, by partitions label (see partitions_label)
SHARDS_JOB, GLOBAL_JOB, BAND_LIMITS_JOB = "shards_job", "global_job", "band_limits_job"
CROSS_FAMILY_JOBS = {"shards": SHARDS_JOB, "global": GLOBAL_JOB, "L": BAND_LIMITS_JOB}


def partitions_label(pdef: dg.PartitionsDefinition | None) -> str:
    """shards | L | global (unpartitioned) | the definition's own name for anything else."""
    if pdef is None:
        return "global"
    if pdef == shard_partitions:
        return "shards"
    if pdef == band_limit_partitions:
        return "L"
    return getattr(pdef, "name", None) or type(pdef).__name__


def partitions_phrase(label: str) -> str:
    """How a job description names a partitions label: ``global`` assets have no partitions,
    so they are "unpartitioned", never "global partitions"."""
    phrases = {
        "global": "unpartitioned",
        "shards": "shard partitions",
        "L": "band-limit partitions",
    }
    return phrases.get(label, f"{label} partitions")


def asset_specs(assets: Iterable) -> list[dg.AssetSpec]:
    specs = []
    for a in assets:
        if isinstance(a, dg.AssetsDefinition):
            specs.extend(a.specs)
    return specs


def _job(name: str, keys: list[dg.AssetKey], description: str, tags: dict) -> object:
    return dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.assets(*sorted(keys, key=lambda k: k.to_user_string())),
        description=description,
        tags={**RUN_RETRY_TAGS, **tags},
        op_retry_policy=OP_RETRY_POLICY,
    )


def family_jobs(assets: Iterable) -> list:
    """Per-group jobs plus shards_job / global_job / band_limits_job (see module doc)."""
    specs = asset_specs(assets)
    by_group: dict[str, dict[str, list[dg.AssetKey]]] = {}
    by_label: dict[str, list[dg.AssetKey]] = {}
    for spec in specs:
        label = partitions_label(spec.partitions_def)
        group = spec.group_name or "default"
        by_group.setdefault(group, {}).setdefault(label, []).append(spec.key)
        by_label.setdefault(label, []).append(spec.key)

    jobs = []
    for group in sorted(by_group):
        labels = by_group[group]
        for label in sorted(labels):
            name = f"{group}_job" if len(labels) == 1 else f"{group}_{label}_job"
            names = ", ".join(sorted(k.to_user_string() for k in labels[label]))
            jobs.append(
                _job(
                    name,
                    labels[label],
                    f"Family '{group}' ({partitions_phrase(label)}): {names}.",
                    {"family": group, "partitions": label},
                )
            )
    for label, name in CROSS_FAMILY_JOBS.items():
        if label in by_label:
            jobs.append(
                _job(
                    name,
                    by_label[label],
                    f"Every asset of the code location with {partitions_phrase(label)}."
                    if label != "global"
                    else "Every unpartitioned asset of the code location.",
                    {"family": "all", "partitions": label},
                )
            )
    return jobs


def heavy_assets_without_pool(assets: Iterable) -> list[str]:
    """Assets whose kinds say JAX/torch but whose step is not in the heavy pool."""
    missing = []
    for a in assets:
        if not isinstance(a, dg.AssetsDefinition) or not a.is_executable:
            continue
        for spec in a.specs:
            if set(spec.kinds or ()) & HEAVY_KINDS and a.op.pool != HEAVY_POOL:
                missing.append(spec.key.to_user_string())
    return sorted(missing)


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by SPHERE_EXECUTOR (None = Dagster's default multiprocess executor)."""
    kind = os.environ.get("SPHERE_EXECUTOR", "").strip().lower()
    if kind in ("", "multiprocess", "default"):
        return None
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as exc:
            raise ImportError(
                "SPHERE_EXECUTOR=celery needs dagster-celery: pip install -e '.[dev]'"
            ) from exc
        return celery_executor.configured(
            {
                "broker": os.environ.get("SPHERE_CELERY_BROKER", DEFAULT_CELERY_BROKER),
                "backend": os.environ.get("SPHERE_CELERY_BACKEND", "rpc://"),
                "config_source": {
                    # One task at a time per worker process: steps are long and CPU-bound.
                    "worker_prefetch_multiplier": 1,
                    # Steps go to this queue unless an op tags dagster-celery/queue; workers
                    # listen with `dagster-celery worker start -q <queue>`.
                    "task_default_queue": os.environ.get("SPHERE_CELERY_QUEUE", "dagster"),
                },
            },
            name="celery",
        )
    raise ValueError(f"SPHERE_EXECUTOR must be multiprocess, in_process or celery, got {kind!r}")
