"""shell_placements: every patch embedding's water-filled place on the shell sphere (per shard).

The maths lives in ``sphere_assets.lib.sphere.waterfill`` (lateral JAX water-filling) and
``sphere_assets.lib.sphere.thrml_langevin`` (the THRML Langevin variant); this module reads
patch_embeddings and the cached SH basis, calls them, writes, measures and checks.

Per shard ``shell_placements/shard=<k>/``:

* ``part-0.parquet`` -- one row per patch_embeddings row (same order): keys, shell, r, theta,
  phi, x, y, z, prominence, promotions, lateral_moves;
* ``coordinates.safetensors`` -- ``xyz`` [P, 3], ``rtp`` [P, 3] (r, theta, phi), ``shell`` [P]
  (metadata: the shell model, so checks and readers can rebuild radii and targets);
* ``librarian.safetensors`` -- patch bytes [P, max_len] (zero padded), lengths, target
  (r, theta, phi): the Librarian training export;
* ``lvm.safetensors`` -- ``inputs`` [M, W, D] windows of W consecutive patch embeddings of one
  article, ``target`` [M, D] the next patch's embedding, ``rows`` [M, W + 1].

Capacities are scale-free fractions of the shard's own N, so balanced shards add up to a
balanced whole. The SH basis comes from the ``sh_basis`` partition ``L = SPHERE_SH_BAND_LIMIT``
(default 32), which is also the partition this asset depends on.
"""

import os
import time

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from sphere_assets.core.metadata import (
    figure_markdown,
    new_figure,
    preview_markdown,
    row_metadata,
)
from sphere_assets.core.partitions import (
    BAND_LIMITS,
    partitions_in_scope,
    shard_keys,
    shard_partitions,
)
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.lib.sphere import thrml_langevin as tl
from sphere_assets.lib.sphere import waterfill as wf
from sphere_assets.patching import assets as patching
from sphere_assets.placements.contract import SHELL_PLACEMENTS, SHELL_PLACEMENTS_SCHEMA
from sphere_resources.contracts import ContractError
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.warehouse import Warehouse, WarehouseResource

ASSET = "shell_placements"
EMBEDDINGS = patching.EMBEDDINGS_ASSET
COORD_STEM = "coordinates"
LIBRARIAN_STEM = "librarian"
LVM_STEM = "lvm"
FORMAT = "sphere.shell_placements.v1"
BAND_LIMIT = os.environ.get("SPHERE_SH_BAND_LIMIT", "32")
if BAND_LIMIT not in BAND_LIMITS:
    raise ValueError(f"SPHERE_SH_BAND_LIMIT={BAND_LIMIT!r} is not one of {BAND_LIMITS}")


class ShellPlacementsConfig(dg.Config):
    method: str = Field("lateral", description="lateral (JAX water-filling) | thrml (Langevin)")
    n_shells: int = Field(128, description="number of shells S")
    r_min: float = Field(1.0, description="innermost shell radius")
    r_max: float = Field(2.0, description="outermost shell radius")
    kappa: float = Field(1.5, description="capacity exponent: capacity_s ~ r_s^kappa")
    spread_weight: float = Field(0.5, description="weight of the concentration in the score")
    n_dirs: int = Field(8, description="lateral candidate directions per point")
    lateral_step: float = Field(0.15, description="lateral step (radians)")
    lateral_threshold: float = Field(0.2, description="relative density gain for a lateral move")
    lateral_share: float = Field(0.25, description="max lateral moves per shell and pass / flux")
    max_passes: int = Field(32, description="water-filling passes at most")
    seed: int = Field(0, description="PRNG seed (same inputs + seed = byte-identical output)")
    thrml_steps: int = Field(200, description="thrml: Langevin steps at temperature T")
    thrml_temperature: float = Field(1e-3, description="thrml: temperature T")
    thrml_step_size: float = Field(0.05, description="thrml: step size eta")
    thrml_knn_k: int = Field(10, description="thrml: kNN attraction partners per point")
    recall_queries: int = Field(256, description="query rows for the neighbourhood recall")
    lvm_window: int = Field(5, description="LVM export: patches per input window")
    librarian_max_len: int = Field(0, description="Librarian export: bytes kept (0 = longest)")
    plot_sample: int = Field(20000, description="points drawn in the Mollweide picture")

    def waterfill(self, band_limit: int) -> wf.WaterfillConfig:
        return wf.WaterfillConfig(
            n_shells=self.n_shells,
            r_min=self.r_min,
            r_max=self.r_max,
            kappa=self.kappa,
            spread_weight=self.spread_weight,
            band_limit=band_limit,
            n_dirs=self.n_dirs,
            lateral_step=self.lateral_step,
            lateral_threshold=self.lateral_threshold,
            lateral_share=self.lateral_share,
            max_passes=self.max_passes,
            seed=self.seed,
        )

    def langevin(self, band_limit: int) -> tl.LangevinConfig:
        return tl.LangevinConfig(
            n_steps=self.thrml_steps,
            temperature=self.thrml_temperature,
            step_size=self.thrml_step_size,
            knn_k=self.thrml_knn_k,
            seed=self.seed,
            waterfill=self.waterfill(band_limit),
        )


