"""patch_embeddings (shard): one vector per blt_patches row.

The mean of the entropy model's pre-norm hidden states over the patch's bytes and its L2 norm
(prominence) (``sphere_assets.lib.text.patch_embeddings``), a Parquet side table with the keys
for DuckDB, and a blt-burn v3 export of the shard.

When blt_patches ran in the same run it has already pooled the vectors in its own model pass
(``patch_forward_cache``, see ``blt_patches.py``): this step then takes them from there (after
checking the cache's model and torch settings, and per article its id, text sha256 and patch
lengths against blt_patches), writes the same files, and removes the cache; otherwise it runs
the entropy model itself. Byte-identical outputs either way.
"""

import collections
import hashlib
import itertools
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
from pydantic import Field

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.patching import io, report
from sphere_assets.patching.blt_patches import blt_patches
from sphere_assets.patching.contract import BLT_PATCHES, PATCH_EMBEDDINGS
from sphere_assets.patching.entropy_model import entropy_model
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse, WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
mw = lazy_module("sphere_assets.lib.text.model_workers")
pe = lazy_module("sphere_assets.lib.text.patch_embeddings")
rt = lazy_module("sphere_assets.lib.text.torch_runtime")


class PatchEmbeddingsConfig(dg.Config):
    embedder: str = Field(
        "entropy_model",
        description="entropy_model (mean pre-norm hidden state) | minilm (all-MiniLM-L6-v2 of the "
        "patch text; needs the 'minilm' extra). prominence always comes from the entropy model.",
    )
    device: str = Field("cpu", description="torch device: cpu | cuda | cuda:N | auto")
    num_threads: int | None = Field(
        None, description="torch threads per worker process (None = the model's)"
    )
    workers: int = Field(
        0,
        description="worker processes, each with its own model copy and whole articles (0 = "
        "one per available core when the run's shards hold >= 1.5 MB, else 1; 1 = this process)",
    )
    chunk_size: int = Field(0, description="tokens per inference chunk (0 = model default)")


def _concat(parts: list[np.ndarray], dtype, width: int | None = None) -> np.ndarray:
    """``parts`` concatenated as ``dtype``; empty ``[0]`` (or ``[0, width]``) without parts."""
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.zeros((0, width) if width else 0, dtype=dtype)


class StaleCache(Exception):
    """The shard's patch_forward_cache does not belong to its blt_patches rows."""


def cached_vectors(store: Warehouse, key: str, dim: int, articles: Iterator) -> Iterator:
    """PatchVectors of each article of ``articles`` (blt_patches order) from
    patch_forward_cache/shard=key; StaleCache at the first article the cache does not match."""
    missing = object()
    rows = io.iter_forward_cache(store, key, dim)
    for article, row in itertools.zip_longest(articles, rows, fillvalue=missing):
        if article is missing or row is missing:
            raise StaleCache("the cache and blt_patches hold different numbers of articles")
        article_id, data, _, lens, _ = article
        cached_id, sha, arrays = row
        if cached_id != article_id or sha != hashlib.sha256(data).digest():
            raise StaleCache(f"article '{article_id}': the cache holds '{cached_id}' or other text")
        if not np.array_equal(arrays["byte_len"], lens):
            raise StaleCache(f"article '{article_id}': patch lengths differ from blt_patches")
        yield pe.PatchVectors(
            arrays["embeddings"],
            arrays["prominence"],
            arrays["patch_entropy"],
            arrays["byte_entropy"],
        )


