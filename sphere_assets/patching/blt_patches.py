"""blt_patches (shard): BLT entropy patches of every article.

θ is calibrated by bisection to the target mean patch size on entropy_model's calibration sample
(byte windows drawn uniformly from every shard, ``lib.text.calibration_sample``; the same θ for
every shard and every partition run), then every article of the shard
is patched with BLT's rule (``sphere_assets.lib.text.patcher``), whole articles spread over
worker processes for large runs (``lib.text.model_workers``).

One model pass for blt_patches and patch_embeddings
    The entropy model's forward pass is the pipeline's dominant cost, and both assets need it:
    the patches need its entropies, the embeddings its hidden states pooled over those patches.
    When patch_embeddings is materialized in the same run (``sphere materialize-all``, a job
    over both; config ``share_forward_pass``), this step runs the model once per article
    (``lib.text.shared_pass``: patches are decided while the chunks stream, so every hidden row
    is pooled the moment it is computed) and leaves the per-patch vectors, prominence and
    entropies in ``patch_forward_cache/shard=<k>`` (not an asset; Parquet through the storage
    layer, ~60 bytes per article byte). patch_embeddings uses it when it matches (same model,
    torch threads, chunk size and device; per article the same id, text sha256 and patch
    lengths as blt_patches) and removes it; otherwise it runs the model itself, as before. The
    outputs are byte-identical either way (tests/patching/test_shared_pass.py).

    Why a cache and not one ``multi_asset`` step writing both: the two assets keep their own
    definitions, configs (``ops: blt_patches / patch_embeddings``), checks, code versions and
    per-partition metadata, and every existing reference to them (``deps=[blt_patches]`` in the
    n-gram family, ``additional_deps=[patch_embeddings]`` in placements, tests, jobs, the
    stage planner of ``materialize-all``) stays valid — a multi-asset cannot be passed as one
    asset's dependency. Either asset can still be materialized alone. The cost is a write and a
    read of the cache (~60 bytes per byte against a model pass of ~4 µs per byte).
"""

import collections
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from sphere_assets.core.checks import partition_check_results, shard_check, shard_check_spec
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.ingest.raw_articles import raw_articles
from sphere_assets.patching import io, report
from sphere_assets.patching.contract import BLT_PATCHES, PATCH_EMBEDDINGS
from sphere_assets.patching.entropy_model import entropy_model
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse, WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
mw = lazy_module("sphere_assets.lib.text.model_workers")
pt = lazy_module("sphere_assets.lib.text.patcher")
sp = lazy_module("sphere_assets.lib.text.shared_pass")

MEAN_SIZE_TOLERANCE = 0.10


class BltPatchesConfig(dg.Config):
    mode: str = Field("global", description="global (E_j > θ) | monotonic (E_j - E_{j-1} > θ)")
    max_patch_length: int = Field(128, description="split longer patches; 0 = no limit")
    target_mean_patch_bytes: float = Field(4.5, description="calibration target (BLT: 4.5)")
    threshold: float | None = Field(None, description="fixed θ (nats) instead of calibrating")
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
    share_forward_pass: bool | None = Field(
        None,
        description="also pool the patch vectors for patch_embeddings in this model pass (kept "
        "in patch_forward_cache until patch_embeddings uses them); None = when patch_embeddings "
        "is materialized in the same run",
    )

    def max_length(self) -> int | None:
        return self.max_patch_length or None


def calibrate(config: BltPatchesConfig, segments: list[np.ndarray]) -> "pt.Calibration":
    """θ for ``config`` on the calibration entropy ``segments``: the fixed ``threshold`` (with the
    mean patch size it gives) or the bisection to ``target_mean_patch_bytes``."""
    if config.threshold is not None:
        n_bytes, n_patches = pt.count_patches(
            segments, config.threshold, config.mode, config.max_length()
        )
        return pt.Calibration(
            threshold=config.threshold,
            achieved_mean_patch_bytes=n_bytes / max(n_patches, 1),
            target_mean_patch_bytes=config.target_mean_patch_bytes,
            mode=config.mode,
            max_patch_length=config.max_length(),
            calibration_bytes=n_bytes,
            calibration_patches=n_patches,
            evaluations=1,
        )
    return pt.calibrate_threshold(
        segments, config.target_mean_patch_bytes, config.mode, config.max_length()
    )