class RowKeys:
    """(article_id, patch_index) of row i, built only when an error names rows."""

    def __init__(self, article_ids: pa.Array, patch_index: np.ndarray):
        self.article_ids = article_ids
        self.patch_index = patch_index

    def __len__(self) -> int:
        return len(self.patch_index)

    def __getitem__(self, i: int):
        return (self.article_ids[i].as_py(), int(self.patch_index[i]))


def load_shard_embeddings(store: Warehouse, key: str) -> dict:
    """Embeddings, prominence, keys and patch bytes of patch_embeddings/shard=key (row order)."""
    arrays, _ = store.read_tensors(EMBEDDINGS, key, patching.EMBEDDINGS_STEM)
    v3, _ = store.read_tensors(EMBEDDINGS, key, patching.BLT_V3_STEM)
    side = store.read_table(EMBEDDINGS, key, ["article_id", "patch_index"])
    n = arrays["embeddings"].shape[0]
    if side.num_rows != n or v3["patch_lengths"].shape[0] != n:
        raise ContractError(
            EMBEDDINGS,
            key,
            "<rows>",
            f"{n} embeddings, {side.num_rows} side rows, {v3['patch_lengths'].shape[0]} patches",
        )
    return {
        "embeddings": arrays["embeddings"],
        "prominence": arrays["prominence"],
        "article_id": side.column("article_id").combine_chunks(),
        "patch_index": np.asarray(arrays["patch_index"]),
        "bytes": v3["bytes"],
        "patch_lengths": v3["patch_lengths"],
    }


def placement_table(src: dict, p: wf.Placement) -> pa.Table:
    return pa.table(
        {
            "article_id": src["article_id"].cast(pa.string()),
            "patch_index": pa.array(src["patch_index"].astype(np.int32)),
            "shell": pa.array(p.shell.astype(np.int32)),
            "r": pa.array(p.r),
            "theta": pa.array(p.theta),
            "phi": pa.array(p.phi),
            "x": pa.array(np.ascontiguousarray(p.xyz[:, 0])),
            "y": pa.array(np.ascontiguousarray(p.xyz[:, 1])),
            "z": pa.array(np.ascontiguousarray(p.xyz[:, 2])),
            "prominence": pa.array(p.prominence),
            "promotions": pa.array(p.promotions.astype(np.int32)),
            "lateral_moves": pa.array(p.lateral_moves.astype(np.int32)),
        },
        schema=SHELL_PLACEMENTS_SCHEMA,
    )


def shell_model_metadata(cfg: wf.WaterfillConfig, method: str) -> dict[str, str]:
    """String metadata of coordinates.safetensors: enough to rebuild radii, targets, tolerance."""
    return {
        "format": FORMAT,
        "method": method,
        "n_shells": str(cfg.n_shells),
        "r_min": repr(cfg.r_min),
        "r_max": repr(cfg.r_max),
        "kappa": repr(cfg.kappa),
        "tol_frac": repr(cfg.tol_frac),
        "tol_min": repr(cfg.tol_min),
        "band_limit": str(cfg.band_limit),
        "seed": str(cfg.seed),
        "radii": "r_s = r_min + (r_max - r_min) sqrt(s / (S - 1))",
        "targets": "largest remainder of N r_s^kappa / sum r^kappa",
        "rtp": "(r, theta, phi): theta in [0, pi], phi in [0, 2 pi)",
    }


