"""Reads and writes of the patching family, only through the storage layer (the Warehouse).

Files (see ``contract.py``)::

    <root>/entropy_model/model.safetensors    weights + config (format sphere_blt_entropy_model_v1)
    <root>/entropy_model/heldout.safetensors  held-out token entropies
    <root>/entropy_model/calibration.safetensors  θ-calibration sample (windows of every shard)
    <root>/entropy_model/part-0.parquet       one summary row
    <root>/blt_patches/shard=<k>/part-0.parquet
    <root>/patch_embeddings/shard=<k>/{embeddings.safetensors, blt_v3.safetensors, part-0.parquet}
    <root>/patch_forward_cache/shard=<k>/{part-0.parquet, settings.json}   (not an asset)

``model.safetensors`` is serialized by the warehouse's one safetensors writer
(:func:`sphere_resources.store.canonical_safetensors`) and read back by its reader
(:meth:`sphere_resources.store.Warehouse.read_file`, verified, then
:func:`sphere_resources.integrity.parse_safetensors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sphere_assets.core.lazy import lazy_module
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.patching.contract import (
    BLT_PATCHES,
    BLT_PATCHES_SCHEMA,
    ENTROPY_MODEL,
    ENTROPY_MODEL_SCHEMA,
    PATCH_EMBEDDINGS,
    PATCH_EMBEDDINGS_SCHEMA,
    PATCH_FORWARD_CACHE,
    PATCH_FORWARD_CACHE_SCHEMA,
)
from sphere_resources.contracts import ContractError
from sphere_resources.integrity import parse_safetensors
from sphere_resources.store import canonical_safetensors
from sphere_resources.warehouse import Warehouse

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
em = lazy_module("sphere_assets.lib.text.entropy_model")
pt = lazy_module("sphere_assets.lib.text.patcher")
rt = lazy_module("sphere_assets.lib.text.torch_runtime")

MODEL_FILE = "model.safetensors"
HELDOUT_STEM = "heldout"
CALIBRATION_STEM = "calibration"
EMBEDDINGS_STEM = "embeddings"
BLT_V3_STEM = "blt_v3"
ROWS_PER_WRITE = 200_000  # patches buffered before a Parquet row group is written
CACHE_BYTES_PER_WRITE = 32 * 1024 * 1024  # forward-cache bytes buffered per row group
CACHE_SETTINGS = "settings.json"

# ---------------------------------------------------------------------------------------------
# raw_articles (upstream)
# ---------------------------------------------------------------------------------------------


def iter_shard_articles(
    store: Warehouse, key: str, batch_size: int = 64
) -> Iterator[tuple[str, bytes]]:
    """(article_id, utf8 bytes) of raw_articles/shard=key in row order."""
    for batch in store.iter_batches(RAW_ARTICLES.name, key, batch_size, ["article_id", "text"]):
        for article_id, text in zip(
            batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
        ):
            yield article_id, text.encode("utf-8")


def iter_corpus(store: Warehouse) -> Iterator[tuple[str, bytes]]:
    """(article_id, utf8 bytes) of every raw_articles shard on disk, shard by shard."""
    keys = store.partitions(RAW_ARTICLES.name)
    if not keys:
        raise ContractError(RAW_ARTICLES.name, None, "<partitions>", "no shards materialized yet")
    for key in keys:
        yield from iter_shard_articles(store, key, 256)


def read_raw_texts(store: Warehouse, key: str) -> pa.Table:
    """raw_articles/shard=key, columns article_id and text."""
    return store.read_table(RAW_ARTICLES.name, key, ["article_id", "text"])


def shard_bytes(store: Warehouse, asset: str, column: str, keys: list[str]) -> int:
    """Article bytes in shards ``keys`` of ``asset``: the sum of its byte-count ``column``
    (raw_articles ``n_bytes``, blt_patches ``byte_len``)."""
    return sum(
        int(pc.sum(store.read_table(asset, key, [column]).column(0)).as_py() or 0) for key in keys
    )


# ---------------------------------------------------------------------------------------------
# entropy_model
# ---------------------------------------------------------------------------------------------


def model_path(store: Warehouse):
    return store.partition_dir(ENTROPY_MODEL.name, None) / MODEL_FILE


def model_file_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The bytes of ``model.safetensors`` (canonical: the same tensors + metadata, the same
    bytes)."""
    return canonical_safetensors(arrays, metadata)


