"""shell_placements: every patch embedding's water-filled place on the shell sphere (per shard).

The maths lives in ``sphere_assets.lib.sphere`` (``waterfill``: lateral JAX water-filling,
``thrml_langevin``: the THRML Langevin variant, ``neighbours``, ``exports``); ``io.py`` reads
patch_embeddings and the cached SH basis and writes the partition (files listed there),
``report.py`` builds the UI metadata. The specification is ``README.md`` beside this file.

Capacities are scale-free fractions of the shard's own N, so balanced shards add up to a
balanced whole. The SH basis comes from the ``sh_basis`` partition ``L = SPHERE_SH_BAND_LIMIT``
(default 32), which is also the partition this asset depends on.
"""

import os
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
from pydantic import Field

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import (
    BAND_LIMITS,
    partitions_in_scope,
    shard_keys,
    shard_partitions,
)
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.harmonics.sh_basis import sh_basis
from sphere_assets.lib.sphere.shells import balance_report
from sphere_assets.patching.patch_embeddings import patch_embeddings
from sphere_assets.placements import io, report
from sphere_assets.placements.contract import SHELL_PLACEMENTS
from sphere_assets.placements.sphere_map import sphere_map
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.warehouse import Warehouse, WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
exports = lazy_module("sphere_assets.lib.sphere.exports")
sm = lazy_module("sphere_assets.lib.sphere.sphere_map")
sp = lazy_module("sphere_assets.lib.sphere.spreading")
tl = lazy_module("sphere_assets.lib.sphere.thrml_langevin")
wf = lazy_module("sphere_assets.lib.sphere.waterfill")

BAND_LIMIT = os.environ.get("SPHERE_SH_BAND_LIMIT", "32")
if BAND_LIMIT not in BAND_LIMITS:
    raise ValueError(f"SPHERE_SH_BAND_LIMIT={BAND_LIMIT!r} is not one of {BAND_LIMITS}")


class WaterfillSettings(dg.Config):
    """The run-configurable knobs of ``waterfill.WaterfillConfig`` (same names)."""

    n_shells: int = Field(128, description="number of shells S")
    r_min: float = Field(1.0, description="innermost shell radius")
    r_max: float = Field(2.0, description="outermost shell radius")
    kappa: float = Field(1.5, description="capacity exponent: capacity_s ~ r_s^kappa")
    n_dirs: int = Field(8, description="lateral candidate directions per point")
    lateral_step: float = Field(0.15, description="lateral step (radians)")
    lateral_threshold: float = Field(0.2, description="relative density gain for a lateral move")
    lateral_share: float = Field(0.25, description="max lateral moves per shell and pass / flux")
    max_passes: int = Field(32, description="water-filling passes at most")
    seed: int = Field(0, description="PRNG seed (same inputs + seed = byte-identical output)")

    def build(self, band_limit: int, spread: "SpreadSettings") -> "wf.WaterfillConfig":
        return wf.WaterfillConfig(band_limit=band_limit, spread=spread.build(), **self.model_dump())


class SpreadSettings(dg.Config):
    """The knobs of ``spreading.SpreadConfig``: the lateral step that opens up pile-ups."""

    enabled: bool = Field(True, description="run the spreading step")
    method: str = Field("separate", description="separate (least move) or gradient (fixed step)")
    radius_deg: float = Field(0.5, description="points of one shell closer than this repel")
    step: float = Field(0.5, description="gradient: largest move per pass, fraction of the radius")
    max_passes: int = Field(16, description="spreading passes at most")
    seed: int = Field(0, description="seed of the tie-break directions of exact duplicates")

    def build(self) -> "sp.SpreadConfig | None":
        if not self.enabled:
            return None
        return sp.SpreadConfig(
            radius_deg=self.radius_deg,
            step=self.step,
            max_passes=self.max_passes,
            seed=self.seed,
            method=self.method,
        )


