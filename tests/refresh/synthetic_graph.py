"""A small synthetic shard graph for the freshness planner and the nightly schedule, so
staleness is exercised whatever families exist today."""

import dagster as dg

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.refresh.freshness import MaterializationIndex, plan_partition


@dg.asset(partitions_def=shard_partitions)
def syn_root() -> None: ...


@dg.asset
def syn_global() -> None: ...


@dg.asset(partitions_def=shard_partitions, deps=[syn_root, syn_global])
def syn_child() -> None: ...


@dg.asset(partitions_def=shard_partitions, deps=[syn_child])
def syn_grandchild() -> None: ...


SYN_DEFS = dg.Definitions(
    assets=[syn_root, syn_global, syn_child, syn_grandchild],
    jobs=[dg.define_asset_job("shards_job", selection=[syn_root, syn_child, syn_grandchild])],
)


def mat(instance, asset, partition=None):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset.key, partition=partition))


def plan(instance, partition):
    graph = SYN_DEFS.resolve_asset_graph()
    plan = plan_partition(MaterializationIndex(instance), graph, partition)
    return {k.path[-1]: r for k, r in plan.selected.items()}, {
        k.path[-1]: r for k, r in plan.blocked.items()
    }
