"""Which shard partitions need a run: missing or stale relative to upstream (Dagster-aware).

Used by the nightly schedule and the incoming-files sensor. For one shard partition ``k`` the
shard-partitioned assets are visited in topological order and an asset is selected when

* it is *forced* (the sensor forces ``raw_articles`` for shards whose source files changed), or
* it is *missing*: no materialization of ``k`` in the instance, or (when a warehouse is given
  and the asset has a data contract) no files for ``k`` on disk, or
* it is *stale*: some parent partition it reads (through the asset graph's partition mapping:
  the same shard of a shard parent, the whole of an unpartitioned parent, the mapped keys of
  any other parent) has a newer materialization than its own latest one (storage ids are
  monotonic, so "newer" needs no clocks), or
* a parent was selected for ``k`` in this plan (it will be rewritten, so the child follows).

A selected asset is *blocked* — left out, with the reason recorded — when a parent outside the
plan has no materialization at all (e.g. ``blt_patches`` before ``entropy_model`` exists):
running it would only fail.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from sphere_assets.core.partitions import shard_partitions
from sphere_resources.contracts import CONTRACTS


class MaterializationIndex:
    """Latest materialization storage id per (asset, partition), cached for one evaluation."""

    def __init__(self, instance: dg.DagsterInstance, warehouse=None):
        self.instance = instance
        self.warehouse = warehouse  # a sphere_resources.store.Warehouse, or None
        self._cache: dict[tuple[dg.AssetKey, str | None], int | None] = {}

    def latest(self, key: dg.AssetKey, partition: str | None) -> int | None:
        ck = (key, partition)
        if ck not in self._cache:
            flt = dg.AssetRecordsFilter(
                asset_key=key, asset_partitions=[partition] if partition is not None else None
            )
            records = self.instance.fetch_materializations(flt, limit=1).records
            self._cache[ck] = records[0].storage_id if records else None
        return self._cache[ck]

    def on_disk(self, key: dg.AssetKey, partition: str | None) -> bool:
        """False only when the warehouse is known and the contract's partition dir is absent."""
        name = key.path[-1]
        if self.warehouse is None or name not in CONTRACTS:
            return True
        try:
            return self.warehouse.exists(name, partition)
        except Exception:  # partition/contract mismatch: leave the decision to the instance
            return True


@dataclass
class PartitionPlan:
    partition: str
    selected: dict[dg.AssetKey, str] = field(default_factory=dict)  # key -> reason
    blocked: dict[dg.AssetKey, str] = field(default_factory=dict)  # key -> why not runnable

    @property
    def keys(self) -> list[dg.AssetKey]:
        return list(self.selected)


def shard_asset_keys(asset_graph) -> list[dg.AssetKey]:
    """Materializable shard-partitioned assets in topological order."""
    return [
        k
        for k in asset_graph.toposorted_asset_keys
        if asset_graph.has(k)
        and asset_graph.get(k).is_materializable
        and asset_graph.get(k).partitions_def == shard_partitions
    ]


def parent_partition_keys(asset_graph, partition: str, parent: dg.AssetKey, child: dg.AssetKey):
    if asset_graph.get(parent).partitions_def is None:
        return [None]
    result = asset_graph.get_parent_partition_keys_for_child(partition, parent, child)
    return list(result.partitions_subset.get_partition_keys())


def descendants_within(asset_graph, roots: Iterable[dg.AssetKey], keys: Iterable[dg.AssetKey]):
    """roots plus every key in ``keys`` reachable from them through the graph."""
    allowed = set(keys)
    seen = set(roots)
    frontier = list(roots)
    while frontier:
        node = frontier.pop()
        for child in asset_graph.get(node).child_keys:
            if child not in seen:
                seen.add(child)
                frontier.append(child)
    return seen & (allowed | set(roots))


def plan_partition(
    index: MaterializationIndex,
    asset_graph,
    partition: str,
    forced: Iterable[dg.AssetKey] = (),
    candidates: Iterable[dg.AssetKey] | None = None,
) -> PartitionPlan:
    """Missing/stale/forced shard assets of one partition (see module doc)."""
    forced = set(forced)
    allowed = set(candidates) if candidates is not None else None
    plan = PartitionPlan(partition)
    for key in shard_asset_keys(asset_graph):
        if allowed is not None and key not in allowed:
            continue
        own = index.latest(key, partition)
        reason = None
        if key in forced:
            reason = "source changed"
        elif own is None:
            reason = "missing"
        elif not index.on_disk(key, partition):
            reason = "missing on disk"
        blocked = None
        for parent in sorted(asset_graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
            if parent in plan.selected:
                reason = reason or f"upstream {parent.to_user_string()} is refreshed"
                continue
            if not asset_graph.has(parent) or not asset_graph.get(parent).is_materializable:
                continue
            for ppk in parent_partition_keys(asset_graph, partition, parent, key):
                sid = index.latest(parent, ppk)
                label = parent.to_user_string() + (f"[{ppk}]" if ppk is not None else "")
                if sid is None:
                    blocked = blocked or f"upstream {label} was never materialized"
                elif own is not None and sid > own and reason is None:
                    reason = f"stale: upstream {label} is newer"
        if reason is None:
            continue
        if blocked:
            plan.blocked[key] = blocked
        else:
            plan.selected[key] = reason
    return plan
