"""UI metadata of the navigate family: per-shard figures of the cone index and the ANN index."""

from __future__ import annotations

import dagster as dg
import numpy as np

from sphere_assets.core.metadata import preview_markdown, row_metadata
from sphere_assets.navigate.contract import EMBEDDING_ANN, SPHERE_INDEX


def sphere_index_metadata(index, table, seconds: float, exact: dict, path: str) -> dict:
    """One shard's sphere_index materialization metadata."""
    counts = np.diff(index.offsets)
    occupied = counts[counts > 0]
    return {
        **row_metadata(SPHERE_INDEX, index.size),
        "nside": index.nside,
        "cells": index.npix,
        "band_width": index.band_width,
        "n_bands": index.n_bands,
        "occupied_band_cells": int(occupied.size),
        "points_per_occupied_cell_mean": round(float(occupied.mean()), 2) if occupied.size else 0.0,
        "points_per_cell_max": int(counts.max()) if counts.size else 0,
        "seconds": round(seconds, 3),
        **exact,
        "preview": preview_markdown(
            table, ["article_id", "patch_index", "row", "shell", "band", "cell", "theta", "phi"]
        ),
        "path": dg.MetadataValue.path(path),
    }


def embedding_ann_metadata(summary: dict, recall: float, queries: int, path: str) -> dict:
    """One shard's embedding_ann materialization metadata."""
    return {
        **row_metadata(EMBEDDING_ANN, 1),
        **{k: v for k, v in summary.items() if k != "build_seconds"},
        "vectors": summary["rows"],
        "build_seconds": round(summary["build_seconds"], 3),
        "recall_at_10_sample": round(recall, 4),
        "recall_queries": queries,
        "path": dg.MetadataValue.path(path),
    }
