"""Stand-in upstream partitions for testing and benchmarking the Postgres publish.

The real ``blt_patches`` need a trained entropy model (a minute of CPU); the publish only needs
rows of the right shape. For each article of a ``raw_articles`` shard this writes
``blt_patches`` rows cut by ``synthetic_patches.content_patches`` (whitespace-delimited runs of
at most 8 bytes), with

* ``byte_start`` = running sum of the patch lengths, so an article's patches in ``patch_index``
  order concatenate to its UTF-8 bytes (the real asset's invariant);
* ``text`` = the patch decoded as UTF-8 with U+FFFD for a character split across patches;
* entropies a deterministic function of the patch bytes (``mean = len/8``, ``max = mean + 1``,
  ``first = first byte / 64``) — values, not a model.

and ``patch_embeddings`` rows (one per patch, same order) with a seeded random D-vector per
patch, prominence = its L2 norm, in the layout of the real asset (Parquet keys + prominence,
``embeddings.safetensors`` with embeddings/prominence/article_index/patch_index).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.lib.sketch.synthetic_patches import content_patches
from sphere_assets.patching.contract import BLT_PATCHES, BLT_PATCHES_SCHEMA, PATCH_EMBEDDINGS
from sphere_assets.placements.contract import SHELL_PLACEMENTS


def patch_rows(article_ids: list[str], texts: list[str]) -> pa.Table:
    ids, index, start, length, patches = [], [], [], [], []
    for article_id, text in zip(article_ids, texts, strict=True):
        pos = 0
        for i, piece in enumerate(content_patches(text.encode("utf-8"))):
            ids.append(article_id)
            index.append(i)
            start.append(pos)
            length.append(len(piece))
            patches.append(piece)
            pos += len(piece)
    lengths = np.asarray(length, dtype=np.int32)
    mean = (lengths / 8.0).astype(np.float32)
    first = np.asarray([p[0] / 64.0 if p else 0.0 for p in patches], dtype=np.float32)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(index, pa.int32()),
            pa.array(start, pa.int64()),
            pa.array(lengths, pa.int32()),
            pa.array(patches, pa.binary()),
            pa.array([p.decode("utf-8", "replace") for p in patches], pa.string()),
            pa.array(mean),
            pa.array(mean + np.float32(1.0)),
            pa.array(first),
        ],
        schema=BLT_PATCHES_SCHEMA,
    )


def write_synthetic_patches(store, shard: str) -> int:
    """blt_patches for ``shard`` from the stored raw_articles shard; returns the row count."""
    articles = store.read_table(RAW_ARTICLES.name, shard, columns=["article_id", "text"])
    table = patch_rows(
        articles.column("article_id").to_pylist(), articles.column("text").to_pylist()
    )
    with store.partition_writer(BLT_PATCHES.name, shard) as writer:
        writer.write_table(table)
    return table.num_rows


def write_synthetic_embeddings(store, shard: str, dim: int = 16, seed: int = 0) -> int:
    """patch_embeddings for ``shard`` from its stored blt_patches: one random unit-ish vector per
    patch (numpy ``default_rng([seed, shard])``) scaled by ``1 + byte_len``, prominence = its
    L2 norm, article_index = the article's rank of first appearance in the shard."""
    patches = store.read_table(BLT_PATCHES.name, shard, columns=["article_id", "patch_index"])
    ids = patches.column("article_id").to_pylist()
    first: dict[str, int] = {}
    article_index = np.asarray([first.setdefault(a, len(first)) for a in ids], dtype=np.int32)
    patch_index = patches.column("patch_index").to_numpy().astype(np.int32)
    rng = np.random.default_rng([seed, int(shard)])
    vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
    vectors *= (1.0 + patch_index % 7)[:, None].astype(np.float32)
    prominence = np.linalg.norm(vectors, axis=1).astype(np.float32)
    table = pa.table(
        {
            "article_id": pa.array(ids, pa.string()),
            "patch_index": pa.array(patch_index),
            "article_index": pa.array(article_index),
            "prominence": pa.array(prominence),
            "patch_entropy": pa.array(np.zeros(len(ids), np.float32)),
        }
    )
    with store.partition_writer(PATCH_EMBEDDINGS.name, shard) as writer:
        writer.write_table(table)
        writer.write_tensors(
            "embeddings",
            {
                "embeddings": vectors,
                "prominence": prominence,
                "article_index": article_index,
                "patch_index": patch_index,
            },
            {"format": "synthetic"},
        )
    return len(ids)


def write_synthetic_placements(store, shard: str, n_shells: int = 16, seed: int = 0) -> int:
    """shell_placements for ``shard`` (one row per stored blt_patches row) in whatever schema the
    registered contract has: keys from blt_patches, ``shell`` uniform in [0, n_shells), ``r`` the
    shell's sqrt-spaced radius, uniform angles with x, y, z = r·(sinθcosφ, sinθsinφ, cosθ);
    any other column is zeros of its type."""
    schema = SHELL_PLACEMENTS.schema
    keys = store.read_table(BLT_PATCHES.name, shard, columns=["article_id", "patch_index"])
    n = keys.num_rows
    rng = np.random.default_rng([seed, int(shard), 6])
    shell = rng.integers(0, n_shells, size=n)
    r = np.sqrt((shell + 1) / n_shells)
    theta = np.arccos(rng.uniform(-1.0, 1.0, size=n))
    phi = rng.uniform(0.0, 2 * np.pi, size=n)
    values = {
        "article_id": keys.column("article_id"),
        "patch_index": keys.column("patch_index"),
        "shell": shell,
        "r": r,
        "theta": theta,
        "phi": phi,
        "x": r * np.sin(theta) * np.cos(phi),
        "y": r * np.sin(theta) * np.sin(phi),
        "z": r * np.cos(theta),
        "prominence": rng.gamma(2.0, 1.0, size=n),
        "promotions": rng.integers(0, 3, size=n),
        "lateral_moves": rng.integers(0, 2, size=n),
    }
    columns = []
    for f in schema:
        if f.name in values:
            columns.append(pa.array(values[f.name]).cast(f.type))
        elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            columns.append(pa.array([""] * n, f.type))
        else:
            columns.append(pa.array(np.zeros(n)).cast(f.type))
    with store.partition_writer(SHELL_PLACEMENTS.name, shard) as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return n