def embed_shard(
    store: Warehouse,
    key: str,
    model,
    model_sha: str,
    config: PatchEmbeddingsConfig,
    minilm,
    run: "mw.ArticleRun",
    cached: bool = False,
) -> dict:
    """Pool every patch of blt_patches/shard=key (``cached``: take the vectors from
    patch_forward_cache/shard=key, StaleCache when they do not match) and write
    patch_embeddings/shard=key; the shard's summary (patches, articles, bytes, prominence,
    embed_dim)."""
    embeddings, prominence, article_index, patch_index = [], [], [], []
    patch_entropy, byte_entropy, lengths, raw_bytes, ids = [], [], [], [], []
    # articles handed to pool_articles, not yet back: results arrive in this order
    in_flight: collections.deque = collections.deque()

    def articles() -> Iterator[tuple[str, bytes, np.ndarray, np.ndarray]]:
        for article in io.iter_article_patches(store, key, with_text=minilm is not None):
            in_flight.append(article)
            yield article if cached else article[:4]

    if cached:
        vectors = cached_vectors(store, key, model.config.dim, articles())
    else:
        vectors = mw.in_partition(
            PATCH_EMBEDDINGS.name,
            key,
            pe.pool_articles(
                model, articles(), config.chunk_size or None, run.pool, run.batch_bytes
            ),
        )
    for a, vec in enumerate(vectors):
        article_id, data, starts, lens, texts = in_flight.popleft()
        run.progress.advance(1, len(data))
        embeddings.append(minilm.encode(texts) if minilm is not None else vec.embeddings)
        prominence.append(vec.prominence)
        patch_entropy.append(vec.patch_entropy)
        byte_entropy.append(vec.byte_entropy)
        article_index.append(np.full(len(starts), a, dtype=np.int32))
        patch_index.append(np.arange(len(starts), dtype=np.int32))
        lengths.append(lens.astype(np.int32))
        raw_bytes.append(data)
        ids.extend([article_id] * len(starts))
    dim = minilm.embed_dim if minilm is not None else model.config.dim

    emb = _concat(embeddings, np.float32, dim)
    prom = _concat(prominence, np.float32)
    p_ent = _concat(patch_entropy, np.float32)
    v3_arrays, v3_meta = pe.blt_v3_arrays(
        b"".join(raw_bytes),
        _concat(lengths, np.int32),
        _concat(byte_entropy, np.float32),
        emb,
        prom,
        p_ent,
    )
    art_idx = _concat(article_index, np.int32)
    p_idx = _concat(patch_index, np.int32)
    meta = {
        "model_sha256": model_sha,
        "embedder": config.embedder,
        "pooling": "mean_prenorm_hidden" if minilm is None else "minilm_l6_v2",
        "prominence": "l2_norm_of_mean_prenorm_hidden",
        "rows": "row i = patch_embeddings part-0.parquet row i = blt_patches (article_index, patch_index)",
    }
    io.write_embeddings_shard(
        store,
        key,
        {"embeddings": emb, "prominence": prom, "article_index": art_idx, "patch_index": p_idx},
        meta,
        (v3_arrays, {**v3_meta, "model_sha256": model_sha}),
        {
            "article_id": ids,
            "patch_index": p_idx,
            "article_index": art_idx,
            "prominence": prom,
            "patch_entropy": p_ent,
        },
    )
    return {
        "patches": int(prom.size),
        "articles": len(raw_bytes),
        "bytes": int(v3_arrays["bytes"].size),
        "prominence": prom,
        "embed_dim": dim,
    }


