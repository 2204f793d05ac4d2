"""UI metadata of the placements family: per-shard summaries, the run's metadata, figures."""

from __future__ import annotations

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
from sphere_assets.lib.sphere.features import evenly_spaced
from sphere_assets.lib.sphere.neighbours import neighbourhood_recall, random_unit
from sphere_assets.lib.sphere.shells import balance_report
from sphere_assets.placements.contract import SHELL_PLACEMENTS

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
wf = lazy_module("sphere_assets.lib.sphere.waterfill")

RECALL_K = 10


def recall_metrics(embeddings: np.ndarray, p: wf.Placement, queries: int, seed: int) -> dict:
    """recall@10 of the placed, the plain projected and random directions (baseline)."""
    n = p.shell.size
    return {
        "recall_at_10_placed": neighbourhood_recall(embeddings, p.unit, RECALL_K, queries),
        "recall_at_10_projection": neighbourhood_recall(
            embeddings, p.start_unit, RECALL_K, queries
        ),
        "recall_at_10_random": neighbourhood_recall(
            embeddings, random_unit(n, seed), RECALL_K, queries
        ),
    }


def shard_summary(
    key: str, p: wf.Placement, seconds: float, method: str, lvm_windows: int, recall: dict
) -> dict:
    """One shard's figures (logged, and aggregated by :func:`materialization_metadata`)."""
    n = p.shell.size
    st = p.stats
    summary = {
        "shard": key,
        "points": n,
        "seconds": seconds,
        "points_per_s": n / max(seconds, 1e-9),
        "passes": st["passes"],
        "promotions": st["promotions"],
        "demotions": st["demotions"],
        "lateral_moves": st["lateral_moves"],
        "converged": st["converged"],
        "balanced": st["ok"],
        "max_abs_deviation": st["max_abs_deviation"],
        "max_relative_deviation": st["max_relative_deviation"],
        "lvm_windows": lvm_windows,
        **recall,
    }
    if method == "thrml":
        summary["energy_first"] = st["energy_trace"][0]
        summary["energy_last"] = st["energy_trace"][-1]
        summary["energy_decreased"] = st["energy_decreased"]
    return summary


def shard_log_line(summary: dict) -> str:
    s = summary
    return (
        f"{SHELL_PLACEMENTS.name} shard {s['shard']}: {s['points']} points in "
        f"{s['seconds']:.2f}s ({s['points_per_s']:.0f}/s), passes {s['passes']}, balanced "
        f"{s['balanced']} (max |dev| {s['max_abs_deviation']})"
    )


def occupancy_figure(counts: np.ndarray, targets: np.ndarray):
    """Occupancy and capacity per shell, with count - target against the tolerance band."""
    fig, ax = new_figure(7.0, 3.0)
    s = np.arange(len(counts))
    ax.bar(s, counts, width=1.0, color="#4c78a8", label="occupancy")
    ax.step(s, targets, where="mid", color="#e45756", label="capacity (target)")
    ax.set_xlabel("shell")
    ax.set_ylabel("points")
    dev = ax.twinx()
    dev.plot(s, counts - targets, color="black", linewidth=0.8, label="count - target")
    tol = np.maximum(1.0, 0.01 * targets)
    dev.fill_between(s, -tol, tol, color="#54a24b", alpha=0.25, step="mid", label="tolerance")
    dev.set_ylabel("count - target")
    lim = max(2.0, float(np.abs(counts - targets).max()) * 1.2, float(tol.max()) * 1.2)
    dev.set_ylim(-lim, lim)
    handles = ax.get_legend_handles_labels()
    more = dev.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=7)
    return fig


