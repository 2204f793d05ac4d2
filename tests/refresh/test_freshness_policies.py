"""Freshness policies implied by the nightly schedule (opt-in: ``SPHERE_FRESHNESS=nightly``).

The definitions are loaded in a subprocess with the setting on (they are built at import): every
asset the schedule refreshes (the shard assets of ``shards_job``) carries a cron policy whose
deadline is each schedule tick plus the allowance, nothing else carries one, and the code
location still loads without torch or JAX. Without the setting (this process) no asset does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.refresh import schedules

PROBE = """
import json, sys
from sphere_assets.definitions import defs
from sphere_assets.refresh.jobs import SHARDS_JOB
graph = defs.resolve_asset_graph()
job_keys = {k.to_user_string() for k in defs.resolve_job_def(SHARDS_JOB).asset_layer.selected_asset_keys}
policies = {}
for key in graph.get_all_asset_keys():
    node = graph.get(key)
    if not node.is_materializable:
        continue
    p = node.freshness_policy
    policies[key.to_user_string()] = None if p is None else {
        "type": type(p).__name__,
        "deadline_cron": p.deadline_cron,
        "lower_bound_s": p.lower_bound_delta.total_seconds(),
        "timezone": p.timezone,
    }
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib"))
print(json.dumps({"policies": policies, "shards_job": sorted(job_keys), "heavy": heavy}))
"""


def _load(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != schedules.FRESHNESS_ENV}
    if setting is not None:
        env[schedules.FRESHNESS_ENV] = setting
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_policy_deadline_is_each_schedule_tick_plus_the_allowance():
    policy = schedules.nightly_freshness_policy()
    assert isinstance(policy, dg.FreshnessPolicy)
    assert policy.lower_bound_delta == timedelta(days=1) and policy.timezone == "UTC"
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    ticks = cron_string_iterator(start, schedules.NIGHTLY_CRON, "UTC")
    deadlines = cron_string_iterator(start, policy.deadline_cron, "UTC")
    for _ in range(60):  # two months, across the month boundary
        tick, deadline = next(ticks), next(deadlines)
        assert deadline - tick == schedules.NIGHTLY_ALLOWANCE
    # the look-back is exactly the schedule's period: one missed night fails
    assert policy.lower_bound_delta == timedelta(days=1)


def test_shifted_daily_cron_wraps_midnight_and_refuses_other_crons():
    assert schedules.shifted_daily_cron("0 2 * * *", timedelta(hours=4)) == "0 6 * * *"
    assert schedules.shifted_daily_cron("30 22 * * *", timedelta(hours=4)) == "30 2 * * *"
    assert schedules.shifted_daily_cron("59 23 * * *", timedelta(minutes=1)) == "0 0 * * *"
    for cron in ("0 2 * * 1", "*/5 * * * *", "0 2 1 * *"):
        with pytest.raises(ValueError, match="daily"):
            schedules.shifted_daily_cron(cron, timedelta(hours=1))
    with pytest.raises(ValueError, match="whole minutes"):
        schedules.shifted_daily_cron("0 2 * * *", timedelta(days=1))


def test_a_bad_setting_names_the_variable():
    assert schedules.freshness_setting("") == "off"
    assert schedules.freshness_setting(" Nightly ") == "nightly"
    with pytest.raises(ValueError, match="SPHERE_FRESHNESS must be one of"):
        schedules.freshness_setting("daily")


@pytest.mark.slow  # loads the code location in a subprocess
def test_nightly_setting_puts_the_policy_on_exactly_the_scheduled_assets():
    loaded = _load("nightly")
    assert loaded["heavy"] == []
    policies = loaded["policies"]
    scheduled = set(loaded["shards_job"])
    assert {"raw_articles", "blt_patches", "patch_embeddings"} <= scheduled
    expected = {
        "type": "CronFreshnessPolicy",
        "deadline_cron": "0 6 * * *",
        "lower_bound_s": 86400.0,
        "timezone": "UTC",
    }
    for name, policy in policies.items():
        assert policy == (expected if name in scheduled else None), name


def test_default_is_no_freshness_policy(monkeypatch):
    """This process's definitions were built without the setting: no asset carries a policy,
    and the same assets with the setting on get it exactly where the schedule refreshes."""
    monkeypatch.delenv(schedules.FRESHNESS_ENV, raising=False)
    from sphere_assets.definitions import ALL_ASSETS, defs

    graph = defs.resolve_asset_graph()
    nodes = [graph.get(k) for k in graph.get_all_asset_keys()]
    assert [n.key for n in nodes if n.freshness_policy is not None] == []
    assert schedules.with_schedule_freshness(ALL_ASSETS) == list(ALL_ASSETS)
    policy = schedules.nightly_freshness_policy()
    for assets_def in schedules.with_schedule_freshness(ALL_ASSETS, "nightly"):
        for spec in assets_def.specs:
            on_schedule = spec.partitions_def == shard_partitions
            assert spec.freshness_policy == (policy if on_schedule else None), spec.key