def patch_shard(
    store: Warehouse,
    key: str,
    model,
    calibration: "pt.Calibration",
    config: BltPatchesConfig,
    run: "mw.ArticleRun",
    cache_settings: dict | None = None,
) -> dict:
    """Patch every article of raw_articles/shard=key into blt_patches/shard=key; the shard's
    statistics (articles, bytes, patches, lengths, seconds, a preview of its first rows). With
    ``cache_settings`` the same model pass also pools the patch vectors into
    patch_forward_cache/shard=key for patch_embeddings (see the module docstring)."""
    stats = {"key": key, "articles": 0, "bytes": 0, "patches": 0, "preview": None}
    lengths_all: list[np.ndarray] = []
    waiting_seconds = 0.0
    # articles handed to patch_articles, not yet back: results arrive in this order
    in_flight: collections.deque[tuple[str, bytes]] = collections.deque()

    def articles() -> Iterator[tuple[str, bytes]]:
        for article in io.iter_shard_articles(store, key):
            in_flight.append(article)
            yield article

    def tables() -> Iterator[pa.Table]:
        nonlocal waiting_seconds
        args = (calibration.threshold, config.mode, config.max_length(), config.chunk_size or None)
        if cache_settings is None:
            computed = pt.patch_articles(
                model,
                articles(),
                *args,
                workers=run.pool,
                batch_bytes=run.batch_bytes,
                keep_byte_entropy=False,  # blt_patches stores per-patch entropies only
            )
        else:
            computed = sp.patch_and_pool_articles(
                model, articles(), *args, workers=run.pool, batch_bytes=run.batch_bytes
            )
        results = mw.in_partition(BLT_PATCHES.name, key, computed)
        while True:
            t_wait = time.perf_counter()
            shared = next(results, None)
            waiting_seconds += time.perf_counter() - t_wait
            if shared is None:
                return
            res = shared if cache_settings is None else shared.patches
            article_id, data = in_flight.popleft()
            try:
                pt.check_reassembly(data, res.byte_start, res.byte_len)
            except ValueError as exc:
                raise ContractError(
                    BLT_PATCHES.name, key, "patch", f"article '{article_id}': {exc}"
                ) from exc
            table = io.patch_rows(article_id, data, res)
            if stats["preview"] is None and table.num_rows:
                stats["preview"] = table.slice(0, 8)
            lengths_all.append(res.byte_len)
            stats["articles"] += 1
            stats["bytes"] += len(data)
            stats["patches"] += res.num_patches
            run.progress.advance(1, len(data))
            if cache_settings is None:
                yield table
            else:
                yield table, io.forward_cache_row(article_id, data, shared)

    t0 = time.perf_counter()
    if cache_settings is None:
        io.remove_forward_cache(store, key)  # a cache of an older version of the shard
    io.write_patches_shard(store, key, tables(), cache_settings)
    stats["seconds"] = time.perf_counter() - t0
    # in this process: time inside the entropy model + patch rule
    stats["entropy_seconds"] = waiting_seconds
    stats["lengths"] = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int64)
    return stats


def calibration_sample_metadata(sample: dict[str, str]) -> dict:
    """How representative θ's calibration sample is (entropy_model's calibration.safetensors):
    articles, shards covered, windows, bytes, share of the corpus."""
    keys = (
        "calibration_articles",
        "calibration_shards_covered",
        "calibration_shards_whole",
        "calibration_windows",
        "calibration_corpus_bytes",
        "calibration_share_of_corpus",
    )
    return {
        f"calibration_sample/{k.removeprefix('calibration_')}": float(sample[k])
        if "." in sample[k]
        else int(sample[k])
        for k in keys
        if k in sample
    }


def embeddings_in_run(context: dg.AssetExecutionContext) -> bool:
    """Whether patch_embeddings is materialized in this run (then blt_patches' model pass
    pools its vectors too)."""
    key = dg.AssetKey(PATCH_EMBEDDINGS.name)
    # the run's selection (empty or None when the whole job runs), else the job's assets
    selection = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    return key in selection


def mean_size_check(config: BltPatchesConfig, stats: list[dict]) -> dg.AssetCheckResult:
    """mean_patch_size_near_target: the mean patch size of the shards in ``stats`` (one shard
    per evaluation) within the tolerance of the target (an empty shard has no mean to miss the
    target with)."""
    n_bytes = sum(s["bytes"] for s in stats)
    n_patches = sum(s["patches"] for s in stats)
    achieved = n_bytes / n_patches if n_patches else 0.0
    target = config.target_mean_patch_bytes
    rel_error = abs(achieved - target) / target if n_patches else float("inf")
    return dg.AssetCheckResult(
        check_name="mean_patch_size_near_target",
        passed=bool(n_patches == 0 or rel_error <= MEAN_SIZE_TOLERANCE),
        metadata={
            "empty_shard": n_patches == 0,
            "mean_patch_bytes": round(achieved, 4),
            "target_mean_patch_bytes": target,
            "relative_error": round(rel_error, 4) if np.isfinite(rel_error) else -1.0,
            "tolerance": MEAN_SIZE_TOLERANCE,
        },
    )


