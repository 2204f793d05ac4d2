"""entropy_model -> blt_patches -> patch_embeddings: BLT entropy patching as Dagster assets.

The maths lives in ``sphere_assets.compute`` (``entropy_model``, ``patcher``,
``patch_embeddings``); this module reads the warehouse, calls it, writes, measures and checks.

* ``entropy_model`` (unpartitioned): trains the byte LM on a deterministic sample of every
  raw_articles shard; writes ``model.safetensors`` (weights + config), ``heldout.safetensors``
  (token entropies of the held-out text, used to calibrate the patching threshold) and a summary
  row. Re-materializing with the same corpus and config gives byte-identical files.
* ``blt_patches`` (shard): θ is calibrated by bisection on the held-out entropies to the target
  mean patch size (the same θ for every shard: same held-out text, same config), then every
  article of the shard is patched with BLT's rule.
* ``patch_embeddings`` (shard): per-patch mean of the pre-norm hidden states, prominence, a
  Parquet side table and a blt-burn v3 export of the shard.

Torch device and threads come from each asset's config (``device``: cpu | cuda | cuda:N | auto).
"""

import collections
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from sphere_assets.core.metadata import (
    figure_markdown,
    new_figure,
    preview_markdown,
    row_metadata,
)
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import model_workers as mw
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text.corpus import ProgressMeter
from sphere_assets.patching.contract import (
    BLT_PATCHES,
    BLT_PATCHES_SCHEMA,
    ENTROPY_MODEL,
    ENTROPY_MODEL_SCHEMA,
    PATCH_EMBEDDINGS,
    PATCH_EMBEDDINGS_SCHEMA,
)
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse, WarehouseResource

MODEL_ASSET = "entropy_model"
PATCHES_ASSET = "blt_patches"
EMBEDDINGS_ASSET = "patch_embeddings"
RAW_ASSET = "raw_articles"
MODEL_FILE = "model.safetensors"
HELDOUT_STEM = "heldout"
EMBEDDINGS_STEM = "embeddings"
BLT_V3_STEM = "blt_v3"
ROWS_PER_WRITE = 200_000  # patches buffered before a Parquet row group is written
MEAN_SIZE_TOLERANCE = 0.10


def _json_md(obj) -> dg.MetadataValue:
    return dg.MetadataValue.json(obj)


# ---------------------------------------------------------------------------------------------
# Warehouse helpers
# ---------------------------------------------------------------------------------------------


def iter_corpus(store: Warehouse) -> Iterator[tuple[str, bytes]]:
    """(article_id, utf8 bytes) of every raw_articles shard on disk, shard by shard."""
    keys = store.partitions(RAW_ASSET)
    if not keys:
        raise ContractError(RAW_ASSET, None, "<partitions>", "no shards materialized yet")
    for key in keys:
        for batch in store.iter_batches(RAW_ASSET, key, 256, ["article_id", "text"]):
            for article_id, text in zip(
                batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
            ):
                yield article_id, text.encode("utf-8")


def load_model(store: Warehouse, device: str = "cpu"):
    """The trained entropy model (rebuilt from its file), its metadata and the file's sha256."""
    path = store.partition_dir(MODEL_ASSET, None) / MODEL_FILE
    if not path.exists():
        raise ContractError(
            MODEL_ASSET, None, MODEL_FILE, f"no model at {path} (materialize entropy_model first)"
        )
    data = path.read_bytes()
    try:
        model, metadata = em.load_entropy_model(path, em.resolve_device(device))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ContractError(MODEL_ASSET, None, MODEL_FILE, str(exc)) from exc
    return model, metadata, hashlib.sha256(data).hexdigest()