@dg.asset(
    name=PATCH_EMBEDDINGS.name,
    deps=[blt_patches, entropy_model],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="patching",
    kinds={"torch", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "patching"},
    description=(
        "One vector per blt_patches row: the mean of the entropy model's pre-norm hidden states "
        "over the patch's bytes (prominence = its L2 norm). embeddings.safetensors (embeddings "
        "[P, D], prominence, article_index, patch_index; row i = Parquet row i), a Parquet side "
        "table with the keys for DuckDB, and blt_v3.safetensors in blt-burn's blt_patches_v3 format."
    ),
)
def patch_embeddings(
    context: dg.AssetExecutionContext, config: PatchEmbeddingsConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    model, _, model_sha = io.load_model(store, config.device)
    threads = model.config.num_threads if config.num_threads is None else config.num_threads
    minilm = None
    if config.embedder == "minilm":
        minilm = pe.MiniLMEmbedder(device=str(rt.resolve_device(config.device)))
    elif config.embedder != "entropy_model":
        raise ValueError(
            f"patch_embeddings embedder must be entropy_model or minilm, got '{config.embedder}'"
        )
    keys = list(context.partition_keys)
    device = str(next(model.parameters()).device)
    expected = io.forward_pass_settings(
        model_sha, threads, config.chunk_size, device, model.config.dim
    )
    summaries: dict[str, dict] = {}
    own_pass: list[str] = []
    # the vectors blt_patches' model pass left in patch_forward_cache, where they match
    for key in keys:
        settings = io.forward_cache_settings(store, key)
        if settings != expected:
            if settings is not None:
                context.log.info(
                    f"patch_embeddings: shard {key}: forward cache made with {settings}, not "
                    f"{expected}: running the model"
                )
            own_pass.append(key)
            continue
        cache_run = mw.ArticleRun(
            None,
            1,
            0,
            mw.ProgressMeter(lambda msg: context.log.info(f"patch_embeddings: {msg}"), None),
        )
        t0 = time.perf_counter()
        try:
            summary = embed_shard(store, key, model, model_sha, config, minilm, cache_run, True)
        except StaleCache as exc:
            context.log.info(f"patch_embeddings: shard {key}: stale forward cache ({exc})")
            own_pass.append(key)
            continue
        io.remove_forward_cache(store, key)
        seconds = time.perf_counter() - t0
        summaries[key] = {
            **summary,
            "key": key,
            "seconds": seconds,
            "run": cache_run,
            "shared": True,
        }
    if own_pass:
        total_bytes = io.shard_bytes(store, BLT_PATCHES.name, "byte_len", own_pass)
        with mw.article_run(
            context.log.info, PATCH_EMBEDDINGS.name, model, config.workers, threads, total_bytes
        ) as run:
            for key in own_pass:
                t0 = time.perf_counter()
                summary = embed_shard(store, key, model, model_sha, config, minilm, run)
                io.remove_forward_cache(store, key)
                seconds = time.perf_counter() - t0
                summaries[key] = {
                    **summary,
                    "key": key,
                    "seconds": seconds,
                    "run": run,
                    "shared": False,
                }
    return partition_results(
        context,
        {
            key: shard_metadata(config, minilm, summaries[key], threads, model_sha, store)
            for key in keys
        },
    )


def shard_metadata(config, minilm, summary: dict, threads, model_sha: str, store) -> dict:
    """One shard's materialization metadata (``summary`` from :func:`embed_shard` plus its
    key, seconds and run)."""
    key, run = summary["key"], summary["run"]
    return {
        **report.patch_embeddings_metadata(
            config.embedder,
            minilm is not None,
            [summary],
            summary["seconds"],
            run,
            threads,
            model_sha,
            f"{io.BLT_V3_STEM}.safetensors",
            str(store.partition_dir(PATCH_EMBEDDINGS.name, key)),
        ),
        "forward_pass": "shared with blt_patches (patch_forward_cache)"
        if summary["shared"]
        else "own model pass",
    }


@shard_check(
    asset=patch_embeddings,
    additional_deps=[blt_patches],
    description="Per shard: embeddings and prominence are finite, prominence >= 0, shapes agree with each "
    "other and with the blt_patches row count, keys match blt_patches, and the blt-burn v3 "
    "export satisfies sum(patch_lengths) == len(bytes).",
    blocking=True,
)
def patch_embeddings_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, PATCH_EMBEDDINGS.name):
        problems, rows = shard_problems(store, key)
        results[key] = dg.AssetCheckResult(
            passed=not problems,
            metadata={
                "shards": key,
                "rows": rows,
                "problems": len(problems),
                "first_problems": "; ".join(problems[:5]) or "-",
            },
        )
    yield from partition_check_results(context, results)


def shard_problems(store, key: str) -> tuple[list[str], int]:
    """(problems, embedding rows) of one patch_embeddings shard against blt_patches."""
    problems: list[str] = []
    try:
        arrays, v3, v3_meta = io.read_embeddings_tensors(store, key)
    except (ContractError, FileNotFoundError) as exc:
        return [str(exc)], 0
    patches, side = io.read_embeddings_keys(store, key)
    emb, prom = arrays["embeddings"], arrays["prominence"]
    if emb.shape[0] != patches.num_rows or side.num_rows != patches.num_rows:
        problems.append(
            f"shard {key}: {emb.shape[0]} embeddings, {side.num_rows} side rows, "
            f"{patches.num_rows} patches"
        )
        return problems, emb.shape[0]
    if not (np.isfinite(emb).all() and np.isfinite(prom).all() and (prom >= 0).all()):
        problems.append(f"shard {key}: non-finite embeddings or bad prominence")
    if not side.equals(patches.select(["article_id", "patch_index"])):
        problems.append(f"shard {key}: side-table keys differ from blt_patches")
    if not np.array_equal(arrays["patch_index"], patches.column("patch_index").to_numpy()):
        problems.append(f"shard {key}: embeddings.patch_index differs from blt_patches")
    if int(v3["patch_lengths"].astype(np.int64).sum()) != v3["bytes"].size:
        problems.append(f"shard {key}: v3 sum(patch_lengths) != len(bytes)")
    if not np.array_equal(v3["patch_lengths"], patches.column("byte_len").to_numpy()):
        problems.append(f"shard {key}: v3 patch_lengths differ from blt_patches byte_len")
    if v3_meta.get("format") != pe.BLT_V3_FORMAT or v3_meta.get("num_patches") != str(emb.shape[0]):
        problems.append(f"shard {key}: v3 metadata {v3_meta}")
    return problems, emb.shape[0]
