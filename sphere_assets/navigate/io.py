"""Reads and writes of the navigate family, all through the warehouse (storage layer).

Per shard ``sphere_index/shard=<k>/``: ``part-0.parquet`` (one row per placement, index order,
see contract.py), ``csr.safetensors`` (``offsets``, ``unit``, ``shell``, ``row``; metadata
``nside``, ``band_width``, ``n_bands``) and, when shell_placements has the sphere_map
directions (``map_theta``, ``map_phi``), ``map.safetensors``: the same index over those. Per shard ``embedding_ann/shard=<k>/``: ``ann.faiss``
(``faiss.serialize_index``) and a one-row ``part-0.parquet`` summary.

Upstream reads: shell_placements (keys, shell, theta, phi, x, y, z), patch_embeddings
(embeddings.safetensors), blt_patches (patch text), raw_articles (titles).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sphere_assets.core.lazy import lazy_module
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.navigate.contract import (
    EMBEDDING_ANN,
    EMBEDDING_ANN_SCHEMA,
    SPHERE_INDEX,
    SPHERE_INDEX_SCHEMA,
)
from sphere_assets.patching.contract import BLT_PATCHES, PATCH_EMBEDDINGS
from sphere_assets.placements.contract import SHELL_PLACEMENTS
from sphere_resources.contracts import ContractError
from sphere_resources.store import Warehouse

cones = lazy_module("sphere_assets.lib.sphere.cones")

CSR_STEM = "csr"
MAP_STEM = "map"
ANN_FILE = "ann.faiss"
FORMAT = "sphere.sphere_index.v1"
BUILD = "sphere materialize-all"


class MissingInput(FileNotFoundError):
    """A thing the navigator needs is not in the warehouse; the message says how to build it."""


def missing(asset: str, key: str | None, needed_by: str) -> MissingInput:
    where = f"{asset}" + (f" partition {key}" if key is not None else "")
    select = f"--select {asset}" + (f" --partition {key}" if key is not None else "")
    return MissingInput(
        f"{needed_by}: {where} is not materialized in the warehouse; build it with `{BUILD}` "
        f"(or `dagster asset materialize -m sphere_assets.definitions {select}`)"
    )


def require(store: Warehouse, asset: str, key: str | None, needed_by: str) -> None:
    if not store.exists(asset, key):
        raise missing(asset, key, needed_by)


# --- upstream -----------------------------------------------------------------------------------


def read_placements(store: Warehouse, key: str) -> dict:
    """Keys, shells, stored angles and float64 unit directions of shell_placements/shard=key."""
    require(store, SHELL_PLACEMENTS.name, key, f"asset '{SPHERE_INDEX.name}'")
    has_map = {"map_theta", "map_phi"} <= set(SHELL_PLACEMENTS.schema.names)
    t = store.read_table(
        SHELL_PLACEMENTS.name,
        key,
        ["article_id", "patch_index", "shell", "theta", "phi", "x", "y", "z"]
        + (["map_theta", "map_phi"] if has_map else []),
    )
    xyz = np.stack([t.column(c).to_numpy().astype(np.float64) for c in ("x", "y", "z")], axis=1)
    map_unit = None
    if has_map:
        mt = t.column("map_theta").to_numpy().astype(np.float64)
        mp = t.column("map_phi").to_numpy().astype(np.float64)
        map_unit = np.stack([np.sin(mt) * np.cos(mp), np.sin(mt) * np.sin(mp), np.cos(mt)], 1)
    return {
        "map_unit": map_unit,
        "article_id": t.column("article_id").combine_chunks().cast(pa.string()),
        "patch_index": t.column("patch_index").to_numpy(),
        "shell": t.column("shell").to_numpy(),
        "theta": t.column("theta").to_numpy(),
        "phi": t.column("phi").to_numpy(),
        "unit": cones.unit_vectors(xyz),
    }


def read_embeddings(store: Warehouse, key: str, needed_by: str) -> tuple[np.ndarray, dict]:
    """(embeddings [P, D] float32, their safetensors metadata) of patch_embeddings/shard=key."""
    require(store, PATCH_EMBEDDINGS.name, key, needed_by)
    arrays, meta = store.read_tensors(PATCH_EMBEDDINGS.name, key, "embeddings")
    return arrays["embeddings"], meta


def read_patch_texts(store: Warehouse, key: str) -> pa.Array | None:
    """blt_patches/shard=key ``text`` (row i = placement row i), None when not materialized."""
    if not store.exists(BLT_PATCHES.name, key):
        return None
    return store.read_table(BLT_PATCHES.name, key, ["text"]).column("text").combine_chunks()


def read_titles(store: Warehouse, key: str) -> dict[str, str]:
    """article_id -> title of raw_articles/shard=key ({} when not materialized)."""
    if not store.exists(RAW_ARTICLES.name, key):
        return {}
    t = store.read_table(RAW_ARTICLES.name, key, ["article_id", "title"])
    return dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True))


# --- sphere_index ---------------------------------------------------------------------------


def index_table(src: dict, index: cones.ConeIndex) -> pa.Table:
    """The Parquet rows of one shard's index (index order)."""
    order = index.row
    cell = index.cell()
    return pa.table(
        {
            "article_id": src["article_id"].take(pa.array(order)),
            "patch_index": pa.array(src["patch_index"][order].astype(np.int32)),
            "row": pa.array(order),
            "shell": pa.array(index.shell),
            "band": pa.array((index.shell // index.band_width).astype(np.int32)),
            "cell": pa.array(cell),
            "theta": pa.array(src["theta"][order].astype(np.float32)),
            "phi": pa.array(src["phi"][order].astype(np.float32)),
            "ux": pa.array(index.unit[:, 0]),
            "uy": pa.array(index.unit[:, 1]),
            "uz": pa.array(index.unit[:, 2]),
        },
        schema=SPHERE_INDEX_SCHEMA,
    )


def index_arrays(index: cones.ConeIndex) -> dict[str, np.ndarray]:
    return {
        "offsets": index.offsets,
        "unit": index.unit,
        "shell": index.shell.astype(np.int32),
        "row": index.row,
    }


def index_meta(index: cones.ConeIndex) -> dict[str, str]:
    return {
        "format": FORMAT,
        "nside": str(index.nside),
        "band_width": str(index.band_width),
        "n_bands": str(index.n_bands),
        "scheme": "RING",
        "key": "cell * n_bands + band",
    }


def write_sphere_index(
    store: Warehouse,
    key: str,
    src: dict,
    index: cones.ConeIndex,
    map_index: cones.ConeIndex | None = None,
) -> None:
    with store.partition_writer(SPHERE_INDEX.name, key) as writer:
        if map_index is not None:
            meta = {**index_meta(map_index), "directions": "sphere_map (map_theta, map_phi)"}
            writer.write_tensors(MAP_STEM, index_arrays(map_index), meta)
        writer.write_tensors(CSR_STEM, index_arrays(index), index_meta(index))
        writer.write_table(index_table(src, index))


def load_cone_index(
    store: Warehouse, key: str, needed_by: str = "navigator", stem: str = CSR_STEM
) -> cones.ConeIndex:
    """The stored cell index of shard ``key`` (MissingInput naming the build command)."""
    require(store, SPHERE_INDEX.name, key, needed_by)
    arrays, meta = store.read_tensors(SPHERE_INDEX.name, key, stem)
    if meta.get("format") != FORMAT:
        raise ContractError(SPHERE_INDEX.name, key, f"{stem}.format", repr(meta.get("format")))
    return cones.ConeIndex(
        nside=int(meta["nside"]),
        band_width=int(meta["band_width"]),
        n_bands=int(meta["n_bands"]),
        offsets=arrays["offsets"],
        unit=arrays["unit"],
        shell=arrays["shell"],
        row=arrays["row"],
    )


def load_map_index(store: Warehouse, key: str) -> cones.ConeIndex | None:
    """The index over the sphere_map directions of shard ``key``, None when it has none."""
    if not store.has_file(SPHERE_INDEX.name, key, f"{MAP_STEM}.safetensors"):
        return None
    return load_cone_index(store, key, stem=MAP_STEM)


def read_index_rows(store: Warehouse, key: str) -> pa.Table:
    """article_id, patch_index, theta, phi of sphere_index/shard=key, in *placement row* order."""
    t = store.read_table(
        SPHERE_INDEX.name, key, ["row", "article_id", "patch_index", "theta", "phi"]
    )
    inverse = np.argsort(t.column("row").to_numpy(), kind="stable")
    return t.take(pa.array(inverse)).drop_columns(["row"])


def index_partitions(store: Warehouse) -> list[str]:
    return store.partitions(SPHERE_INDEX.name)


# --- embedding_ann --------------------------------------------------------------------------


def write_ann(store: Warehouse, key: str, data: bytes, summary: dict) -> None:
    with store.partition_writer(EMBEDDING_ANN.name, key) as writer:
        writer.write_bytes(ANN_FILE, data)
        writer.write_table(pa.Table.from_pylist([summary], schema=EMBEDDING_ANN_SCHEMA))


def read_ann_bytes(store: Warehouse, key: str, needed_by: str = "navigator") -> bytes:
    require(store, EMBEDDING_ANN.name, key, needed_by)
    return store.read_file(EMBEDDING_ANN.name, key, ANN_FILE)


def read_ann_summary(store: Warehouse, key: str) -> dict:
    return store.read_table(EMBEDDING_ANN.name, key).to_pylist()[0]


def ann_partitions(store: Warehouse) -> list[str]:
    return store.partitions(EMBEDDING_ANN.name)
