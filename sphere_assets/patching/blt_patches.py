"""blt_patches (shard): BLT entropy patches of every article.

θ is calibrated by bisection on entropy_model's held-out entropies to the target mean patch size
(the same θ for every shard: same held-out text, same config), then every article of the shard
is patched with BLT's rule (``sphere_assets.lib.text.patcher``), whole articles spread over
worker processes for large runs (``lib.text.model_workers``).
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
from sphere_assets.patching.contract import BLT_PATCHES
from sphere_assets.patching.entropy_model import entropy_model
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse, WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
mw = lazy_module("sphere_assets.lib.text.model_workers")
pt = lazy_module("sphere_assets.lib.text.patcher")

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
        "one per available core when the run's shards hold >= 4 MB, else 1; 1 = this process)",
    )
    chunk_size: int = Field(0, description="tokens per inference chunk (0 = model default)")

    def max_length(self) -> int | None:
        return self.max_patch_length or None


def calibrate(config: BltPatchesConfig, segments: list[np.ndarray]) -> "pt.Calibration":
    """θ for ``config`` on the held-out entropy ``segments``: the fixed ``threshold`` (with the
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
) -> dict:
    """Patch every article of raw_articles/shard=key into blt_patches/shard=key; the shard's
    statistics (articles, bytes, patches, lengths, seconds, a preview of its first rows)."""
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
        results = mw.in_partition(
            BLT_PATCHES.name,
            key,
            pt.patch_articles(
                model,
                articles(),
                calibration.threshold,
                config.mode,
                config.max_length(),
                config.chunk_size or None,
                workers=run.pool,
                batch_bytes=run.batch_bytes,
                keep_byte_entropy=False,  # blt_patches stores per-patch entropies only
            ),
        )
        while True:
            t_wait = time.perf_counter()
            res = next(results, None)
            waiting_seconds += time.perf_counter() - t_wait
            if res is None:
                return
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
            yield table

    t0 = time.perf_counter()
    io.write_patches_shard(store, key, tables())
    stats["seconds"] = time.perf_counter() - t0
    # in this process: time inside the entropy model + patch rule
    stats["entropy_seconds"] = waiting_seconds
    stats["lengths"] = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int64)
    return stats


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
        "length). The threshold is calibrated by bisection on the model's held-out text to the "
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
    calibration = calibrate(config, io.load_heldout_segments(store))
    context.log.info(
        f"blt_patches: θ = {calibration.threshold:.4f} nats ({config.mode}, max "
        f"{config.max_length()}), held-out mean {calibration.achieved_mean_patch_bytes:.3f} bytes "
        f"(target {config.target_mean_patch_bytes})"
    )
    keys = list(context.partition_keys)
    total_bytes = io.shard_bytes(store, RAW_ARTICLES.name, "n_bytes", keys)
    with mw.article_run(
        context.log.info, BLT_PATCHES.name, model, config.workers, threads, total_bytes
    ) as run:
        stats = [patch_shard(store, key, model, calibration, config, run) for key in keys]
    device = str(next(model.parameters()).device)
    yield partition_results(
        context,
        {
            s["key"]: report.blt_patches_metadata(
                config,
                calibration,
                [s],
                run,
                threads,
                (model_sha, device, str(store.partition_dir(BLT_PATCHES.name, s["key"]))),
            )
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
