"""The registered definitions as the orchestration and UI tests walk them: every materializable
asset of ``sphere_assets.definitions`` (including families added later) and its spec."""

import dagster as dg

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import ALL_ASSETS, defs

N = len(shard_keys())
GRAPH = defs.resolve_asset_graph()
ASSET_KEYS = sorted(
    (k for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).is_materializable),
    key=lambda k: k.to_user_string(),
)


def spec_of(key):
    for a in ALL_ASSETS:
        if isinstance(a, dg.AssetsDefinition) and key in a.keys:
            return a, a.specs_by_key[key]
    raise KeyError(key)