def place_shard(
    store: Warehouse, key: str, config: ShellPlacementsConfig, basis, device, devices=None
) -> tuple[dict, wf.Placement]:
    """Place one shard, write the partition atomically; returns (summary, placement)."""
    src = load_shard_embeddings(store, key)
    keys = RowKeys(src["article_id"], src["patch_index"])
    wcfg = config.waterfill(basis.L)
    t0 = time.perf_counter()
    if config.method == "lateral":
        p = wf.place(
            src["embeddings"], src["prominence"], config=wcfg, basis=basis, row_keys=keys,
            device=device, devices=devices,
        )  # fmt: skip
    elif config.method == "thrml":
        p = tl.place_thrml(
            src["embeddings"], src["prominence"], config=config.langevin(basis.L), basis=basis,
            row_keys=keys, device=device,
        )  # fmt: skip
    else:
        raise ValueError(f"asset '{ASSET}', partition '{key}': method must be lateral|thrml")
    seconds = time.perf_counter() - t0
    n = p.shell.size
    emb = src["embeddings"]
    recall = {
        "recall_at_10_placed": wf.neighbourhood_recall(emb, p.unit, 10, config.recall_queries),
        "recall_at_10_projection": wf.neighbourhood_recall(
            emb, p.start_unit, 10, config.recall_queries
        ),
        "recall_at_10_random": wf.neighbourhood_recall(
            emb, wf.random_unit(n, config.seed), 10, config.recall_queries
        ),
    }
    lib = wf.librarian_export_flat(
        src["bytes"], src["patch_lengths"], p.r, p.theta, p.phi, config.librarian_max_len or None
    )
    lvm = wf.lvm_sequences(emb, src["article_id"].to_numpy(zero_copy_only=False),
                           src["patch_index"], config.lvm_window)  # fmt: skip
    meta = shell_model_metadata(wcfg, config.method)
    with store.partition_writer(ASSET, key) as writer:
        writer.write_tensors(
            COORD_STEM,
            {
                "xyz": np.ascontiguousarray(p.xyz, np.float32),
                "rtp": np.ascontiguousarray(np.stack([p.r, p.theta, p.phi], 1), np.float32),
                "shell": p.shell.astype(np.int32),
            },
            meta,
        )
        writer.write_tensors(
            LIBRARIAN_STEM, lib, {"format": FORMAT, "bytes": "patch bytes, zero padded"}
        )
        writer.write_tensors(
            LVM_STEM,
            {
                "inputs": lvm["inputs"],
                "target": lvm["target"],
                "rows": lvm["rows"].astype(np.int64),
            },
            {"format": FORMAT, "window": str(config.lvm_window), "rows": "row numbers"},
        )
        writer.write_table(placement_table(src, p))
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
        "lvm_windows": int(lvm["rows"].shape[0]),
        **recall,
    }
    if config.method == "thrml":
        summary["energy_first"] = st["energy_trace"][0]
        summary["energy_last"] = st["energy_trace"][-1]
        summary["energy_decreased"] = st["energy_decreased"]
    return summary, p


def occupancy_figure(counts: np.ndarray, targets: np.ndarray):
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
    import matplotlib.pyplot as plt

    rows = wf.evenly_spaced(p.shell.size, sample)
    fig = plt.figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(111, projection="mollweide")
    lon = np.asarray(p.phi[rows], np.float64) - np.pi  # [-pi, pi)
    lat = np.pi / 2 - np.asarray(p.theta[rows], np.float64)
    sc = ax.scatter(lon, lat, c=p.shell[rows], s=1.5, cmap="viridis", linewidths=0)
    ax.grid(True, linewidth=0.3)
    ax.set_xticklabels([])
    fig.colorbar(sc, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04, label="shell")
    return fig


