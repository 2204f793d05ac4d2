"""nightly_shard_refresh: one run per shard partition that is missing or stale (default STOPPED).

Every night (``NIGHTLY_CRON``, 02:00 UTC) the schedule plans each shard partition with
:func:`sphere_assets.refresh.freshness.plan_partition` — which shard assets of that partition have no
materialization (or no files in the warehouse), or are older than a parent partition they read
— and yields one ``RunRequest`` per partition that needs anything, targeting ``shards_job``
narrowed to exactly those assets. Nothing stale → a ``SkipReason`` naming what was checked.

``run_key = nightly/<date>/shard=<k>/<fingerprint>``, where the fingerprint hashes the selected
assets and their own latest materializations: re-evaluating the same tick (a daemon
restart, a manual "test schedule") yields the same keys and Dagster launches nothing twice;
the next night gets new keys, so a partition whose run failed is requested again.

Start it in the UI (Automation → nightly_shard_refresh → on) or
``dagster schedule start nightly_shard_refresh -w workspace.yaml``; it needs the daemon
(``dagster dev`` runs one).

Freshness policies (opt-in, ``SPHERE_FRESHNESS=nightly``): the assets this schedule refreshes
(every shard asset of ``shards_job``) get ``FreshnessPolicy.cron`` with the schedule's cadence —
deadline ``NIGHTLY_CRON`` + ``NIGHTLY_ALLOWANCE`` (06:00 UTC), looking back one period (a day):
an asset passes when it materialized in the day before the last deadline. Off by default because
the schedule re-runs only what is missing or stale: with an unchanged corpus nothing runs, and
Dagster's freshness (time since the latest materialization) would show correct assets as failing
every day. Turn it on where the corpus changes daily, so a night without a refresh is a fault.
"""

import os
from datetime import timedelta

import dagster as dg
import mmh3

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.refresh.freshness import MaterializationIndex, plan_partition, shard_asset_keys
from sphere_assets.refresh.jobs import SHARDS_JOB
from sphere_resources.warehouse import WarehouseResource

NIGHTLY_CRON = "0 2 * * *"
SCHEDULE_NAME = "nightly_shard_refresh"
# how long after the schedule's tick its runs may take to land (queue, retries, a full corpus)
NIGHTLY_ALLOWANCE = timedelta(hours=4)
NIGHTLY_PERIOD = timedelta(days=1)  # NIGHTLY_CRON's interval: the policy looks back one period
FRESHNESS_ENV = "SPHERE_FRESHNESS"
FRESHNESS_CHOICES = ("off", "nightly")


def shifted_daily_cron(cron: str, delta: timedelta) -> str:
    """A daily cron ``"M H * * *"`` moved ``delta`` later (whole minutes, less than a day):
    "0 2 * * *" + 4 h -> "0 6 * * *"."""
    fields = cron.split()
    if (
        len(fields) != 5
        or fields[2:] != ["*", "*", "*"]
        or not all(f.isdigit() for f in fields[:2])
    ):
        raise ValueError(f"not a daily 'M H * * *' cron: {cron!r}")
    minutes = int(delta.total_seconds() // 60)
    if delta.total_seconds() % 60 or not 0 <= minutes < 24 * 60:
        raise ValueError(f"shift must be whole minutes in [0, 1 day), got {delta}")
    total = (int(fields[1]) * 60 + int(fields[0]) + minutes) % (24 * 60)
    return f"{total % 60} {total // 60} * * *"


def nightly_freshness_policy() -> dg.FreshnessPolicy:
    """Fresh when materialized in the day before the last deadline (tick + allowance)."""
    return dg.FreshnessPolicy.cron(
        deadline_cron=shifted_daily_cron(NIGHTLY_CRON, NIGHTLY_ALLOWANCE),
        lower_bound_delta=NIGHTLY_PERIOD,
        timezone="UTC",
    )


def freshness_setting(value: str | None = None) -> str:
    """``SPHERE_FRESHNESS`` (or ``value``): "off" (default, also when empty) or "nightly"."""
    raw = os.environ.get(FRESHNESS_ENV, "") if value is None else value
    choice = raw.strip().lower() or "off"
    if choice not in FRESHNESS_CHOICES:
        raise ValueError(f"{FRESHNESS_ENV} must be one of {FRESHNESS_CHOICES}, got {raw!r}")
    return choice


def with_schedule_freshness(assets, setting: str | None = None) -> list:
    """``assets`` with the nightly policy on every shard asset (what the schedule refreshes)
    that declares none, when the setting is "nightly"; unchanged otherwise."""
    assets = list(assets)
    if freshness_setting(setting) != "nightly":
        return assets
    policy = nightly_freshness_policy()

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.partitions_def != shard_partitions or spec.freshness_policy is not None:
            return spec
        return spec.replace_attributes(freshness_policy=policy)

    return [a.map_asset_specs(attach) if isinstance(a, dg.AssetsDefinition) else a for a in assets]


def plan_fingerprint(index: MaterializationIndex, plan) -> str:
    """Stable digest of the assets a plan selected and their own latest materializations."""
    parts = [plan.partition] + [
        f"{k.to_user_string()}@{index.latest(k, plan.partition)}" for k in plan.keys
    ]
    return f"{mmh3.hash128('|'.join(parts).encode(), seed=0, signed=False):032x}"[:16]


def shard_refresh_requests(context, warehouse: WarehouseResource | None, reason_tag: str):
    """RunRequests for every shard partition with missing/stale assets, or a SkipReason."""
    graph = context.repository_def.asset_graph
    index = MaterializationIndex(context.instance, warehouse.store() if warehouse else None)
    when = context.scheduled_execution_time
    day = when.strftime("%Y-%m-%d") if when is not None else "manual"
    requests, blocked = [], {}
    for partition in shard_partitions.get_partition_keys():
        plan = plan_partition(index, graph, partition)
        blocked.update({f"{k.to_user_string()}[{partition}]": v for k, v in plan.blocked.items()})
        if not plan.selected:
            continue
        fp = plan_fingerprint(index, plan)
        requests.append(
            dg.RunRequest(
                run_key=f"{reason_tag}/{day}/shard={partition}/{fp}",
                partition_key=partition,
                asset_selection=plan.keys,
                tags={
                    "sphere/trigger": reason_tag,
                    "sphere/reasons": "; ".join(
                        f"{k.to_user_string()}: {r}" for k, r in plan.selected.items()
                    )[:1000],
                },
            )
        )
    if blocked:
        context.log.info(f"not runnable yet (upstream never materialized): {blocked}")
    if not requests:
        checked = ", ".join(k.to_user_string() for k in shard_asset_keys(graph))
        return dg.SkipReason(f"every shard partition of [{checked}] is materialized and fresh")
    return requests


@dg.schedule(
    name=SCHEDULE_NAME,
    cron_schedule=NIGHTLY_CRON,
    execution_timezone="UTC",
    job_name=SHARDS_JOB,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Nightly: one run per shard partition that is missing or stale relative to upstream, "
        "narrowed to the assets that need it; run_keys make re-evaluation idempotent."
    ),
    tags={"family": "all"},
)
def nightly_shard_refresh(context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource):
    return shard_refresh_requests(context, warehouse, "nightly")