class LangevinSettings(dg.Config):
    """The run-configurable knobs of ``thrml_langevin.LangevinConfig`` (same names)."""

    n_steps: int = Field(200, description="Langevin steps at temperature T")
    temperature: float = Field(1e-3, description="temperature T")
    step_size: float = Field(0.05, description="step size eta")
    knn_k: int = Field(10, description="kNN attraction partners per point")

    def build(self, waterfill: "wf.WaterfillConfig") -> "tl.LangevinConfig":
        """The Langevin run on top of ``waterfill`` (whose seed it shares)."""
        return tl.LangevinConfig(seed=waterfill.seed, waterfill=waterfill, **self.model_dump())


class ShellPlacementsConfig(dg.Config):
    method: str = Field("lateral", description="lateral (JAX water-filling) | thrml (Langevin)")
    waterfill: WaterfillSettings = Field(
        default_factory=WaterfillSettings, description="the water-filling (both methods)"
    )
    thrml: LangevinSettings = Field(
        default_factory=LangevinSettings, description="the Langevin relaxation (method=thrml)"
    )
    spread: SpreadSettings = Field(
        default_factory=SpreadSettings, description="the spreading step inside each shell"
    )
    recall_queries: int = Field(256, description="query rows for the neighbourhood recall")
    lvm_window: int = Field(5, description="LVM export: patches per input window")
    librarian_max_len: int = Field(0, description="Librarian export: bytes kept (0 = longest)")
    plot_sample: int = Field(
        4000, description="points drawn in the Mollweide picture (each adds to its PNG size)"
    )


def place_rows(
    src: dict, key: str, config: ShellPlacementsConfig, wcfg: "wf.WaterfillConfig", basis, device,
    devices, sphere_map,
) -> "wf.Placement":  # fmt: skip
    """The placement of one shard's rows by ``config.method`` with the fitted ``sphere_map``."""
    keys = io.RowKeys(src["article_id"], src["patch_index"])
    if config.method == "lateral":
        return wf.place(
            src["embeddings"], src["prominence"], config=wcfg, basis=basis, row_keys=keys,
            device=device, devices=devices, sphere_map=sphere_map,
        )  # fmt: skip
    if config.method == "thrml":
        return tl.place_thrml(
            src["embeddings"], src["prominence"], config=config.thrml.build(wcfg), basis=basis,
            row_keys=keys, device=device, sphere_map=sphere_map,
        )  # fmt: skip
    raise ValueError(
        f"asset '{SHELL_PLACEMENTS.name}', partition '{key}': method must be lateral|thrml"
    )


def place_shard(
    store: Warehouse, key: str, config: ShellPlacementsConfig, basis, device, devices=None,
    sphere_map=None,
) -> "tuple[dict, wf.Placement]":  # fmt: skip
    """Place one shard with the fitted map, write the partition atomically; returns (summary,
    placement)."""
    src = io.load_shard_embeddings(store, key)
    if sphere_map is None:
        sphere_map = io.load_sphere_map(store, for_asset=SHELL_PLACEMENTS.name)
    wcfg = config.waterfill.build(basis.L, config.spread)
    t0 = time.perf_counter()
    try:
        p = place_rows(src, key, config, wcfg, basis, device, devices, sphere_map)
    except ValueError as exc:
        raise ValueError(f"asset '{SHELL_PLACEMENTS.name}', partition '{key}': {exc}") from exc
    seconds = time.perf_counter() - t0
    emb = src["embeddings"]
    recall = report.recall_metrics(emb, p, config.recall_queries, config.waterfill.seed)
    recall.update(report.map_figures(sphere_map, p))
    librarian = exports.librarian_export_flat(
        src["bytes"], src["patch_lengths"], p.r, p.theta, p.phi, config.librarian_max_len or None
    )
    article_ids = src["article_id"].to_numpy(zero_copy_only=False)
    lvm_rows = exports.lvm_windows(article_ids, src["patch_index"], config.lvm_window)
    shell_model = io.shell_model_metadata(wcfg, config.method)
    io.write_shard(store, key, src, p, shell_model, librarian, lvm_rows, config.lvm_window)
    lvm_windows = int(lvm_rows.shape[0])
    return report.shard_summary(key, p, seconds, config.method, lvm_windows, recall), p