@dg.asset(
    name=BLT_PATCHES.name,
    deps=[raw_articles, entropy_model],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="patching",
    kinds={"torch", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "patching"},
    check_specs=[
        shard_check_spec(
            "mean_patch_size_near_target",
            asset=BLT_PATCHES.name,
            description="Achieved mean patch size of the shard within 10% of the target.",
        )
    ],
    description=(
        "BLT entropy patches of each article (tokens [BOS]+bytes, entropies from entropy_model "
        "with full context, chunk by chunk; BLT's global or monotonic start rule, max patch "
        "length). The threshold is calibrated by bisection, on byte windows sampled from every shard, to the "
        "target mean patch size (default 4.5 bytes). One row per patch; patches reassemble the "
        "article. Large runs spread whole articles over worker processes (config workers)."
    ),
)
def blt_patches(
    context: dg.AssetExecutionContext, config: BltPatchesConfig, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    model, _, model_sha = io.load_model(store, config.device)
    threads = model.config.num_threads if config.num_threads is None else config.num_threads
    segments, sample = io.load_calibration_segments(store)
    calibration = calibrate(config, segments)
    context.log.info(
        f"blt_patches: θ = {calibration.threshold:.4f} nats ({config.mode}, max "
        f"{config.max_length()}), calibration-sample mean {calibration.achieved_mean_patch_bytes:.3f} bytes "
        f"(target {config.target_mean_patch_bytes})"
    )
    keys = list(context.partition_keys)
    total_bytes = io.shard_bytes(store, RAW_ARTICLES.name, "n_bytes", keys)
    device = str(next(model.parameters()).device)
    share = config.share_forward_pass
    if share is None:
        share = embeddings_in_run(context)
    cache_settings = (
        io.forward_pass_settings(model_sha, threads, config.chunk_size, device, model.config.dim)
        if share
        else None
    )
    context.log.info(
        "blt_patches: "
        + (
            "one model pass for blt_patches and patch_embeddings (patch_forward_cache)"
            if share
            else "model pass for blt_patches only"
        )
    )
    with mw.article_run(
        context.log.info, BLT_PATCHES.name, model, config.workers, threads, total_bytes
    ) as run:
        stats = [
            patch_shard(store, key, model, calibration, config, run, cache_settings) for key in keys
        ]
    yield partition_results(
        context,
        {
            s["key"]: {
                **report.blt_patches_metadata(
                    config,
                    calibration,
                    [s],
                    run,
                    threads,
                    (model_sha, device, str(store.partition_dir(BLT_PATCHES.name, s["key"]))),
                ),
                "forward_pass": "shared with patch_embeddings (patch_forward_cache)"
                if share
                else "blt_patches only",
                **calibration_sample_metadata(sample),
            }
            for s in stats
        },
    )
    # after the materializations, so each evaluation points at its partition's new one
    yield from partition_check_results(
        context, {s["key"]: mean_size_check(config, [s]) for s in stats}
    )


def reassembly_problems(key: str, raw: pa.Table, table: pa.Table) -> list[str]:
    """Problems (empty = none) with the patches of one shard against its raw articles."""
    problems = []
    ids = table.column("article_id").to_numpy(zero_copy_only=False)
    if ids.size:
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        run_starts = np.concatenate([[0], change])
        run_ends = np.concatenate([change, [ids.size]])
    else:
        run_starts = run_ends = np.zeros(0, np.int64)
    runs = {ids[s]: (s, e) for s, e in zip(run_starts, run_ends, strict=True)}
    if len(runs) != run_starts.size:
        problems.append(f"shard {key}: an article's patches are not contiguous rows")
    patch_index = table.column("patch_index").to_numpy()
    byte_start = table.column("byte_start").to_numpy()
    byte_len = table.column("byte_len").to_numpy()
    patch_bytes = pc.binary_length(table.column("patch")).to_numpy()
    if np.any(patch_bytes != byte_len):
        problems.append(
            f"shard {key}: byte_len != len(patch) in {int((patch_bytes != byte_len).sum())} rows"
        )
    patch_col = table.column("patch")
    for article_id, text in zip(
        raw.column("article_id").to_pylist(), raw.column("text").to_pylist(), strict=True
    ):
        data = text.encode("utf-8")
        s, e = runs.pop(article_id, (0, 0))
        if e - s == 0:
            if data:
                problems.append(f"shard {key}, article '{article_id}': no patches")
            continue
        if not np.array_equal(patch_index[s:e], np.arange(e - s)):
            problems.append(f"shard {key}, article '{article_id}': patch_index not 0..n-1")
        expected_start = np.concatenate([[0], np.cumsum(byte_len[s:e])[:-1]])
        if not np.array_equal(byte_start[s:e], expected_start):
            problems.append(f"shard {key}, article '{article_id}': byte_start not contiguous")
        if b"".join(patch_col.slice(s, e - s).to_pylist()) != data:
            problems.append(f"shard {key}, article '{article_id}': patches != article bytes")
    for article_id in runs:
        problems.append(f"shard {key}: patches for unknown article '{article_id}'")
    return problems


@shard_check(
    asset=blt_patches,
    additional_deps=[raw_articles],
    description="Reassembly, per shard: every raw article's patches, in patch_index order, are contiguous "
    "(byte_start = running sum, byte_len = len(patch)) and concatenate to its exact UTF-8 bytes.",
    blocking=True,
)
def blt_patches_reassemble(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, BLT_PATCHES.name):
        raw = io.read_raw_texts(store, key)
        table = io.read_patches_for_reassembly(store, key)
        problems = reassembly_problems(key, raw, table)
        results[key] = dg.AssetCheckResult(
            passed=not problems,
            metadata={
                "shards": key,
                "articles": raw.num_rows,
                "patches": table.num_rows,
                "problems": len(problems),
                "first_problems": "; ".join(problems[:5]) or "-",
            },
        )
    yield from partition_check_results(context, results)
