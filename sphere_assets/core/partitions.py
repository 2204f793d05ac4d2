"""Partition definitions. The shard count is configuration (SPHERE_SHARDS, default 4)."""

from __future__ import annotations

import os

import dagster as dg

DEFAULT_SHARDS = 4
BAND_LIMITS = ("16", "32", "64", "128", "256")


def shard_count() -> int:
    raw = os.environ.get("SPHERE_SHARDS", str(DEFAULT_SHARDS))
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"SPHERE_SHARDS must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"SPHERE_SHARDS must be a positive integer, got {n}")
    return n


def shard_keys(n: int | None = None) -> list[str]:
    return [str(i) for i in range(shard_count() if n is None else n)]


shard_partitions = dg.StaticPartitionsDefinition(shard_keys())
band_limit_partitions = dg.StaticPartitionsDefinition(list(BAND_LIMITS))


def partitions_in_scope(context, store, asset: str) -> list[str]:
    """Partitions an asset check looks at: its run's partitions, else every one on disk."""
    if context.has_partition_key or context.has_partition_key_range:
        return list(context.partition_keys)
    return store.partitions(asset)
