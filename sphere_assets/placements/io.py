"""Reads and writes of the placements family, all through the warehouse (storage layer).

Per shard ``shell_placements/shard=<k>/``:

* ``part-0.parquet`` -- one row per patch_embeddings row (same order): keys, shell, r, theta,
  phi, x, y, z, prominence, promotions, lateral_moves;
* ``coordinates.safetensors`` -- ``xyz`` [P, 3], ``rtp`` [P, 3] (r, theta, phi), ``shell`` [P]
  (metadata: the shell model, so checks and readers can rebuild radii and targets);
* ``librarian.safetensors`` -- patch bytes [P, max_len] (zero padded), lengths, target
  (r, theta, phi): the Librarian training export;
* ``lvm.safetensors`` -- ``rows`` [M, W + 1]: windows of W consecutive patches of one article
  and the next patch, as row numbers into patch_embeddings' embeddings (no copies).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sphere_assets.core.lazy import lazy_module
from sphere_assets.harmonics.io import load_sh_basis
from sphere_assets.lib.sphere.features import angles_of
from sphere_assets.patching.contract import PATCH_EMBEDDINGS
from sphere_assets.patching.io import BLT_V3_STEM, EMBEDDINGS_STEM
from sphere_assets.placements.contract import (
    SHELL_PLACEMENTS,
    SHELL_PLACEMENTS_SCHEMA,
    SPHERE_MAP,
    SPHERE_MAP_SCHEMA,
)
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
sht = lazy_module("sphere_assets.lib.sphere.sht")
wf = lazy_module("sphere_assets.lib.sphere.waterfill")
sm = lazy_module("sphere_assets.lib.sphere.sphere_map")

MAP_STEM = "model"
MAP_FORMAT = "sphere.sphere_map.v1"
COORD_STEM = "coordinates"
LIBRARIAN_STEM = "librarian"
LVM_STEM = "lvm"
FORMAT = "sphere.shell_placements.v1"


class RowKeys:
    """(article_id, patch_index) of row i, built only when an error names rows."""

    def __init__(self, article_ids: pa.Array, patch_index: np.ndarray):
        self.article_ids = article_ids
        self.patch_index = patch_index

    def __len__(self) -> int:
        return len(self.patch_index)

    def __getitem__(self, i: int):
        return (self.article_ids[i].as_py(), int(self.patch_index[i]))


def load_shard_embeddings(store: Warehouse, key: str) -> dict:
    """Embeddings, prominence, keys and patch bytes of patch_embeddings/shard=key (row order)."""
    source = PATCH_EMBEDDINGS.name
    arrays, _ = store.read_tensors(source, key, EMBEDDINGS_STEM)
    v3, _ = store.read_tensors(source, key, BLT_V3_STEM)
    side = store.read_table(source, key, ["article_id", "patch_index"])
    n = arrays["embeddings"].shape[0]
    if side.num_rows != n or v3["patch_lengths"].shape[0] != n:
        raise ContractError(
            source,
            key,
            "<rows>",
            f"{n} embeddings, {side.num_rows} side rows, {v3['patch_lengths'].shape[0]} patches",
        )
    return {
        "embeddings": arrays["embeddings"],
        "prominence": arrays["prominence"],
        "article_id": side.column("article_id").combine_chunks(),
        "patch_index": np.asarray(arrays["patch_index"]),
        "bytes": v3["bytes"],
        "patch_lengths": v3["patch_lengths"],
    }


# ---------------------------------------------------------------------------------------------
# sphere_map


def sphere_map_metadata(model: sm.SphereMapModel) -> dict[str, str]:
    """String metadata of model.safetensors: format, scalars and the fit report (JSON)."""
    import json

    meta = {"format": MAP_FORMAT, **{k: str(v) for k, v in model.scalars().items()}}
    # wall times stay out of the file (they are in the materialization metadata): re-fitting
    # the same sample writes the same bytes
    report = {k: v for k, v in model.report.items() if not k.endswith("_seconds")}
    meta["report"] = json.dumps(report, sort_keys=True, default=str)
    return meta


def write_sphere_map(store: Warehouse, model: sm.SphereMapModel, row: dict) -> None:
    """Replace the sphere_map partition: the model tensors and its fit-report row."""
    with store.partition_writer(SPHERE_MAP.name, None) as writer:
        writer.write_tensors(MAP_STEM, model.tensors(), sphere_map_metadata(model))
        writer.write_table(pa.Table.from_pylist([row], schema=SPHERE_MAP_SCHEMA))


def load_sphere_map(store: Warehouse, for_asset: str | None = None) -> sm.SphereMapModel:
    """The fitted map, or a ContractError naming the asset that needs it and how to build it."""
    import json

    if not store.exists(SPHERE_MAP.name, None):
        who = f"asset '{for_asset}' needs the sphere map, but " if for_asset else ""
        raise ContractError(
            SPHERE_MAP.name,
            None,
            f"{MAP_STEM}.safetensors",
            f"{who}it is not materialized under {store.partition_dir(SPHERE_MAP.name, None)} "
            "(build it: sphere materialize-all, or dagster asset materialize -m "
            "sphere_assets.definitions --select sphere_map)",
        )
    arrays, meta = store.read_tensors(SPHERE_MAP.name, None, MAP_STEM)
    if meta.get("format") != MAP_FORMAT:
        raise ContractError(SPHERE_MAP.name, None, "format", f"{meta.get('format')!r}")
    return sm.SphereMapModel.from_tensors(arrays, meta, json.loads(meta.get("report", "{}")))


def sphere_map_path(store: Warehouse):
    return store.partition_dir(SPHERE_MAP.name, None)


def embedding_shards(store: Warehouse) -> list[str]:
    """The materialized patch_embeddings shards."""
    return store.partitions(PATCH_EMBEDDINGS.name)


def load_shard_vectors(store: Warehouse, key: str, rows: np.ndarray | None = None) -> dict:
    """embeddings [n, D] and prominence [n] of patch_embeddings/shard=key (rows ``rows`` only
    when given)."""
    arrays, _ = store.read_tensors(PATCH_EMBEDDINGS.name, key, EMBEDDINGS_STEM)
    emb, prom = arrays["embeddings"], arrays["prominence"]
    if rows is not None:
        emb, prom = emb[rows], prom[rows]
    return {"embeddings": np.asarray(emb), "prominence": np.asarray(prom)}


def read_sphere_map_row(store: Warehouse) -> dict:
    return store.read_table(SPHERE_MAP.name, None).to_pylist()[0]


def load_basis(store: Warehouse, band_limit: str) -> sht.ShBasis:
    """The sh_basis partition L = band_limit, or FileNotFoundError saying how to get it."""
    try:
        return load_sh_basis(store, band_limit)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"asset '{SHELL_PLACEMENTS.name}': sh_basis partition L={band_limit} is not "
            f"materialized (materialize sh_basis L={band_limit} first, or set "
            "SPHERE_SH_BAND_LIMIT)"
        ) from exc


def placement_table(src: dict, p: wf.Placement) -> pa.Table:
    """The Parquet rows of one shard (row i <-> patch_embeddings row i)."""
    map_theta, map_phi = angles_of(p.start_unit)
    return pa.table(
        {
            "article_id": src["article_id"].cast(pa.string()),
            "patch_index": pa.array(src["patch_index"].astype(np.int32)),
            "shell": pa.array(p.shell.astype(np.int32)),
            "r": pa.array(p.r),
            "theta": pa.array(p.theta),
            "phi": pa.array(p.phi),
            "map_theta": pa.array(map_theta.astype(np.float32)),
            "map_phi": pa.array(wf.wrap_phi32(map_phi)),
            "spread": pa.array(p.spread_rad.astype(np.float32)),
            "score": pa.array(p.score.astype(np.float32)),
            "x": pa.array(np.ascontiguousarray(p.xyz[:, 0])),
            "y": pa.array(np.ascontiguousarray(p.xyz[:, 1])),
            "z": pa.array(np.ascontiguousarray(p.xyz[:, 2])),
            "prominence": pa.array(p.prominence),
            "promotions": pa.array(p.promotions.astype(np.int32)),
            "lateral_moves": pa.array(p.lateral_moves.astype(np.int32)),
        },
        schema=SHELL_PLACEMENTS_SCHEMA,
    )


def shell_model_metadata(cfg: wf.WaterfillConfig, method: str) -> dict[str, str]:
    """String metadata of coordinates.safetensors: enough to rebuild radii, targets, tolerance."""
    return {
        "format": FORMAT,
        "method": method,
        "n_shells": str(cfg.n_shells),
        "r_min": repr(cfg.r_min),
        "r_max": repr(cfg.r_max),
        "kappa": repr(cfg.kappa),
        "tol_frac": repr(cfg.tol_frac),
        "tol_min": repr(cfg.tol_min),
        "band_limit": str(cfg.band_limit),
        "seed": str(cfg.seed),
        "radii": "r_s = r_min + (r_max - r_min) sqrt(s / (S - 1))",
        "targets": "largest remainder of N r_s^kappa / sum r^kappa",
        "rtp": "(r, theta, phi): theta in [0, pi], phi in [0, 2 pi)",
    }


def write_shard(
    store: Warehouse,
    key: str,
    src: dict,
    p: wf.Placement,
    shell_model: dict[str, str],
    librarian: dict,
    lvm_rows: np.ndarray,
    lvm_window: int,
) -> None:
    """Write partition ``key`` atomically: coordinates, librarian, lvm tensors and the rows."""
    with store.partition_writer(SHELL_PLACEMENTS.name, key) as writer:
        writer.write_tensors(
            COORD_STEM,
            {
                "xyz": np.ascontiguousarray(p.xyz, np.float32),
                "rtp": np.ascontiguousarray(np.stack([p.r, p.theta, p.phi], 1), np.float32),
                "shell": p.shell.astype(np.int32),
            },
            shell_model,
        )
        writer.write_tensors(
            LIBRARIAN_STEM, librarian, {"format": FORMAT, "bytes": "patch bytes, zero padded"}
        )
        writer.write_tensors(
            LVM_STEM,
            {"rows": lvm_rows.astype(np.int64)},
            {
                "format": FORMAT,
                "window": str(lvm_window),
                "rows": "row numbers into patch_embeddings/shard=<k>/embeddings.safetensors "
                "'embeddings': rows[:, :W] the inputs, rows[:, W] the target "
                "(lib.sphere.exports.lvm_gather)",
            },
        )
        writer.write_table(placement_table(src, p))


def read_shell_model(store: Warehouse, key: str) -> dict[str, str]:
    """The shell model stored with partition ``key`` (coordinates.safetensors metadata)."""
    name = SHELL_PLACEMENTS.name
    _, meta = store.read_tensors(name, key, COORD_STEM)
    if meta.get("format") != FORMAT:
        raise ContractError(name, key, f"{COORD_STEM}.format", f"{meta.get('format')!r}")
    return meta


def stored_shell_targets(store: Warehouse, key: str) -> tuple[wf.WaterfillConfig, np.ndarray]:
    """(the water-filling config partition ``key`` was placed with, its per-shell targets)."""
    meta = read_shell_model(store, key)
    cfg = wf.WaterfillConfig(
        n_shells=int(meta["n_shells"]),
        r_min=float(meta["r_min"]),
        r_max=float(meta["r_max"]),
        kappa=float(meta["kappa"]),
    )
    _, targets = wf.shell_targets(int(read_shells(store, key).size), cfg)
    return cfg, targets


def read_shells(store: Warehouse, key: str) -> np.ndarray:
    """The ``shell`` column of partition ``key``."""
    return store.read_table(SHELL_PLACEMENTS.name, key, ["shell"]).column("shell").to_numpy()


def read_coordinates(store: Warehouse, key: str) -> dict[str, np.ndarray]:
    """r, theta, phi, x, y, z of partition ``key`` as float64 columns."""
    t = store.read_table(SHELL_PLACEMENTS.name, key, ["r", "theta", "phi", "x", "y", "z"])
    return {name: t.column(name).to_numpy().astype(np.float64) for name in t.column_names}


def embedding_rows(store: Warehouse, key: str) -> int:
    """Rows of patch_embeddings/shard=key."""
    return store.read_table(PATCH_EMBEDDINGS.name, key, ["patch_index"]).num_rows


def first_rows_table(store: Warehouse, key: str) -> pa.Table:
    """The stored rows of partition ``key`` (for the UI preview)."""
    return store.read_table(SHELL_PLACEMENTS.name, key)


def partition_path(store: Warehouse, key: str):
    return store.partition_dir(SHELL_PLACEMENTS.name, key)