def entropy_model_row(report, config, sha: str, sample, device: str) -> pa.Table:
    """The one summary row of entropy_model (contract schema)."""
    row = {
        "model_file": MODEL_FILE,
        "model_sha256": sha,
        "config_json": config.to_json(),
        "num_parameters": report.num_parameters,
        "steps": report.steps,
        "final_train_loss": report.final_train_loss,
        "heldout_bits_per_byte": report.heldout_bits_per_byte,
        "unigram_bits_per_byte": report.unigram_bits_per_byte,
        "heldout_unigram_entropy_bits": report.heldout_unigram_entropy_bits,
        "train_bytes": report.train_bytes,
        "heldout_bytes": report.heldout_bytes,
        "train_articles": len(sample.train_article_ids),
        "heldout_articles": len(sample.heldout_segments),
        "device": device,
    }
    return pa.Table.from_pylist([row], schema=ENTROPY_MODEL_SCHEMA)


def write_entropy_model(
    store: Warehouse,
    payload: bytes,
    sha: str,
    heldout: list[np.ndarray],
    row: pa.Table,
    calibration: tuple[list[np.ndarray], list[int], Mapping[str, object]],
) -> None:
    """Replace the entropy_model partition: model file, held-out entropies, the θ-calibration
    sample (segments, the shard of each, its statistics), summary row."""
    segments, shards, stats = calibration
    with store.partition_writer(ENTROPY_MODEL.name, None) as writer:
        writer.write_tensors(
            CALIBRATION_STEM,
            {
                "entropies": np.concatenate(segments).astype(np.float32),
                "lengths": np.array([len(h) for h in segments], dtype=np.int64),
                "segment_shard": np.array(shards, dtype=np.int32),
            },
            {
                "model_sha256": sha,
                "units": "nats",
                "layout": "H_s..H_e per byte window [s, e) (lib.text.calibration_sample)",
                **{k: str(v) for k, v in stats.items()},
            },
        )
        writer.write_bytes(MODEL_FILE, payload)
        writer.write_tensors(
            HELDOUT_STEM,
            {
                "entropies": np.concatenate(heldout).astype(np.float32),
                "lengths": np.array([len(h) for h in heldout], dtype=np.int64),
            },
            {"model_sha256": sha, "units": "nats", "layout": "[BOS]+bytes per segment"},
        )
        writer.write_table(row)


def load_model(store: Warehouse, device: str = "cpu"):
    """The trained entropy model (rebuilt from its file), its metadata and the file's sha256."""
    path = model_path(store)
    if not store.has_file(ENTROPY_MODEL.name, None, MODEL_FILE):
        raise ContractError(
            ENTROPY_MODEL.name,
            None,
            MODEL_FILE,
            f"no model at {path} (materialize entropy_model first)",
        )
    data = store.read_file(ENTROPY_MODEL.name, None, MODEL_FILE)  # verified against the manifest
    try:
        arrays, metadata = parse_safetensors(data)
        model, metadata = em.model_from_file_tensors(arrays, metadata, rt.resolve_device(device))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ContractError(ENTROPY_MODEL.name, None, MODEL_FILE, f"{path}: {exc}") from exc
    return model, metadata, hashlib.sha256(data).hexdigest()


def read_model_row(store: Warehouse) -> dict:
    return store.read_table(ENTROPY_MODEL.name, None).to_pylist()[0]