@dg.asset(
    deps=[
        patching.patch_embeddings,
        dg.AssetDep(
            harmonics.sh_basis,
            partition_mapping=dg.StaticPartitionMapping({BAND_LIMIT: shard_keys()}),
        ),
    ],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="placements",
    kinds={"jax", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "placements"},
    description=(
        "Water-filled place of every patch embedding on S radial shells (sqrt-spaced radii, "
        "capacity ~ r^1.5, largest-remainder targets): rank start from an information score, "
        "PCA-3 angles, overflow of the most prominent (z-scored per shell) outward with an SH "
        "density lateral search before each promotion (method=lateral), or THRML Langevin "
        "relaxation with sparse kNN attraction and density repulsion (method=thrml). Parquet "
        "rows + coordinates / librarian / lvm safetensors."
    ),
)
def shell_placements(
    context: dg.AssetExecutionContext,
    config: ShellPlacementsConfig,
    warehouse: WarehouseResource,
    jax: JaxDeviceResource,
) -> dg.MaterializeResult:
    store = warehouse.store()
    device = jax.device()
    local = jax.local_devices()  # points are sharded over them when there are several
    devices = local if len(local) > 1 else None
    try:
        basis = harmonics.load_sh_basis(store, BAND_LIMIT)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"asset '{ASSET}': sh_basis partition L={BAND_LIMIT} is not materialized "
            f"(materialize sh_basis L={BAND_LIMIT} first, or set SPHERE_SH_BAND_LIMIT)"
        ) from exc
    summaries, placements = [], []
    t0 = time.perf_counter()
    for key in context.partition_keys:
        summary, p = place_shard(store, key, config, basis, device, devices)
        context.log.info(
            f"{ASSET} shard {key}: {summary['points']} points in {summary['seconds']:.2f}s "
            f"({summary['points_per_s']:.0f}/s), passes {summary['passes']}, balanced "
            f"{summary['balanced']} (max |dev| {summary['max_abs_deviation']})"
        )
        summaries.append(summary)
        placements.append(p)
    seconds = time.perf_counter() - t0
    n = sum(s["points"] for s in summaries)
    counts = np.sum([p.counts for p in placements], axis=0)
    targets = np.sum([p.targets for p in placements], axis=0)
    whole = wf.balance_report(counts, targets)
    first = placements[0]
    table = store.read_table(ASSET, summaries[0]["shard"])
    metadata = {
        **row_metadata(SHELL_PLACEMENTS, n),
        "method": config.method,
        "shards": ",".join(s["shard"] for s in summaries),
        "n_shells": config.n_shells,
        "band_limit": basis.L,
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
        "recall_at_10_placed": float(np.mean([s["recall_at_10_placed"] for s in summaries])),
        "recall_at_10_projection": float(
            np.mean([s["recall_at_10_projection"] for s in summaries])
        ),
        "recall_at_10_random": float(np.mean([s["recall_at_10_random"] for s in summaries])),
        "lvm_windows": sum(s["lvm_windows"] for s in summaries),
        "occupancy_vs_capacity": figure_markdown(
            occupancy_figure(counts, targets), "occupancy vs capacity per shell"
        ),
        "mollweide": figure_markdown(
            mollweide_figure(first, config.plot_sample),
            f"Mollweide projection of shard {summaries[0]['shard']}, coloured by shell",
        ),
        "preview": preview_markdown(
            table, ["article_id", "patch_index", "shell", "r", "theta", "phi"]
        ),
        "per_shard": dg.MetadataValue.md(
            "| shard | points | s | points/s | passes | lateral | max dev | recall@10 |\n"
            "|---|---|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {s['shard']} | {s['points']} | {s['seconds']:.2f} | {s['points_per_s']:.0f} "
                f"| {s['passes']} | {s['lateral_moves']} | {s['max_abs_deviation']} | "
                f"{s['recall_at_10_placed']:.3f} |"
                for s in summaries
            )
        ),
        **jax.metadata(),
        "jax/devices_used": 1 if devices is None or config.method != "lateral" else len(devices),
        "path": dg.MetadataValue.path(str(store.partition_dir(ASSET, summaries[0]["shard"]))),
    }
    if config.method == "thrml":
        metadata["energy_decreased"] = all(s["energy_decreased"] for s in summaries)
        metadata["energy_trace_first_shard"] = dg.MetadataValue.json(
            [round(e, 4) for e in first.stats["energy_trace"]]
        )
    return dg.MaterializeResult(metadata=metadata)


def _shell_model(store: Warehouse, key: str) -> dict[str, str]:
    _, meta = store.read_tensors(ASSET, key, COORD_STEM)
    if meta.get("format") != FORMAT:
        raise ContractError(ASSET, key, f"{COORD_STEM}.format", f"{meta.get('format')!r}")
    return meta


