"""Upstream partitions for the navigate tests, written through the warehouse's own contract-
validated writers: shell_placements rows (directions from a PCA-3 map of the embeddings, the
way the placements family starts), patch_embeddings (clustered vectors), blt_patches text and
raw_articles titles."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.lib.sphere import cones
from sphere_assets.navigate import defs
from sphere_assets.patching.contract import BLT_PATCHES_SCHEMA, PATCH_EMBEDDINGS_SCHEMA
from sphere_assets.placements.contract import SHELL_PLACEMENTS_SCHEMA
from sphere_resources.warehouse import WarehouseResource

N_SHELLS = 32
DIM = 16


def pca3(emb: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    """The test map: unit rows projected on 3 fixed components, normalised (float64)."""
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return cones.unit_vectors((u - mean) @ comps)


def fit_pca3(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean = u.mean(axis=0)
    _, _, vt = np.linalg.svd(u - mean, full_matrices=False)
    return mean, vt[:3].T


def write_placements(
    store, key: str, ids: list[str], pidx: np.ndarray, unit, shell, map_unit=None
) -> None:
    """shell_placements rows: placed directions ``unit``, map directions ``map_unit`` (default
    the same), every other column of the contract zeros."""
    n = len(ids)
    r = 1.0 + shell.astype(np.float32) / N_SHELLS
    theta, phi = cones.angles_of(unit)
    map_theta, map_phi = cones.angles_of(unit if map_unit is None else map_unit)
    map_phi = np.minimum(map_phi, np.nextafter(2 * np.pi, 0))
    xyz = (unit * r[:, None]).astype(np.float32)
    phi = np.minimum(phi, np.nextafter(2 * np.pi, 0))
    known = {
        "article_id": pa.array(ids, pa.string()),
        "patch_index": pidx,
        "shell": shell,
        "r": r,
        "theta": theta,
        "phi": phi,
        "map_theta": map_theta,
        "map_phi": map_phi,
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "prominence": np.ones(n),
    }
    # every other column of the placements contract (it grows): zeros of its type
    table = pa.table(
        {
            f.name: known[f.name]
            if isinstance(known.get(f.name), pa.Array)
            else pa.array(
                np.asarray(known.get(f.name, np.zeros(n))).astype(f.type.to_pandas_dtype())
            )
            for f in SHELL_PLACEMENTS_SCHEMA
        },
        schema=SHELL_PLACEMENTS_SCHEMA,
    )
    with store.partition_writer("shell_placements", key) as w:
        w.write_table(table)


def write_embeddings(store, key: str, ids: list[str], pidx: np.ndarray, emb: np.ndarray) -> None:
    uniq = {a: i for i, a in enumerate(dict.fromkeys(ids))}
    art = np.array([uniq[a] for a in ids], np.int32)
    prom = np.linalg.norm(emb, axis=1).astype(np.float32)
    with store.partition_writer("patch_embeddings", key) as w:
        w.write_tensors(
            "embeddings",
            {
                "embeddings": emb.astype(np.float32),
                "prominence": prom,
                "article_index": art,
                "patch_index": pidx.astype(np.int32),
            },
            {"embedder": "synthetic", "model_sha256": "synthetic"},
        )
        w.write_table(
            pa.table(
                {
                    "article_id": pa.array(ids, pa.string()),
                    "patch_index": pa.array(pidx.astype(np.int32)),
                    "article_index": pa.array(art),
                    "prominence": pa.array(prom),
                    "patch_entropy": pa.array(np.zeros(len(ids), np.float32)),
                },
                schema=PATCH_EMBEDDINGS_SCHEMA,
            )
        )


def write_texts(store, key: str, ids: list[str], pidx: np.ndarray) -> None:
    texts = [f"{a}/{p}" for a, p in zip(ids, pidx.tolist(), strict=True)]
    n = len(ids)
    lens = np.array([len(t.encode()) for t in texts], np.int32)
    zeros = np.zeros(n, np.float32)
    with store.partition_writer("blt_patches", key) as w:
        w.write_table(
            pa.table(
                {
                    "article_id": pa.array(ids, pa.string()),
                    "patch_index": pa.array(pidx.astype(np.int32)),
                    "byte_start": pa.array(np.zeros(n, np.int64)),
                    "byte_len": pa.array(lens),
                    "patch": pa.array([t.encode() for t in texts], pa.binary()),
                    "text": pa.array(texts, pa.string()),
                    "mean_entropy": pa.array(zeros),
                    "max_entropy": pa.array(zeros),
                    "first_entropy": pa.array(zeros),
                },
                schema=BLT_PATCHES_SCHEMA,
            )
        )
    arts = list(dict.fromkeys(ids))
    articles = pa.table(
        {
            "article_id": pa.array(arts, pa.string()),
            "title": pa.array([f"Title of {a}" for a in arts], pa.string()),
            "text": pa.array(["..."] * len(arts), pa.string()),
            "source": pa.array(["test"] * len(arts), pa.string()),
            "n_bytes": pa.array([3] * len(arts), pa.int64()),
            "url": pa.array([None] * len(arts), pa.string()),
        },
        schema=RAW_ARTICLES.schema,
    )
    with store.partition_writer(RAW_ARTICLES.name, key) as w:
        w.write_table(articles)


def synthetic_shard(key: str, n_articles: int, seed: int):
    """(ids, patch_index, embeddings, shells) of one shard: clustered vectors, some articles."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(20, 120, n_articles)
    ids = [f"art-{key}-{a}" for a in range(n_articles) for _ in range(lens[a])]
    pidx = np.concatenate([np.arange(m) for m in lens])
    centres = np.random.default_rng(99).standard_normal((8, DIM))
    emb = centres[rng.integers(0, 8, len(ids))] + 0.4 * rng.standard_normal((len(ids), DIM))
    shell = rng.integers(0, N_SHELLS, len(ids))
    return ids, pidx, emb.astype(np.float32), shell


@pytest.fixture(scope="package")
def corpus(tmp_path_factory):
    """Two shards written and both navigate assets materialized (checks passing): (resources,
    shard data, the PCA-3 map)."""
    root = tmp_path_factory.mktemp("navigate") / "warehouse"
    res = {"warehouse": WarehouseResource(root=str(root))}
    store = res["warehouse"].store()
    shards = {k: synthetic_shard(k, 12, seed) for k, seed in (("0", 1), ("1", 2))}
    mean, comps = fit_pca3(np.concatenate([s[2] for s in shards.values()]))
    for key, (ids, pidx, emb, shell) in shards.items():
        write_embeddings(store, key, ids, pidx, emb)
        mapped = pca3(emb, mean, comps)
        # the placed directions: the map's, moved a little (as the water-filling does)
        moved = mapped + 0.05 * np.random.default_rng(int(key)).standard_normal(mapped.shape)
        write_placements(store, key, ids, pidx, cones.unit_vectors(moved), shell, mapped)
        write_texts(store, key, ids, pidx)
    results = {}
    for key in shards:
        result = dg.materialize(
            [*defs.ASSETS, *defs.CHECKS],
            partition_key=key,
            resources=res,
            run_config={"ops": {"sphere_index": {"config": {"band_width": 8}}}},
        )
        assert result.success
        for ev in result.get_asset_check_evaluations():
            assert ev.passed, (key, ev.check_name, ev.metadata)
        results[key] = result
    return res, shards, (mean, comps), results