def mollweide_figure(p: wf.Placement, sample: int):
    """Mollweide projection of an evenly spaced sample of the points, coloured by shell."""
    import matplotlib.pyplot as plt

    rows = evenly_spaced(p.shell.size, sample)
    fig = plt.figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(111, projection="mollweide")
    lon = np.asarray(p.phi[rows], np.float64) - np.pi  # [-pi, pi)
    lat = np.pi / 2 - np.asarray(p.theta[rows], np.float64)
    sc = ax.scatter(lon, lat, c=p.shell[rows], s=1.5, cmap="viridis", linewidths=0)
    ax.grid(True, linewidth=0.3)
    ax.set_xticklabels([])
    fig.colorbar(sc, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04, label="shell")
    return fig


def per_shard_markdown(summaries: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(
        "| shard | points | s | points/s | passes | lateral | max dev | recall@10 |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {s['shard']} | {s['points']} | {s['seconds']:.2f} | {s['points_per_s']:.0f} "
            f"| {s['passes']} | {s['lateral_moves']} | {s['max_abs_deviation']} | "
            f"{s['recall_at_10_placed']:.3f} |"
            for s in summaries
        )
    )


def _mean(summaries: list[dict], key: str) -> float:
    return float(np.mean([s[key] for s in summaries]))


def materialization_metadata(
    *,
    method: str,
    n_shells: int,
    band_limit: int,
    summaries: list[dict],
    placements: list[wf.Placement],
    seconds: float,
    first_table: pa.Table,
    plot_sample: int,
    jax_metadata: dict,
    devices_used: int,
    path,
) -> dict:
    """Everything the shell_placements materialization shows in the UI (the shards of
    ``summaries``: one per partition's materialization). The pictures come first."""
    n = sum(s["points"] for s in summaries)
    counts = np.sum([p.counts for p in placements], axis=0)
    targets = np.sum([p.targets for p in placements], axis=0)
    whole = balance_report(counts, targets)
    first = placements[0]
    label = ",".join(s["shard"] for s in summaries)
    metadata = {
        picture_key("shell occupancy vs capacity"): figure_markdown(
            occupancy_figure(counts, targets), f"occupancy vs capacity per shell, shard {label}"
        ),
        picture_key("points on the sphere (Mollweide, by shell)"): figure_markdown(
            mollweide_figure(first, plot_sample),
            f"Mollweide projection of shard {summaries[0]['shard']}, coloured by shell",
        ),
        **row_metadata(SHELL_PLACEMENTS, n),
        "method": method,
        "shards": ",".join(s["shard"] for s in summaries),
        "n_shells": n_shells,
        "band_limit": band_limit,
        "points": n,
        "seconds": round(seconds, 3),
        "points_per_s": round(n / max(seconds, 1e-9), 1),
        "passes_max": max(s["passes"] for s in summaries),
        "promotions": sum(s["promotions"] for s in summaries),
        "demotions": sum(s["demotions"] for s in summaries),
        "lateral_moves": sum(s["lateral_moves"] for s in summaries),
        "converged": all(s["converged"] for s in summaries),
        "balanced_every_shard": all(s["balanced"] for s in summaries),
        "max_abs_deviation": max(s["max_abs_deviation"] for s in summaries),
        "max_relative_deviation": max(s["max_relative_deviation"] for s in summaries),
        "balanced_whole": whole["ok"],
        "recall_at_10_placed": _mean(summaries, "recall_at_10_placed"),
        "recall_at_10_projection": _mean(summaries, "recall_at_10_projection"),
        "recall_at_10_random": _mean(summaries, "recall_at_10_random"),
        "lvm_windows": sum(s["lvm_windows"] for s in summaries),
        "preview": preview_markdown(
            first_table, ["article_id", "patch_index", "shell", "r", "theta", "phi"]
        ),
        "per_shard": per_shard_markdown(summaries),
        **jax_metadata,
        "jax/devices_used": devices_used,
        "path": dg.MetadataValue.path(str(path)),
    }
    if method == "thrml":
        metadata["energy_decreased"] = all(s["energy_decreased"] for s in summaries)
        metadata["energy_trace_first_shard"] = dg.MetadataValue.json(
            [round(e, 4) for e in first.stats["energy_trace"]]
        )
    return metadata