def load_heldout_segments(store: Warehouse) -> list[np.ndarray]:
    arrays, _ = store.read_tensors(MODEL_ASSET, None, HELDOUT_STEM)
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    if bounds[-1] != arrays["entropies"].size:
        raise ContractError(
            MODEL_ASSET, None, f"{HELDOUT_STEM}.lengths", "segment lengths do not sum to entropies"
        )
    return [arrays["entropies"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ---------------------------------------------------------------------------------------------
# entropy_model
# ---------------------------------------------------------------------------------------------


class EntropyModelAssetConfig(dg.Config):
    """Preset plus optional overrides of :class:`EntropyModelConfig` fields (None = preset's)."""

    preset: str = Field("tiny", description="tiny (default, ≤60 s on 2 CPU cores) | base")
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    window: int | None = Field(None, description="attention window (keys per query)")
    seq_len: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    seed: int | None = None
    sample_bytes: int | None = Field(None, description="byte budget of the training sample")
    holdout_fraction: float | None = None
    max_eval_bytes: int | None = None
    num_threads: int | None = Field(None, description="torch threads (0 = torch's default)")
    device: str = Field("cpu", description="torch device: cpu | cuda | cuda:N | auto")

    def to_model_config(self) -> em.EntropyModelConfig:
        presets = {"tiny": em.EntropyModelConfig.tiny, "base": em.EntropyModelConfig.base}
        if self.preset not in presets:
            raise ValueError(f"entropy_model preset must be one of {sorted(presets)}")
        names = {f.name for f in fields(em.EntropyModelConfig)}
        overrides = {k: v for k, v in self.model_dump().items() if k in names and v is not None}
        return presets[self.preset](**overrides)


def entropy_model_row(report: em.TrainingReport, config, sha: str, sample, device: str) -> pa.Table:
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


@dg.asset(
    deps=[ingest.raw_articles],
    group_name="patching",
    kinds={"torch", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "patching"},
    description=(
        "Small causal byte LM of the BLT entropy-model family (260-token byte vocabulary, "
        "RMSNorm, RoPE, SwiGLU, windowed causal attention), trained with torch on a "
        "deterministic sample of all raw_articles shards. model.safetensors holds weights + "
        "config; heldout.safetensors the held-out token entropies used to calibrate "
        "blt_patches' threshold; metadata reports held-out bits/byte vs the unigram baseline."
    ),
)
def entropy_model(
    context: dg.AssetExecutionContext, config: EntropyModelAssetConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    cfg = config.to_model_config()
    device = em.resolve_device(config.device)
    t0 = time.perf_counter()
    sample = em.sample_training_bytes(iter_corpus(store), cfg)
    context.log.info(
        f"entropy_model: sample {sample.train_bytes} train / {sample.heldout_bytes} held-out bytes "
        f"({len(sample.train_article_ids)} / {len(sample.heldout_segments)} articles); training "
        f"{cfg.steps} steps on {device}"
    )
    model, report = em.train_entropy_model(
        sample, cfg, device, log_every=max(1, cfg.steps // 10), log=context.log.info
    )
    with em.torch_runtime(cfg.num_threads):
        heldout = [pt.token_entropies(model, seg) for seg in sample.heldout_segments]
    payload = em.entropy_model_bytes(
        model, {k: repr(v) for k, v in report.as_metadata().items() if k != "train_seconds"}
    )
    sha = hashlib.sha256(payload).hexdigest()
    with store.partition_writer(MODEL_ASSET, None) as writer:
        writer.write_bytes(MODEL_FILE, payload)
        writer.write_tensors(
            HELDOUT_STEM,
            {
                "entropies": np.concatenate(heldout).astype(np.float32),
                "lengths": np.array([len(h) for h in heldout], dtype=np.int64),
            },
            {"model_sha256": sha, "units": "nats", "layout": "[BOS]+bytes per segment"},
        )
        writer.write_table(entropy_model_row(report, cfg, sha, sample, str(device)))
    beats = report.heldout_bits_per_byte < report.unigram_bits_per_byte
    context.log.info(
        f"entropy_model: held-out {report.heldout_bits_per_byte:.3f} bits/byte vs unigram "
        f"{report.unigram_bits_per_byte:.3f} ({report.num_parameters} params, "
        f"{report.train_seconds:.1f}s training)"
    )
    return dg.MaterializeResult(
        metadata={
            **row_metadata(ENTROPY_MODEL, 1),
            "config": _json_md(json.loads(cfg.to_json())),
            "preset": config.preset,
            "heldout_bits_per_byte": round(report.heldout_bits_per_byte, 4),
            "unigram_bits_per_byte": round(report.unigram_bits_per_byte, 4),
            "heldout_unigram_entropy_bits": round(report.heldout_unigram_entropy_bits, 4),
            "beats_unigram": beats,
            "final_train_loss": round(report.final_train_loss, 4),
            "num_parameters": report.num_parameters,
            "train_seconds": round(report.train_seconds, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "train_bytes": report.train_bytes,
            "heldout_bytes": report.heldout_bytes,
            "train_articles": len(sample.train_article_ids),
            "device": str(device),
            "model_sha256": sha,
            "path": dg.MetadataValue.path(str(store.partition_dir(MODEL_ASSET, None) / MODEL_FILE)),
        }
    )


@dg.asset_check(
    asset=entropy_model,
    description="The stored model loads (config rebuilds the exact parameter set, sha256 matches "
    "the summary row) and its held-out bits/byte beats the unigram-entropy baseline.",
    blocking=True,
)
def entropy_model_beats_unigram(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    row = store.read_table(MODEL_ASSET, None).to_pylist()[0]
    _, _, sha = load_model(store)
    bpb, unigram = row["heldout_bits_per_byte"], row["unigram_bits_per_byte"]
    return dg.AssetCheckResult(
        passed=bool(bpb < unigram and sha == row["model_sha256"]),
        metadata={
            "heldout_bits_per_byte": bpb,
            "unigram_bits_per_byte": unigram,
            "margin_bits": round(unigram - bpb, 4),
            "sha256_matches": sha == row["model_sha256"],
        },
    )


# ---------------------------------------------------------------------------------------------
# blt_patches
# ---------------------------------------------------------------------------------------------


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


def calibrate(config: BltPatchesConfig, store: Warehouse) -> pt.Calibration:
    segments = load_heldout_segments(store)
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


def histogram_markdown(lengths: np.ndarray, title: str) -> dg.MetadataValue:
    fig, ax = new_figure(6.0, 2.8)
    if lengths.size:
        top = int(lengths.max())
        ax.hist(lengths, bins=np.arange(0.5, top + 1.5, 1.0), color="#4c72b0")
        ax.set_yscale("log")
    ax.set_xlabel("patch length (bytes)")
    ax.set_ylabel("patches")
    ax.set_title(title)
    return figure_markdown(fig, title)


def _buckets_md(buckets: dict[str, int]) -> dg.MetadataValue:
    total = max(sum(buckets.values()), 1)
    lines = ["| bytes | patches | share |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {v / total:.1%} |" for k, v in buckets.items()]
    return dg.MetadataValue.md("\n".join(lines))


def shard_bytes(store: Warehouse, asset: str, column: str, keys: list[str]) -> int:
    """Article bytes in shards ``keys`` of ``asset``: the sum of its byte-count ``column``
    (raw_articles ``n_bytes``, blt_patches ``byte_len``)."""
    return sum(
        int(pc.sum(store.read_table(asset, key, [column]).column(0)).as_py() or 0) for key in keys
    )


def in_partition(asset: str, key: str, results: Iterator) -> Iterator:
    """``results`` with per-article errors (which name the article) also naming the asset and
    partition."""
    try:
        yield from results
    except RuntimeError as exc:
        raise RuntimeError(f"asset '{asset}', partition '{key}': {exc}") from exc


@dataclass
class ArticleRun:
    """How an asset run spreads its articles over the cores."""

    pool: mw.ModelWorkers | None  # None: in this process
    workers: int
    batch_bytes: int
    progress: ProgressMeter

    @property
    def busy_seconds(self) -> float | None:
        """The workers' summed compute time (None in this process)."""
        return None if self.pool is None else self.pool.busy_seconds


@contextlib.contextmanager
def article_run(
    context, asset: str, model, requested: int, threads: int | None, total_bytes: int
) -> Iterator[ArticleRun]:
    """Torch runtime, worker pool (shut down afterwards), batch size and progress meter of an
    asset run over ``total_bytes`` of articles; the final progress line when it ends."""
    per_worker = threads or 1
    on_cpu = next(model.parameters()).device.type == "cpu"
    # an accelerator is used from this process (automatic count) or refused (explicit count)
    workers = mw.worker_count(requested, total_bytes, per_worker) if on_cpu or requested else 1
    where = "in this process" if workers <= 1 else f"{workers} worker processes x"
    context.log.info(f"{asset}: {total_bytes / 1e6:.2f} MB {where} {per_worker} torch thread(s)")
    progress = ProgressMeter(lambda msg: context.log.info(f"{asset}: {msg}"), total_bytes)
    with contextlib.ExitStack() as stack:
        stack.enter_context(em.torch_runtime(threads))
        pool = (
            stack.enter_context(mw.ModelWorkers(model, workers, per_worker))
            if workers > 1
            else None
        )
        yield ArticleRun(pool, workers, mw.batch_bytes_for(total_bytes, workers), progress)
    progress.maybe_log(progress.records, progress.nbytes, force=True)


def patch_shard(
    store: Warehouse,
    key: str,
    model,
    calibration: pt.Calibration,
    config: BltPatchesConfig,
    run: ArticleRun,
) -> dict:
    """Patch every article of raw_articles/shard=key into blt_patches/shard=key."""
    chunk = config.chunk_size or None
    lengths_all: list[np.ndarray] = []
    n_articles = n_bytes = n_patches = 0
    preview = None
    pending: list[pa.Table] = []
    pending_rows = 0
    waiting_seconds = 0.0
    # articles handed to patch_articles, not yet back: results arrive in this order
    in_flight: collections.deque[tuple[str, bytes]] = collections.deque()

    def articles() -> Iterator[tuple[str, bytes]]:
        for batch in store.iter_batches(RAW_ASSET, key, 64, ["article_id", "text"]):
            for article_id, text in zip(
                batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
            ):
                in_flight.append((article_id, text.encode("utf-8")))
                yield in_flight[-1]

    t0 = time.perf_counter()
    results = in_partition(
        PATCHES_ASSET,
        key,
        pt.patch_articles(
            model,
            articles(),
            calibration.threshold,
            config.mode,
            config.max_length(),
            chunk,
            workers=run.pool,
            batch_bytes=run.batch_bytes,
            keep_byte_entropy=False,  # blt_patches stores per-patch entropies only
        ),
    )
    with store.partition_writer(PATCHES_ASSET, key) as writer, writer.table_stream() as out:
        while True:
            t_wait = time.perf_counter()
            res = next(results, None)
            waiting_seconds += time.perf_counter() - t_wait
            if res is None:
                break
            article_id, data = in_flight.popleft()
            try:
                pt.check_reassembly(data, res.byte_start, res.byte_len)
            except ValueError as exc:
                raise ContractError(
                    PATCHES_ASSET, key, "patch", f"article '{article_id}': {exc}"
                ) from exc
            table = patch_rows(article_id, data, res)
            if preview is None and table.num_rows:
                preview = table.slice(0, 8)
            pending.append(table)
            pending_rows += table.num_rows
            lengths_all.append(res.byte_len)
            n_articles += 1
            n_bytes += len(data)
            n_patches += res.num_patches
            run.progress.advance(1, len(data))
            if pending_rows >= ROWS_PER_WRITE:
                out.write(pa.concat_tables(pending))
                pending, pending_rows = [], 0
        if pending or n_patches == 0:
            out.write(pa.concat_tables(pending) if pending else BLT_PATCHES_SCHEMA.empty_table())
    seconds = time.perf_counter() - t0
    lengths = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int64)
    return {
        "key": key,
        "articles": n_articles,
        "bytes": n_bytes,
        "patches": n_patches,
        "lengths": lengths,
        "seconds": seconds,
        # in this process: time inside the entropy model + patch rule
        "entropy_seconds": waiting_seconds,
        "preview": preview,
    }


@dg.asset(
    deps=[ingest.raw_articles, entropy_model],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="patching",
    kinds={"torch", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "patching"},
    check_specs=[
        dg.AssetCheckSpec(
            "mean_patch_size_near_target",
            asset="blt_patches",
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
) -> dg.MaterializeResult:
    store = warehouse.store()
    model, model_meta, model_sha = load_model(store, config.device)
    threads = model.config.num_threads if config.num_threads is None else config.num_threads
    calibration = calibrate(config, store)
    context.log.info(
        f"blt_patches: θ = {calibration.threshold:.4f} nats ({config.mode}, max "
        f"{config.max_length()}), held-out mean {calibration.achieved_mean_patch_bytes:.3f} bytes "
        f"(target {config.target_mean_patch_bytes})"
    )
    keys = list(context.partition_keys)
    total_bytes = shard_bytes(store, RAW_ASSET, "n_bytes", keys)
    with article_run(context, PATCHES_ASSET, model, config.workers, threads, total_bytes) as run:
        stats = [patch_shard(store, key, model, calibration, config, run) for key in keys]
    lengths = np.concatenate([s["lengths"] for s in stats])
    n_bytes = sum(s["bytes"] for s in stats)
    n_patches = sum(s["patches"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    achieved = n_bytes / n_patches if n_patches else 0.0
    target = config.target_mean_patch_bytes
    rel_error = abs(achieved - target) / target if n_patches else float("inf")
    buckets = pt.size_bucket_counts(lengths)
    percentiles = pt.length_percentiles(lengths)
    previews = [s["preview"] for s in stats if s["preview"] is not None]
    label = ",".join(keys)
    metadata = {
        **row_metadata(BLT_PATCHES, n_patches),
        "threshold_nats": round(calibration.threshold, 6),
        "mode": config.mode,
        "max_patch_length": config.max_patch_length,
        "target_mean_patch_bytes": target,
        "calibration_mean_patch_bytes": round(calibration.achieved_mean_patch_bytes, 4),
        "calibration_bytes": calibration.calibration_bytes,
        "calibrated": config.threshold is None,
        "mean_patch_bytes": round(achieved, 4),
        **{f"length_{k}": v for k, v in percentiles.items()},
        "max_patch_bytes": int(lengths.max()) if lengths.size else 0,
        "patches": n_patches,
        "articles": sum(s["articles"] for s in stats),
        "bytes": n_bytes,
        **{f"bucket/{k}": v for k, v in buckets.items()},
        "size_buckets": _buckets_md(buckets),
        "seconds": round(seconds, 3),
        "bytes_per_second": round(n_bytes / max(seconds, 1e-9), 1),
        "MB_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 4),
        "workers": run.workers,
        "torch_threads_per_worker": threads or 1,
        # in this process: share of wall time in the model + patch rule; with workers: their
        # utilization (summed compute time over workers x wall time)
        "entropy_share_of_time": round(
            (
                run.busy_seconds
                if run.busy_seconds is not None
                else sum(s["entropy_seconds"] for s in stats)
            )
            / max(seconds * run.workers, 1e-9),
            3,
        ),
        "length_histogram": histogram_markdown(lengths, f"blt_patches shard {label}"),
        "model_sha256": model_sha,
        "device": str(next(model.parameters()).device),
        "path": dg.MetadataValue.path(str(store.partition_dir(PATCHES_ASSET, keys[0]))),
    }
    if previews:
        metadata["preview"] = preview_markdown(
            pa.concat_tables(previews), ["article_id", "patch_index", "byte_len", "text"], rows=8
        )
    check = dg.AssetCheckResult(
        check_name="mean_patch_size_near_target",
        # an empty shard has no mean to miss the target with
        passed=bool(n_patches == 0 or rel_error <= MEAN_SIZE_TOLERANCE),
        metadata={
            "empty_shard": n_patches == 0,
            "mean_patch_bytes": round(achieved, 4),
            "target_mean_patch_bytes": target,
            "relative_error": round(rel_error, 4) if np.isfinite(rel_error) else -1.0,
            "tolerance": MEAN_SIZE_TOLERANCE,
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


@dg.asset_check(
    asset=blt_patches,
    additional_deps=[ingest.raw_articles],
    description="Reassembly: every raw article's patches, in patch_index order, are contiguous "
    "(byte_start = running sum, byte_len = len(patch)) and concatenate to its exact UTF-8 bytes.",
    blocking=True,
)
def blt_patches_reassemble(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, PATCHES_ASSET)
    problems: list[str] = []
    articles = patches = 0
    for key in keys:
        raw = store.read_table(RAW_ASSET, key, ["article_id", "text"])
        table = store.read_table(
            PATCHES_ASSET, key, ["article_id", "patch_index", "byte_start", "byte_len", "patch"]
        )
        problems += reassembly_problems(key, raw, table)
        articles += raw.num_rows
        patches += table.num_rows
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "shards": ",".join(keys),
            "articles": articles,
            "patches": patches,
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
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


# ---------------------------------------------------------------------------------------------
# patch_embeddings
# ---------------------------------------------------------------------------------------------


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
        "one per available core when the run's shards hold >= 4 MB, else 1; 1 = this process)",
    )
    chunk_size: int = Field(0, description="tokens per inference chunk (0 = model default)")


def iter_article_patches(
    store: Warehouse, key: str, with_text: bool = False
) -> Iterator[tuple[str, bytes, np.ndarray, np.ndarray, list[str] | None]]:
    """(article_id, bytes, byte_start, byte_len, texts or None) per article of
    blt_patches/shard=key; the article's bytes are its patches concatenated."""
    columns = ["article_id", "byte_start", "byte_len", "patch"] + (["text"] if with_text else [])
    table = store.read_table(PATCHES_ASSET, key, columns)
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


@dg.asset(
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
    model, _, model_sha = load_model(store, config.device)
    threads = model.config.num_threads if config.num_threads is None else config.num_threads
    minilm = None
    if config.embedder == "minilm":
        minilm = pe.MiniLMEmbedder(device=str(em.resolve_device(config.device)))
    elif config.embedder != "entropy_model":
        raise ValueError(
            f"patch_embeddings embedder must be entropy_model or minilm, got '{config.embedder}'"
        )
    keys = list(context.partition_keys)
    total_bytes = shard_bytes(store, PATCHES_ASSET, "byte_len", keys)
    t0 = time.perf_counter()
    with article_run(context, EMBEDDINGS_ASSET, model, config.workers, threads, total_bytes) as run:
        summaries = [embed_shard(store, key, model, model_sha, config, minilm, run) for key in keys]
    seconds = time.perf_counter() - t0
    n_patches = sum(s["patches"] for s in summaries)
    n_bytes = sum(s["bytes"] for s in summaries)
    prominence = np.concatenate([s["prominence"] for s in summaries])
    return dg.MaterializeResult(
        metadata={
            **row_metadata(PATCH_EMBEDDINGS, n_patches),
            "embedder": config.embedder,
            "pooling": "mean of pre-norm hidden states over the patch's bytes"
            if minilm is None
            else "all-MiniLM-L6-v2 sentence embedding of the patch text",
            "embed_dim": summaries[0]["embed_dim"] if summaries else 0,
            "patches": n_patches,
            "articles": sum(s["articles"] for s in summaries),
            "bytes": n_bytes,
            "prominence_mean": float(prominence.mean()) if prominence.size else 0.0,
            "prominence_p50": float(np.percentile(prominence, 50)) if prominence.size else 0.0,
            "prominence_p99": float(np.percentile(prominence, 99)) if prominence.size else 0.0,
            "seconds": round(seconds, 3),
            "MB_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 4),
            "workers": run.workers,
            "torch_threads_per_worker": threads or 1,
            "blt_v3_file": f"{BLT_V3_STEM}.safetensors",
            "model_sha256": model_sha,
            "path": dg.MetadataValue.path(
                str(store.partition_dir(EMBEDDINGS_ASSET, list(context.partition_keys)[0]))
            ),
        }
    )


def embed_shard(
    store: Warehouse,
    key: str,
    model,
    model_sha: str,
    config,
    minilm,
    run: ArticleRun,
) -> dict:
    chunk = config.chunk_size or None
    embeddings, prominence, article_index, patch_index = [], [], [], []
    patch_entropy, byte_entropy, lengths, raw_bytes, ids = [], [], [], [], []
    # articles handed to pool_articles, not yet back: results arrive in this order
    in_flight: collections.deque = collections.deque()

    def articles() -> Iterator[tuple[str, bytes, np.ndarray, np.ndarray]]:
        for article in iter_article_patches(store, key, with_text=minilm is not None):
            in_flight.append(article)
            yield article[:4]

    vectors = in_partition(
        EMBEDDINGS_ASSET, key, pe.pool_articles(model, articles(), chunk, run.pool, run.batch_bytes)
    )
    for a, vec in enumerate(vectors):
        article_id, data, starts, lens, texts = in_flight.popleft()
        run.progress.advance(1, len(data))
        if minilm is not None:
            embeddings.append(minilm.encode(texts))
        else:
            embeddings.append(vec.embeddings)
        prominence.append(vec.prominence)
        patch_entropy.append(vec.patch_entropy)
        byte_entropy.append(vec.byte_entropy)
        article_index.append(np.full(len(starts), a, dtype=np.int32))
        patch_index.append(np.arange(len(starts), dtype=np.int32))
        lengths.append(lens.astype(np.int32))
        raw_bytes.append(data)
        ids.extend([article_id] * len(starts))
    dim = minilm.embed_dim if minilm is not None else model.config.dim

    def cat(parts, dtype, width=None):
        if parts:
            return np.concatenate(parts).astype(dtype, copy=False)
        return np.zeros((0, width) if width else 0, dtype=dtype)

    emb = cat(embeddings, np.float32, dim)
    prom = cat(prominence, np.float32)
    p_ent = cat(patch_entropy, np.float32)
    v3_arrays, v3_meta = pe.blt_v3_arrays(
        b"".join(raw_bytes), cat(lengths, np.int32), cat(byte_entropy, np.float32), emb, prom, p_ent
    )
    art_idx = cat(article_index, np.int32)
    p_idx = cat(patch_index, np.int32)
    meta = {
        "model_sha256": model_sha,
        "embedder": config.embedder,
        "pooling": "mean_prenorm_hidden" if minilm is None else "minilm_l6_v2",
        "prominence": "l2_norm_of_mean_prenorm_hidden",
        "rows": "row i = patch_embeddings part-0.parquet row i = blt_patches (article_index, patch_index)",
    }
    with store.partition_writer(EMBEDDINGS_ASSET, key) as writer:
        writer.write_tensors(
            EMBEDDINGS_STEM,
            {"embeddings": emb, "prominence": prom, "article_index": art_idx, "patch_index": p_idx},
            meta,
        )
        writer.write_tensors(BLT_V3_STEM, v3_arrays, {**v3_meta, "model_sha256": model_sha})
        writer.write_table(
            pa.table(
                {
                    "article_id": pa.array(ids, pa.string()),
                    "patch_index": pa.array(p_idx),
                    "article_index": pa.array(art_idx),
                    "prominence": pa.array(prom),
                    "patch_entropy": pa.array(p_ent),
                },
                schema=PATCH_EMBEDDINGS_SCHEMA,
            )
        )
    return {
        "patches": int(prom.size),
        "articles": len(raw_bytes),
        "bytes": int(v3_arrays["bytes"].size),
        "prominence": prom,
        "embed_dim": dim,
    }


@dg.asset_check(
    asset=patch_embeddings,
    additional_deps=[blt_patches],
    description="Embeddings and prominence are finite, prominence >= 0, shapes agree with each "
    "other and with the blt_patches row count, keys match blt_patches, and the blt-burn v3 "
    "export satisfies sum(patch_lengths) == len(bytes).",
    blocking=True,
)
def patch_embeddings_consistent(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, EMBEDDINGS_ASSET)
    problems: list[str] = []
    total = 0
    for key in keys:
        try:
            arrays, _ = store.read_tensors(EMBEDDINGS_ASSET, key, EMBEDDINGS_STEM)
            v3, v3_meta = store.read_tensors(EMBEDDINGS_ASSET, key, BLT_V3_STEM)
        except (ContractError, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        patches = store.read_table(PATCHES_ASSET, key, ["article_id", "patch_index", "byte_len"])
        side = store.read_table(EMBEDDINGS_ASSET, key, ["article_id", "patch_index"])
        emb, prom = arrays["embeddings"], arrays["prominence"]
        total += emb.shape[0]
        if emb.shape[0] != patches.num_rows or side.num_rows != patches.num_rows:
            problems.append(
                f"shard {key}: {emb.shape[0]} embeddings, {side.num_rows} side rows, "
                f"{patches.num_rows} patches"
            )
            continue
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
        if v3_meta.get("format") != pe.BLT_V3_FORMAT or v3_meta.get("num_patches") != str(
            emb.shape[0]
        ):
            problems.append(f"shard {key}: v3 metadata {v3_meta}")
    return dg.AssetCheckResult(
        passed=not problems and bool(keys),
        metadata={
            "shards": ",".join(keys),
            "rows": total,
            "problems": len(problems),
            "first_problems": "; ".join(problems[:5]) or "-",
        },
    )
