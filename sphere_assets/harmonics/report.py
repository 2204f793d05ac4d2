"""UI metadata of the harmonics family: one sh_basis partition (band limit L)."""

from __future__ import annotations

import dagster as dg

from sphere_assets.core.metadata import row_metadata
from sphere_assets.harmonics.contract import SH_BASIS


def materialization_metadata(stats: dict, jax_metadata: dict, path) -> dict:
    """Everything one sh_basis partition's materialization shows in the UI (one row per L)."""
    return {
        **row_metadata(SH_BASIS, 1),
        **stats,
        **jax_metadata,
        "path": dg.MetadataValue.path(str(path)),
    }
