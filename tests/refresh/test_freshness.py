"""Freshness planning of one shard partition: missing, stale and blocked assets."""

import dagster as dg

from sphere_assets.core.partitions import shard_keys
from tests.refresh.synthetic_graph import mat as _mat
from tests.refresh.synthetic_graph import plan as _plan
from tests.refresh.synthetic_graph import syn_child, syn_global, syn_grandchild, syn_root


def test_freshness_plan_missing_stale_and_blocked():
    with dg.instance_for_test() as instance:
        selected, blocked = _plan(instance, "0")
        assert selected == {"syn_root": "missing"}
        assert set(blocked) == {"syn_child", "syn_grandchild"}  # syn_global never materialized
        _mat(instance, syn_global)
        for k in shard_keys():
            _mat(instance, syn_root, k)
            _mat(instance, syn_child, k)
            _mat(instance, syn_grandchild, k)
        assert _plan(instance, "0") == ({}, {})
        _mat(instance, syn_root, "1")  # shard 1 upstream changed
        selected, _ = _plan(instance, "1")
        assert list(selected) == ["syn_child", "syn_grandchild"]
        assert selected["syn_child"].startswith("stale: upstream syn_root[1]")
        assert _plan(instance, "0") == ({}, {})
        _mat(instance, syn_global)  # a global parent changed: every shard is stale
        for k in shard_keys():
            assert list(_plan(instance, k)[0]) == ["syn_child", "syn_grandchild"]
