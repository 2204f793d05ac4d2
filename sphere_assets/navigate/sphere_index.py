"""sphere_index (shard): a HEALPix cell index over shell_placements for exact cone queries.

Pure compute in ``sphere_assets.lib.sphere.cones`` (cells, CSR offsets, the exact test; its
docstring defines the cone and its boundary ties); ``io.py`` reads shell_placements and writes
the partition; the navigator (``navigate.py``) and ``sphere cone`` read it; the DuckDB catalog
gets a ``sphere_cone(...)`` table macro over its rows (``catalog_sql.py``).

Partitioned by shard, like shell_placements, on purpose: HEALPix cells are fixed by ``nside``
(nothing is fitted to the data), so the shard indexes merge by concatenation with no refit: a
query computes its candidate cells once per ``nside`` and reads every shard's CSR; a shard that
changes rebuilds only its own partition. ``nside`` 0 picks it per shard from the shard's size
(about 16 points per cell); the cell list is cached per ``nside`` at query time.

When shell_placements carries the sphere_map directions (``map_theta``, ``map_phi``: where the
map put a patch before the water-filling moved it), a second index over those
(``map.safetensors``, one band) serves the navigator's cone-candidate semantic search: a query
is placed by the same map, and embedding-space neighbours are far closer there than after the
water-filling (bench/navigate.py: 0.5 deg vs 13.7 deg median on the bundled corpus).
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
from pydantic import Field

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.navigate import io, report
from sphere_assets.navigate.contract import SPHERE_INDEX
from sphere_assets.placements.contract import SHELL_PLACEMENTS
from sphere_resources.warehouse import Warehouse, WarehouseResource

cones = lazy_module("sphere_assets.lib.sphere.cones")

CHECK_CONES = 64  # random cones per shard compared with brute force (check and metadata)


class SphereIndexConfig(dg.Config):
    nside: int = Field(0, description="HEALPix nside (power of two); 0 = ~16 points per cell")
    band_width: int = Field(16, description="shells per shell band (the CSR key is band, cell)")


def random_cone_mismatches(index, unit, shell, n: int, seed: int) -> tuple[int, int]:
    """(cones whose result differs from brute force, cones tested): ``n`` seeded random cones of
    1..30 degrees, every other one restricted to a random shell band."""
    rng = np.random.default_rng(seed)
    bad = 0
    top = int(shell.max()) if shell.size else 0
    for i in range(n):
        d = rng.standard_normal(3)
        a = np.deg2rad(rng.uniform(1.0, 30.0))
        band = None
        if i % 2:
            s0 = int(rng.integers(0, top + 1))
            band = (s0, s0 + int(rng.integers(0, 16)))
        got = np.sort(cones.cone_query(index, d, a, band)[0].rows)
        if not np.array_equal(got, cones.brute_force_cone(unit, shell, d, a, band)):
            bad += 1
    return bad, n


def index_shard(store: Warehouse, key: str, config: SphereIndexConfig) -> tuple:
    """Build and write one shard's index; (index, rows table, seconds, exactness figures)."""
    src = io.read_placements(store, key)
    t0 = time.perf_counter()
    index = cones.build_cone_index(src["unit"], src["shell"], config.nside, config.band_width)
    map_index = None
    if src["map_unit"] is not None:  # one band: the semantic search ignores shells
        map_index = cones.build_cone_index(
            src["map_unit"], np.zeros(index.size, np.int32), config.nside, 1
        )
    seconds = time.perf_counter() - t0
    io.write_sphere_index(store, key, src, index, map_index)
    bad, n = random_cone_mismatches(index, src["unit"], src["shell"], CHECK_CONES, int(key or 0))
    table = store.read_table(SPHERE_INDEX.name, key)
    exact = {"random_cones_tested": n, "random_cones_mismatched": bad}
    exact["map_directions_index"] = map_index is not None
    return index, table, seconds, exact


@dg.asset(
    name=SPHERE_INDEX.name,
    deps=[SHELL_PLACEMENTS.name],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="navigate",
    kinds={"numpy", "safetensors", "parquet"},
    owners=["team:sphere"],
    tags={"family": "navigate"},
    description=(
        "HEALPix cell index (RING, equal-area cells, nside ~16 points per cell) per shell band "
        "over shell_placements: rows sorted by (cell, band, shell), CSR offsets per (cell, band), "
        "float64 unit directions. Exact cone queries (`sphere cone`, the navigator, the DuckDB "
        "macro sphere_cone): healpy.query_disc(inclusive) candidate cells, then u.d >= cos(alpha)."
    ),
)
def sphere_index(
    context: dg.AssetExecutionContext, config: SphereIndexConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    metadata_by_partition = {}
    for key in context.partition_keys:
        index, table, seconds, exact = index_shard(store, key, config)
        context.log.info(
            f"{SPHERE_INDEX.name} shard {key}: {index.size} points, nside {index.nside}, "
            f"{index.n_bands} bands in {seconds:.2f}s; random cones mismatched "
            f"{exact['random_cones_mismatched']}/{exact['random_cones_tested']}"
        )
        metadata_by_partition[key] = report.sphere_index_metadata(
            index, table, seconds, exact, str(store.partition_dir(SPHERE_INDEX.name, key))
        )
    return partition_results(context, metadata_by_partition)


def index_problems(store: Warehouse, key: str) -> list[str]:
    """What is wrong with sphere_index/shard=key against shell_placements/shard=key."""
    index = io.load_cone_index(store, key, f"check of '{SPHERE_INDEX.name}'")
    src = io.read_placements(store, key)
    n = src["shell"].size
    problems = []
    if index.size != n:
        return [f"shard {key}: {index.size} index rows, {n} placements"]
    if index.offsets[0] != 0 or index.offsets[-1] != n or np.any(np.diff(index.offsets) < 0):
        problems.append(f"shard {key}: CSR offsets are not 0..{n} non-decreasing")
    if not np.array_equal(np.sort(index.row), np.arange(n)):
        problems.append(f"shard {key}: index rows are not a permutation of the placements")
    elif not np.array_equal(index.unit, src["unit"][index.row]):
        problems.append(f"shard {key}: stored unit vectors differ from shell_placements x, y, z")
    elif not np.array_equal(index.shell, src["shell"][index.row]):
        problems.append(f"shard {key}: stored shells differ from shell_placements")
    else:
        bad, tested = random_cone_mismatches(index, src["unit"], src["shell"], CHECK_CONES, 7)
        if bad:
            problems.append(f"shard {key}: {bad}/{tested} random cones differ from brute force")
    map_index = io.load_map_index(store, key)
    if src["map_unit"] is not None and (
        map_index is None
        or map_index.size != n
        or not np.array_equal(map_index.unit, src["map_unit"][map_index.row])
    ):
        problems.append(f"shard {key}: map.safetensors missing or not the sphere_map directions")
    return problems


@shard_check(
    asset=sphere_index,
    additional_deps=[SHELL_PLACEMENTS.name],
    description="Per shard: the index covers every placement once (rows a permutation, CSR "
    "offsets 0..N), its unit vectors and shells equal shell_placements', and 64 random cones "
    "(1-30 degrees, half with a shell band) return exactly the brute-force points.",
    blocking=True,
)
def sphere_index_exact(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, SPHERE_INDEX.name):
        problems = index_problems(store, key)
        results[key] = dg.AssetCheckResult(
            passed=not problems,
            metadata={"partitions": key, "problems": "; ".join(problems) or "-"},
        )
    yield from partition_check_results(context, results)
