"""What the patching family shows in the Dagster UI: materialization metadata, tables, figures."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow as pa

from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import (
    figure_markdown,
    new_figure,
    picture_key,
    preview_markdown,
    row_metadata,
)
from sphere_assets.patching.contract import BLT_PATCHES, ENTROPY_MODEL, PATCH_EMBEDDINGS

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
pt = lazy_module("sphere_assets.lib.text.patcher")


def json_md(obj) -> dg.MetadataValue:
    return dg.MetadataValue.json(obj)


def histogram_markdown(lengths: np.ndarray, title: str) -> dg.MetadataValue:
    """Patch-length histogram (log count axis) as an inline image."""
    fig, ax = new_figure(6.0, 2.8)
    if lengths.size:
        top = int(lengths.max())
        ax.hist(lengths, bins=np.arange(0.5, top + 1.5, 1.0), color="#4c72b0")
        ax.set_yscale("log")
    ax.set_xlabel("patch length (bytes)")
    ax.set_ylabel("patches")
    ax.set_title(title)
    return figure_markdown(fig, title)


def buckets_markdown(buckets: dict[str, int]) -> dg.MetadataValue:
    """Patch counts per size bucket with their share, as a markdown table."""
    total = max(sum(buckets.values()), 1)
    lines = ["| bytes | patches | share |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {v / total:.1%} |" for k, v in buckets.items()]
    return dg.MetadataValue.md("\n".join(lines))


def entropy_model_metadata(
    preset: str, cfg, report, sample, device: str, sha: str, path: str, total_seconds: float
) -> dict:
    return {
        **row_metadata(ENTROPY_MODEL, 1),
        "config": json_md(json.loads(cfg.to_json())),
        "preset": preset,
        "heldout_bits_per_byte": round(report.heldout_bits_per_byte, 4),
        "unigram_bits_per_byte": round(report.unigram_bits_per_byte, 4),
        "heldout_unigram_entropy_bits": round(report.heldout_unigram_entropy_bits, 4),
        "beats_unigram": report.heldout_bits_per_byte < report.unigram_bits_per_byte,
        "final_train_loss": round(report.final_train_loss, 4),
        "num_parameters": report.num_parameters,
        "train_seconds": round(report.train_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "train_bytes": report.train_bytes,
        "heldout_bytes": report.heldout_bytes,
        "train_articles": len(sample.train_article_ids),
        "device": device,
        "model_sha256": sha,
        "path": dg.MetadataValue.path(path),
    }


def blt_patches_metadata(
    config, calibration: pt.Calibration, stats: list[dict], run, threads: int | None, model
) -> dict:
    """Metadata of a blt_patches run over the shards of ``stats`` (one dict per shard from
    ``blt_patches.patch_shard``); ``model`` is (sha256, torch device, partition path)."""
    model_sha, device, path = model
    lengths = np.concatenate([s["lengths"] for s in stats])
    n_bytes = sum(s["bytes"] for s in stats)
    n_patches = sum(s["patches"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    achieved = n_bytes / n_patches if n_patches else 0.0
    buckets = pt.size_bucket_counts(lengths)
    percentiles = pt.length_percentiles(lengths)
    previews = [s["preview"] for s in stats if s["preview"] is not None]
    label = ",".join(s["key"] for s in stats)
    metadata = {
        picture_key("patch length histogram"): histogram_markdown(
            lengths, f"blt_patches shard {label}"
        ),
        **row_metadata(BLT_PATCHES, n_patches),
        "threshold_nats": round(calibration.threshold, 6),
        "mode": config.mode,
        "max_patch_length": config.max_patch_length,
        "target_mean_patch_bytes": config.target_mean_patch_bytes,
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
        "size_buckets": buckets_markdown(buckets),
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
        "model_sha256": model_sha,
        "device": device,
        "path": dg.MetadataValue.path(path),
    }
    if previews:
        metadata["preview"] = preview_markdown(
            pa.concat_tables(previews), ["article_id", "patch_index", "byte_len", "text"], rows=8
        )
    return metadata


def patch_embeddings_metadata(
    embedder: str,
    minilm: bool,
    summaries: list[dict],
    seconds: float,
    run,
    threads: int | None,
    model_sha: str,
    blt_v3_file: str,
    path: str,
) -> dict:
    """Metadata of a patch_embeddings run over the shards of ``summaries`` (one dict per shard
    from ``patch_embeddings.embed_shard``)."""
    n_patches = sum(s["patches"] for s in summaries)
    n_bytes = sum(s["bytes"] for s in summaries)
    prominence = np.concatenate([s["prominence"] for s in summaries])
    return {
        **row_metadata(PATCH_EMBEDDINGS, n_patches),
        "embedder": embedder,
        "pooling": "mean of pre-norm hidden states over the patch's bytes"
        if not minilm
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
        "blt_v3_file": blt_v3_file,
        "model_sha256": model_sha,
        "path": dg.MetadataValue.path(path),
    }