def balance_problems(store: Warehouse, keys: list[str]) -> tuple[list[str], int]:
    """(problems, worst |count - target|) of the balance rule over partitions `keys`."""
    problems, worst = [], 0
    for key in keys:
        meta = _shell_model(store, key)
        shells = store.read_table(ASSET, key, ["shell"]).column("shell").to_numpy()
        cfg = wf.WaterfillConfig(
            n_shells=int(meta["n_shells"]),
            r_min=float(meta["r_min"]),
            r_max=float(meta["r_max"]),
            kappa=float(meta["kappa"]),
        )
        _, targets = wf.shell_targets(shells.size, cfg)
        if shells.size and (shells.min() < 0 or shells.max() >= cfg.n_shells):
            problems.append(f"shard {key}: shell index outside [0, {cfg.n_shells})")
            continue
        counts = np.bincount(shells, minlength=cfg.n_shells)
        rep = wf.balance_report(counts, targets, float(meta["tol_frac"]), float(meta["tol_min"]))
        worst = max(worst, rep["max_abs_deviation"])
        if not rep["ok"]:
            problems.append(
                f"shard {key}: shells {rep['shells_out_of_tolerance']} out of tolerance"
            )
    return problems, worst


def coordinate_problems(store: Warehouse, keys: list[str]) -> tuple[list[str], int]:
    """(problems, rows) of the coordinate rules over partitions `keys`."""
    problems, rows = [], 0
    for key in keys:
        meta = _shell_model(store, key)
        t = store.read_table(ASSET, key, ["r", "theta", "phi", "x", "y", "z"])
        c = {name: t.column(name).to_numpy().astype(np.float64) for name in t.column_names}
        rows += t.num_rows
        n_emb = store.read_table(EMBEDDINGS, key, ["patch_index"]).num_rows
        if t.num_rows != n_emb:
            problems.append(f"shard {key}: {t.num_rows} rows but {n_emb} embeddings")
        if not t.num_rows:
            continue
        if not all(np.isfinite(v).all() for v in c.values()):
            problems.append(f"shard {key}: non-finite coordinates")
            continue
        r_min, r_max = float(meta["r_min"]), float(meta["r_max"])
        if c["r"].min() < np.float32(r_min) or c["r"].max() > np.float32(r_max):
            problems.append(f"shard {key}: r outside [{r_min}, {r_max}]")
        if c["theta"].min() < 0 or c["theta"].max() > np.float32(np.pi):
            problems.append(f"shard {key}: theta outside [0, pi]")
        if c["phi"].min() < 0 or c["phi"].max() >= np.float32(2 * np.pi):
            problems.append(f"shard {key}: phi outside [0, 2 pi)")
        st = np.sin(c["theta"])
        xyz = c["r"][:, None] * np.stack(
            [st * np.cos(c["phi"]), st * np.sin(c["phi"]), np.cos(c["theta"])], axis=1
        )
        err = np.abs(xyz - np.stack([c["x"], c["y"], c["z"]], axis=1)).max()
        if err > 1e-4 * r_max:
            problems.append(f"shard {key}: xyz differs from (r, theta, phi) by {err:.2e}")
    return problems, rows


@dg.asset_check(
    asset=shell_placements,
    description="Balance: in every shard every shell holds its largest-remainder target within "
    "max(1, 1% of the target) points (targets rebuilt from the stored shell model and N).",
    blocking=True,
)
def shell_placements_balanced(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, ASSET)
    problems, worst = balance_problems(store, keys)
    return dg.AssetCheckResult(
        passed=bool(keys) and not problems,
        metadata={
            "partitions": ",".join(keys) or "-",
            "max_abs_deviation": worst,
            "problems": "; ".join(problems) or ("-" if keys else "no partitions on disk"),
        },
    )


@dg.asset_check(
    asset=shell_placements,
    additional_deps=[patching.patch_embeddings],
    description="Coordinates are finite, r in [r_min, r_max], theta in [0, pi], phi in "
    "[0, 2 pi), (x, y, z) = r (sin theta cos phi, sin theta sin phi, cos theta), and the row "
    "count equals the patch_embeddings row count.",
    blocking=True,
)
def shell_placements_coordinates_valid(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, ASSET)
    problems, rows = coordinate_problems(store, keys)
    return dg.AssetCheckResult(
        passed=bool(keys) and not problems,
        metadata={
            "partitions": ",".join(keys) or "-",
            "rows": rows,
            "problems": "; ".join(problems) or ("-" if keys else "no partitions on disk"),
        },
    )


ASSETS = [shell_placements]
CHECKS = [shell_placements_balanced, shell_placements_coordinates_valid]