def load_calibration_segments(store: Warehouse) -> tuple[list[np.ndarray], dict[str, str]]:
    """The token-entropy segments blt_patches calibrates θ on (windows from every shard) and
    the sample's statistics (articles, shards covered, bytes)."""
    if not store.has_file(ENTROPY_MODEL.name, None, f"{CALIBRATION_STEM}.safetensors"):
        raise ContractError(
            ENTROPY_MODEL.name,
            None,
            f"{CALIBRATION_STEM}.safetensors",
            "no θ-calibration sample (written by entropy_model since issue 19): re-materialize "
            "it (dagster asset materialize -m sphere_assets.definitions --select entropy_model)",
        )
    arrays, metadata = store.read_tensors(ENTROPY_MODEL.name, None, CALIBRATION_STEM)
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    if bounds[-1] != arrays["entropies"].size:
        raise ContractError(
            ENTROPY_MODEL.name,
            None,
            f"{CALIBRATION_STEM}.lengths",
            "segment lengths do not sum to entropies",
        )
    segments = [arrays["entropies"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return segments, metadata


def load_heldout_segments(store: Warehouse) -> list[np.ndarray]:
    """The held-out token entropies of entropy_model, one array per segment."""
    arrays, _ = store.read_tensors(ENTROPY_MODEL.name, None, HELDOUT_STEM)
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    if bounds[-1] != arrays["entropies"].size:
        raise ContractError(
            ENTROPY_MODEL.name,
            None,
            f"{HELDOUT_STEM}.lengths",
            "segment lengths do not sum to entropies",
        )
    return [arrays["entropies"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ---------------------------------------------------------------------------------------------
# blt_patches
# ---------------------------------------------------------------------------------------------


def patch_rows(article_id: str, data: bytes, res: pt.ArticlePatches) -> pa.Table:
    """Contract rows of one article; the ``patch`` column shares the article's bytes buffer."""
    n = res.num_patches
    offsets = np.append(res.byte_start, len(data)).astype(np.int32)
    patch_col = pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pa.table(
        {
            "article_id": pa.array([article_id] * n, pa.string()),
            "patch_index": pa.array(np.arange(n, dtype=np.int32)),
            "byte_start": pa.array(res.byte_start.astype(np.int64)),
            "byte_len": pa.array(res.byte_len.astype(np.int32)),
            "patch": patch_col,
            "text": pa.array(pt.patch_texts(data, res.byte_start, res.byte_len), pa.string()),
            "mean_entropy": pa.array(res.mean_entropy),
            "max_entropy": pa.array(res.max_entropy),
            "first_entropy": pa.array(res.first_entropy),
        },
        schema=BLT_PATCHES_SCHEMA,
    )


def write_patches_shard(
    store: Warehouse,
    key: str,
    tables: Iterator,
    cache_settings: Mapping[str, object] | None = None,
) -> None:
    """Stream the per-article row tables into blt_patches/shard=key: a Parquet row group each
    time ``ROWS_PER_WRITE`` rows are buffered, the rest at the end (an empty table when there
    are no rows). An error raised by ``tables`` leaves the old partition in place.

    With ``cache_settings``, ``tables`` yields ``(rows, cache_row)`` pairs and the cache rows
    (:func:`forward_cache_row`, None for an article without patches) are streamed into
    patch_forward_cache/shard=key beside ``settings.json``, written in the same step."""
    pending: list[pa.Table] = []
    pending_rows = total_rows = 0
    cache_pending: list[dict] = []
    cache_bytes = 0
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(store.partition_writer(BLT_PATCHES.name, key))
        out = stack.enter_context(writer.table_stream())
        cache_out = None
        if cache_settings is not None:
            cache_writer = stack.enter_context(
                store.partition_writer(PATCH_FORWARD_CACHE.name, key)
            )
            cache_writer.write_bytes(
                CACHE_SETTINGS, json.dumps(dict(cache_settings), sort_keys=True).encode()
            )
            cache_out = stack.enter_context(cache_writer.table_stream())
        for item in tables:
            table, cache_row = item if cache_out is not None else (item, None)
            pending.append(table)
            pending_rows += table.num_rows
            total_rows += table.num_rows
            if pending_rows >= ROWS_PER_WRITE:
                out.write(pa.concat_tables(pending))
                pending, pending_rows = [], 0
            if cache_row is not None:
                cache_pending.append(cache_row)
                cache_bytes += cache_row["n_bytes"] + len(cache_row["embeddings"])
                if cache_bytes >= CACHE_BYTES_PER_WRITE:
                    cache_out.write(_cache_table(cache_pending))
                    cache_pending, cache_bytes = [], 0
        if pending or total_rows == 0:
            out.write(pa.concat_tables(pending) if pending else BLT_PATCHES_SCHEMA.empty_table())
        if cache_out is not None and (cache_pending or total_rows == 0):
            cache_out.write(_cache_table(cache_pending))


# ---------------------------------------------------------------------------------------------
# patch_forward_cache (blt_patches' model pass, kept for patch_embeddings)
# ---------------------------------------------------------------------------------------------


def forward_pass_settings(
    model_sha: str, threads: int | None, chunk_size: int, device: str, dim: int
) -> dict:
    """What a patch_forward_cache is computed with (its settings.json); patch_embeddings uses a
    cache only when its own settings give the same dict (its own model pass would then give
    the same floats)."""
    return {
        "format": "sphere_patch_forward_cache_v1",
        "model_sha256": model_sha,
        "torch_threads": threads or 1,
        "chunk_size": chunk_size,
        "device": device,
        "embed_dim": dim,
    }


def forward_cache_row(article_id: str, data: bytes, res) -> dict | None:
    """The cache row of one article from a ``shared_pass.SharedPass`` (None without patches:
    such an article has no blt_patches rows either)."""
    vec = res.vectors
    if res.patches.num_patches == 0:
        return None
    return {
        "article_id": article_id,
        "sha256": hashlib.sha256(data).digest(),
        "n_bytes": len(data),
        "byte_len": res.patches.byte_len.astype("<i4").tobytes(),
        "embeddings": np.ascontiguousarray(vec.embeddings, dtype="<f4").tobytes(),
        "prominence": vec.prominence.astype("<f4").tobytes(),
        "patch_entropy": vec.patch_entropy.astype("<f4").tobytes(),
        "byte_entropy": vec.byte_entropy.astype("<f4").tobytes(),
    }


def _cache_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PATCH_FORWARD_CACHE_SCHEMA)


def forward_cache_settings(store: Warehouse, key: str) -> dict | None:
    """The settings of patch_forward_cache/shard=key (None when there is no cache)."""
    if not store.has_file(PATCH_FORWARD_CACHE.name, key, CACHE_SETTINGS):
        return None
    return json.loads(store.read_file(PATCH_FORWARD_CACHE.name, key, CACHE_SETTINGS))


def iter_forward_cache(store: Warehouse, key: str, dim: int) -> Iterator[tuple[str, bytes, dict]]:
    """(article_id, sha256, arrays) per cached article of shard ``key``, in row order; arrays:
    byte_len int32 [P], embeddings float32 [P, dim], prominence, patch_entropy float32 [P],
    byte_entropy float32 [n_bytes]."""
    for batch in store.iter_batches(PATCH_FORWARD_CACHE.name, key, 16):
        cols = batch.to_pydict()
        for i, article_id in enumerate(cols["article_id"]):
            arrays = {
                "byte_len": np.frombuffer(cols["byte_len"][i], dtype="<i4"),
                "embeddings": np.frombuffer(cols["embeddings"][i], dtype="<f4").reshape(-1, dim),
                "prominence": np.frombuffer(cols["prominence"][i], dtype="<f4"),
                "patch_entropy": np.frombuffer(cols["patch_entropy"][i], dtype="<f4"),
                "byte_entropy": np.frombuffer(cols["byte_entropy"][i], dtype="<f4"),
            }
            yield article_id, cols["sha256"][i], arrays


def remove_forward_cache(store: Warehouse, key: str) -> bool:
    """Delete patch_forward_cache/shard=key (whether there was one)."""
    return store.remove_partition(PATCH_FORWARD_CACHE.name, key)


def read_patches_for_reassembly(store: Warehouse, key: str) -> pa.Table:
    return store.read_table(
        BLT_PATCHES.name, key, ["article_id", "patch_index", "byte_start", "byte_len", "patch"]
    )


def iter_article_patches(
    store: Warehouse, key: str, with_text: bool = False
) -> Iterator[tuple[str, bytes, np.ndarray, np.ndarray, list[str] | None]]:
    """(article_id, bytes, byte_start, byte_len, texts or None) per article of
    blt_patches/shard=key; the article's bytes are its patches concatenated."""
    columns = ["article_id", "byte_start", "byte_len", "patch"] + (["text"] if with_text else [])
    table = store.read_table(BLT_PATCHES.name, key, columns)
    ids = table.column("article_id").to_numpy(zero_copy_only=False)
    if not ids.size:
        return
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    bounds = np.concatenate([[0], change, [ids.size]])
    starts = table.column("byte_start").to_numpy()
    lens = table.column("byte_len").to_numpy()
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        part = table.slice(s, e - s)
        data = b"".join(part.column("patch").to_pylist())
        texts = part.column("text").to_pylist() if with_text else None
        yield str(ids[s]), data, starts[s:e], lens[s:e], texts


# ---------------------------------------------------------------------------------------------
# patch_embeddings
# ---------------------------------------------------------------------------------------------


def write_embeddings_shard(
    store: Warehouse,
    key: str,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    v3: tuple[Mapping[str, np.ndarray], Mapping[str, str]],
    side: Mapping[str, object],
) -> None:
    """Replace patch_embeddings/shard=key: embeddings.safetensors (``tensors`` + ``metadata``),
    blt_v3.safetensors (``v3`` arrays + metadata) and the Parquet side table (``side``
    columns: article_id, patch_index, article_index, prominence, patch_entropy)."""
    v3_arrays, v3_meta = v3
    with store.partition_writer(PATCH_EMBEDDINGS.name, key) as writer:
        writer.write_tensors(EMBEDDINGS_STEM, tensors, metadata)
        writer.write_tensors(BLT_V3_STEM, v3_arrays, v3_meta)
        writer.write_table(
            pa.table(
                {
                    "article_id": pa.array(side["article_id"], pa.string()),
                    "patch_index": pa.array(side["patch_index"]),
                    "article_index": pa.array(side["article_index"]),
                    "prominence": pa.array(side["prominence"]),
                    "patch_entropy": pa.array(side["patch_entropy"]),
                },
                schema=PATCH_EMBEDDINGS_SCHEMA,
            )
        )


def read_embeddings_tensors(store: Warehouse, key: str):
    """(embeddings arrays, blt_v3 arrays, blt_v3 metadata) of patch_embeddings/shard=key."""
    arrays, _ = store.read_tensors(PATCH_EMBEDDINGS.name, key, EMBEDDINGS_STEM)
    v3, v3_meta = store.read_tensors(PATCH_EMBEDDINGS.name, key, BLT_V3_STEM)
    return arrays, v3, v3_meta


def read_embeddings_keys(store: Warehouse, key: str) -> tuple[pa.Table, pa.Table]:
    """(blt_patches article_id/patch_index/byte_len, patch_embeddings side-table keys) of one
    shard."""
    patches = store.read_table(BLT_PATCHES.name, key, ["article_id", "patch_index", "byte_len"])
    side = store.read_table(PATCH_EMBEDDINGS.name, key, ["article_id", "patch_index"])
    return patches, side
