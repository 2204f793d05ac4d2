"""sphere_map (unpartitioned): the one map from embeddings to the sphere, fitted once.

Fitted on an evenly spaced sample across all ``patch_embeddings`` shards (the rows of every
shard in proportion to its size, deterministic), it holds everything ``shell_placements`` needs
to place a shard without looking at any other shard: the angular map (PCA-3, plus a small
neighbourhood-preserving layout of the sample carried to any row by its nearest sample rows
for ``method=neighbour``), and the centre and
scale of the radial score. The maths is ``sphere_assets.lib.sphere.sphere_map``.

Like ``entropy_model`` it is a fitted model: it is refit when missing, when its code version
changes, or by hand — not when a shard changes (new shards are placed out of sample with the
existing map; ``shell_placements`` reports each shard's drift against the fit so a user knows
when a refit is due).
"""

import json
import time

import dagster as dg
import numpy as np
from pydantic import Field

from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.patching.patch_embeddings import patch_embeddings
from sphere_assets.placements import io, report
from sphere_assets.placements.contract import SPHERE_MAP
from sphere_resources.warehouse import WarehouseResource

# numba/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
sm = lazy_module("sphere_assets.lib.sphere.sphere_map")


class SphereMapAssetConfig(dg.Config):
    """The run-configurable knobs of ``sphere_map.SphereMapConfig`` (same names)."""

    method: str = Field("neighbour", description="neighbour (layout + landmarks) | pca3")
    sample_size: int = Field(16384, description="rows of the evenly spaced corpus sample")
    knn_k: int = Field(15, description="cosine neighbours per sample row the layout keeps close")
    negatives: int = Field(5, description="random repulsion partners per neighbour edge")
    sigma: float = Field(0.4, description="angular scale (radians) of a neighbourhood")
    steps: int = Field(300, description="full-batch Adam steps of the layout")
    learning_rate: float = Field(0.01, description="Adam learning rate")
    layout_spread_deg: float = Field(
        1.25, description="room (degrees) the layout leaves around each landmark"
    )
    landmarks_k: int = Field(3, description="landmarks a row's direction is drawn from")
    tau: float = Field(0.01, description="softness of the landmark weights (cosine units)")
    n_lists: int = Field(0, description="inverted-file lists (0 = sample / 128, at most 256)")
    n_probe: int = Field(
        2,
        description="inverted-file lists scanned per row (1: ~40% less map CPU, a little less "
        "union recall@10: 0.363 vs 0.372 on the bundled corpus when last measured)",
    )
    spread_weight: float = Field(0.5, description="weight of the concentration in the score")
    seed: int = Field(0, description="PRNG seed (same sample + seed = byte-identical model)")

    def build(self) -> "sm.SphereMapConfig":
        return sm.SphereMapConfig(**self.model_dump())


def corpus_sample(store, sample_size: int) -> dict:
    """The evenly spaced sample over all shards: embeddings, prominence, shard of each row and
    the per-shard row counts."""
    keys = io.embedding_shards(store)
    if not keys:
        raise FileNotFoundError(
            f"asset '{SPHERE_MAP.name}': patch_embeddings has no materialized shard to fit on "
            "(materialize patch_embeddings first)"
        )
    counts = [io.embedding_rows(store, k) for k in keys]
    picks = sm.corpus_sample_rows(counts, sample_size)
    parts = [io.load_shard_vectors(store, k, rows) for k, rows in zip(keys, picks, strict=True)]
    return {
        "embeddings": np.concatenate([p["embeddings"] for p in parts]),
        "prominence": np.concatenate([p["prominence"] for p in parts]),
        "shard": np.concatenate([np.full(r.size, i) for i, r in enumerate(picks)]),
        "keys": keys,
        "rows_per_shard": counts,
        "sample_per_shard": [int(r.size) for r in picks],
    }


@dg.asset(
    name=SPHERE_MAP.name,
    deps=[patch_embeddings],
    group_name="placements",
    kinds={"jax", "numba", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "placements"},
    description=(
        "The one sphere map, fitted once on an evenly spaced sample of every patch_embeddings "
        "shard: a neighbourhood-preserving layout of the sample (UMAP-style loss on the "
        "great-circle distance, JAX, from PCA-3), carried to any row by its nearest sample "
        "rows (inverted file, numba), and the centre/scale of the radial score. "
        "shell_placements places every shard with it (same embedding -> same direction and "
        "score in any shard, bit for bit). Refit when missing, on a code change or by hand."
    ),
)
def sphere_map(
    context: dg.AssetExecutionContext, config: SphereMapAssetConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    cfg = config.build()
    t0 = time.perf_counter()
    sample = corpus_sample(store, cfg.sample_size)
    context.log.info(
        f"{SPHERE_MAP.name}: sample {sample['embeddings'].shape[0]} of "
        f"{sum(sample['rows_per_shard'])} rows over shards {','.join(sample['keys'])}; "
        f"fitting {cfg.method}"
    )
    try:
        model = sm.fit_sphere_map_model(
            sample["embeddings"], sample["prominence"], cfg, sample["shard"], log=context.log.info
        )
    except ValueError as exc:
        raise ValueError(f"asset '{SPHERE_MAP.name}': {exc}") from exc
    quality = report.map_quality(model, sample["embeddings"])
    row = report.sphere_map_row(model, cfg, sample, quality)
    io.write_sphere_map(store, model, row)
    seconds = time.perf_counter() - t0
    context.log.info(report.sphere_map_log_line(row, seconds))
    return dg.MaterializeResult(
        metadata=report.sphere_map_metadata(
            model, row, sample, quality, seconds, io.sphere_map_path(store)
        )
    )


@dg.asset_check(
    asset=sphere_map,
    description="The stored map loads, places its own fit sample on the unit sphere, and keeps "
    "neighbourhoods at least as well as plain PCA-3 of the same sample (recall@10).",
    blocking=True,
)
def sphere_map_beats_pca3(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    row = io.read_sphere_map_row(store)
    model = io.load_sphere_map(store)
    config = json.loads(row["config_json"])
    sample = corpus_sample(store, int(config["sample_size"]))
    unit = sm.map_directions(model, sample["embeddings"])
    on_sphere = bool(np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-9))
    better = row["recall_at_10"] >= row["recall_at_10_pca3"] or model.method == "pca3"
    return dg.AssetCheckResult(
        passed=bool(on_sphere and better),
        metadata={
            "recall_at_10": row["recall_at_10"],
            "recall_at_10_pca3": row["recall_at_10_pca3"],
            "unit_vectors": on_sphere,
            "sample_rows": int(unit.shape[0]),
        },
    )
