"""UI metadata of the placements family: per-shard summaries, the run's metadata, figures."""

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
from sphere_assets.lib.sphere.features import evenly_spaced
from sphere_assets.lib.sphere.neighbours import neighbourhood_recall, random_unit
from sphere_assets.lib.sphere.shells import balance_report
from sphere_assets.placements.contract import SHELL_PLACEMENTS, SPHERE_MAP

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
wf = lazy_module("sphere_assets.lib.sphere.waterfill")
sm = lazy_module("sphere_assets.lib.sphere.sphere_map")

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


def map_figures(model: sm.SphereMapModel, p: wf.Placement) -> dict:
    """Drift of the shard against the map's fit, crowding before/after the spreading step, its
    moves, and the HEALPix cell occupancy of the final places (per-shard summary entries)."""
    from sphere_assets.lib.sphere.spreading import cell_occupancy

    st = p.stats
    return {
        "map_drift": sm.drift(model, p.start_unit),
        "map_reference_drift": model.reference_drift,
        "crowding_0.01deg_before": st.get("crowding_0.01deg_before", 0.0),
        "crowding_0.01deg_after": st.get("crowding_0.01deg_after", 0.0),
        "crowding_0.5deg_before": st.get("crowding_0.5deg_before", 0.0),
        "crowding_0.5deg_after": st.get("crowding_0.5deg_after", 0.0),
        "spread_moves": st.get("spread_moves", 0),
        "spread_max_deg": st.get("spread_max_deg", 0.0),
        **cell_occupancy(p.unit, p.shell),
    }


MAP_FIGURES = (
    "map_drift", "map_reference_drift", "crowding_0.01deg_before", "crowding_0.01deg_after",
    "crowding_0.5deg_before", "crowding_0.5deg_after", "spread_moves", "spread_max_deg",
    "occupancy_max_over_mean_median", "occupancy_max_over_mean_max",
)  # fmt: skip


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
        "| shard | points | s | points/s | passes | spread moves | crowding 0.5° before → after "
        "| max dev | recall@10 | drift |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {s['shard']} | {s['points']} | {s['seconds']:.2f} | {s['points_per_s']:.0f} "
            f"| {s['passes']} | {s.get('spread_moves', 0)} | "
            f"{s.get('crowding_0.5deg_before', 0):.4f} → {s.get('crowding_0.5deg_after', 0):.4f} "
            f"| {s['max_abs_deviation']} | {s['recall_at_10_placed']:.3f} | "
            f"{s.get('map_drift', 0):.3f} |"
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
        **{k: summaries[0][k] for k in MAP_FIGURES if len(summaries) == 1 and k in summaries[0]},
        "preview": preview_markdown(
            first_table, ["article_id", "patch_index", "shell", "r", "theta", "phi", "spread"]
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


# --- sphere_map -------------------------------------------------------------------------------

RECALL_QUERIES = 1000
TRUST_ROWS = 2000  # sklearn's trustworthiness is O(n^2): an evenly spaced subset of the sample


def map_quality(model: sm.SphereMapModel, sample: np.ndarray) -> dict:
    """recall@10 and trustworthiness@10 of the map and of plain PCA-3 on the fit sample."""
    from sklearn.manifold import trustworthiness

    unit = sm.map_directions(model, sample)
    unit_pca = sm.map_directions(model.as_pca3(), sample)
    rows = evenly_spaced(sample.shape[0], TRUST_ROWS)
    x = sample[rows].astype(np.float64)
    k = min(RECALL_K, max(1, rows.size // 2 - 1))
    out = {"unit": unit, "unit_pca3": unit_pca}
    for name, u in (("", unit), ("_pca3", unit_pca)):
        out[f"recall_at_10{name}"] = neighbourhood_recall(sample, u, RECALL_K, RECALL_QUERIES)
        out[f"trustworthiness_at_10{name}"] = float(
            trustworthiness(x, u[rows], n_neighbors=k, metric="cosine")
        )
    return out


def sphere_map_row(model: sm.SphereMapModel, cfg: sm.SphereMapConfig, sample: dict, q: dict):
    """The one fit-report row of sphere_map (contract schema)."""
    from dataclasses import asdict

    shards = ", ".join(
        f"{k}:{n}" for k, n in zip(sample["keys"], sample["sample_per_shard"], strict=True)
    )
    return {
        "method": model.method,
        "config_json": json.dumps(asdict(cfg), sort_keys=True),
        "dimension": model.dim,
        "sample_rows": int(sample["embeddings"].shape[0]),
        "corpus_rows": int(sum(sample["rows_per_shard"])),
        "shards": shards,
        "recall_at_10": q["recall_at_10"],
        "recall_at_10_pca3": q["recall_at_10_pca3"],
        "trustworthiness_at_10": q["trustworthiness_at_10"],
        "trustworthiness_at_10_pca3": q["trustworthiness_at_10_pca3"],
        "reference_drift": model.reference_drift,
    }


def sphere_map_log_line(row: dict, seconds: float) -> str:
    return (
        f"{SPHERE_MAP.name}: {row['method']} on {row['sample_rows']} rows in {seconds:.1f}s; "
        f"recall@10 {row['recall_at_10']:.3f} (PCA-3 {row['recall_at_10_pca3']:.3f}), "
        f"trustworthiness@10 {row['trustworthiness_at_10']:.3f} "
        f"(PCA-3 {row['trustworthiness_at_10_pca3']:.3f})"
    )


def whole_map_figure(unit: np.ndarray, shard: np.ndarray, keys: list[str]):
    """Mollweide picture of the fit sample's map directions, coloured by shard (one map: the
    shards' points interleave instead of forming four separate pictures)."""
    import matplotlib.pyplot as plt

    theta = np.arccos(np.clip(unit[:, 2], -1, 1))
    phi = np.mod(np.arctan2(unit[:, 1], unit[:, 0]), 2 * np.pi)
    rows = evenly_spaced(unit.shape[0], 4000)
    fig = plt.figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(111, projection="mollweide")
    colours = plt.get_cmap("tab10")
    for i, key in enumerate(keys):
        mine = rows[shard[rows] == i]
        ax.scatter(
            phi[mine] - np.pi, np.pi / 2 - theta[mine], s=1.5, linewidths=0,
            color=colours(i % 10), label=f"shard {key}",
        )  # fmt: skip
    ax.grid(True, linewidth=0.3)
    ax.set_xticklabels([])
    ax.legend(loc="lower center", ncol=min(len(keys), 8), fontsize=7, markerscale=5,
              bbox_to_anchor=(0.5, -0.2))  # fmt: skip
    return fig


def sphere_map_metadata(model, row: dict, sample: dict, q: dict, seconds: float, path) -> dict:
    """Everything the sphere_map materialization shows in the UI (the picture first)."""
    report = model.report
    return {
        picture_key("the whole map (fit sample, by shard)"): figure_markdown(
            whole_map_figure(q["unit"], sample["shard"], sample["keys"]),
            "Mollweide projection of the fit sample's map directions, coloured by shard",
        ),
        **row_metadata(SPHERE_MAP, 1),
        **{k: v for k, v in row.items() if k != "config_json"},
        "config": dg.MetadataValue.json(json.loads(row["config_json"])),
        "fit_seconds": round(seconds, 3),
        "layout_seconds": report.get("layout_seconds", 0.0),
        "knn_seconds": report.get("knn_seconds", 0.0),
        "layout_spread_moves": report.get("layout_spread_moves", 0),
        "loss_trace": dg.MetadataValue.json(report.get("loss_trace", [])),
        "path": dg.MetadataValue.path(str(path)),
    }