@dg.asset(
    name=SHELL_PLACEMENTS.name,
    deps=[
        patch_embeddings,
        sphere_map,
        dg.AssetDep(
            sh_basis,
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
        "capacity ~ r^1.5, largest-remainder targets): direction and information score from "
        "the one fitted sphere_map (the same embedding lands on the same direction in every "
        "shard), rank start, overflow of the most prominent outward with an SH density lateral "
        "search (the incremental case), then spreading of pile-ups inside each shell down a "
        "kernel density (method=lateral), or THRML Langevin relaxation (method=thrml). Parquet "
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
    basis = io.load_basis(store, BAND_LIMIT)
    model = io.load_sphere_map(store, for_asset=SHELL_PLACEMENTS.name)
    metadata_by_partition = {}
    for key in context.partition_keys:
        summary, p = place_shard(store, key, config, basis, device, devices, model)
        context.log.info(report.shard_log_line(summary))
        metadata_by_partition[key] = report.materialization_metadata(
            method=config.method,
            n_shells=config.waterfill.n_shells,
            band_limit=basis.L,
            summaries=[summary],
            placements=[p],
            seconds=summary["seconds"],
            first_table=io.first_rows_table(store, key),
            plot_sample=config.plot_sample,
            jax_metadata=jax.metadata(),
            devices_used=1 if devices is None or config.method != "lateral" else len(devices),
            path=io.partition_path(store, key),
        )
    return partition_results(context, metadata_by_partition)


# --- checks -----------------------------------------------------------------------------------


def balance_problems(store: Warehouse, keys: list[str]) -> tuple[list[str], int]:
    """(problems, worst |count - target|) of the balance rule over partitions `keys`."""
    problems, worst = [], 0
    for key in keys:
        meta = io.read_shell_model(store, key)
        shells = io.read_shells(store, key)
        cfg, targets = io.stored_shell_targets(store, key)
        if shells.size and (shells.min() < 0 or shells.max() >= cfg.n_shells):
            problems.append(f"shard {key}: shell index outside [0, {cfg.n_shells})")
            continue
        counts = np.bincount(shells, minlength=cfg.n_shells)
        rep = balance_report(counts, targets, float(meta["tol_frac"]), float(meta["tol_min"]))
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
        meta = io.read_shell_model(store, key)
        c = io.read_coordinates(store, key)
        n = c["r"].size
        rows += n
        n_emb = io.embedding_rows(store, key)
        if n != n_emb:
            problems.append(f"shard {key}: {n} rows but {n_emb} embeddings")
        if not n:
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


def _check_result(key: str, problems: list[str], **values) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"partitions": key, **values, "problems": "; ".join(problems) or "-"},
    )


@shard_check(
    asset=shell_placements,
    description="Balance, per shard: in every shard every shell holds its largest-remainder target within "
    "max(1, 1% of the target) points (targets rebuilt from the stored shell model and N).",
    blocking=True,
)
def shell_placements_balanced(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, SHELL_PLACEMENTS.name):
        problems, worst = balance_problems(store, [key])
        results[key] = _check_result(key, problems, max_abs_deviation=worst)
    yield from partition_check_results(context, results)


@shard_check(
    asset=shell_placements,
    additional_deps=[patch_embeddings],
    description="Per shard: coordinates are finite, r in [r_min, r_max], theta in [0, pi], phi in "
    "[0, 2 pi), (x, y, z) = r (sin theta cos phi, sin theta sin phi, cos theta), and the row "
    "count equals the patch_embeddings row count.",
    blocking=True,
)
def shell_placements_coordinates_valid(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, SHELL_PLACEMENTS.name):
        problems, rows = coordinate_problems(store, [key])
        results[key] = _check_result(key, problems, rows=rows)
    yield from partition_check_results(context, results)
