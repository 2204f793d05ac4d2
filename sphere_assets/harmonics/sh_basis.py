"""sh_basis: cached real spherical-harmonic bases, one partition per band limit L.

The maths (grid, quadrature, Legendre recursion, table layout, transforms) lives in
``sphere_assets.lib.sphere.sht``; this module builds, measures and checks; ``io.py`` stores.
Readers load a partition with ``harmonics.io.load_sh_basis`` and transform with
``sht.synthesis`` / ``sht.analysis`` (``sht.sht_plan(basis, device=jax.device())`` for a device
plan).
"""

import hashlib
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np

from sphere_assets.core.checks import partition_check_results, partitioned_check
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import band_limit_partitions, partitions_in_scope
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.harmonics import io, report
from sphere_assets.harmonics.contract import SH_BASIS
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.warehouse import Warehouse, WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
sht = lazy_module("sphere_assets.lib.sphere.sht")

GRAM_TOLERANCE = 1e-12
ROUND_TRIP_SIGNALS = 4


def round_trip_error(basis: "sht.ShBasis", device) -> tuple[float, float]:
    """(relative error, seconds) of analysis(synthesis(c)) for fixed random c on ``device``."""
    plan = sht.sht_plan(basis, device=device)
    rng = np.random.default_rng(basis.L)
    coeffs = rng.standard_normal((ROUND_TRIP_SIGNALS, basis.L * basis.L))
    sht.analysis(plan, sht.synthesis(plan, coeffs)).block_until_ready()  # compile
    start = time.perf_counter()
    back = np.asarray(sht.analysis(plan, sht.synthesis(plan, coeffs)).block_until_ready())
    seconds = time.perf_counter() - start
    return float(np.linalg.norm(back - coeffs) / np.linalg.norm(coeffs)), seconds


def build_and_write(store: Warehouse, L: int, device) -> dict:
    """Build, measure and atomically write partition L; returns its metadata values."""
    start = time.perf_counter()
    basis = sht.build_basis(L)
    build_seconds = time.perf_counter() - start
    diagnostics = sht.basis_diagnostics(basis)
    rt_error, rt_seconds = round_trip_error(basis, device)
    data = io.write_basis(store, basis, diagnostics)
    return {
        "L": L,
        "grid": f"{basis.n_theta} x {basis.n_phi} (theta x phi), Fejer-1 rings, no poles",
        "n_coeffs": L * L,
        "build_seconds": round(build_seconds, 4),
        **diagnostics,
        "round_trip_rel_error": rt_error,
        f"round_trip_ms_x{ROUND_TRIP_SIGNALS}": round(rt_seconds * 1e3, 3),
        "tensor_bytes": len(data),
        "tensor_sha256": hashlib.sha256(data).hexdigest(),
    }


@dg.asset(
    name=SH_BASIS.name,
    partitions_def=band_limit_partitions,
    group_name="harmonics",
    kinds={"jax", "numpy", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    backfill_policy=dg.BackfillPolicy.single_run(),
    owners=["team:sphere"],
    tags={"family": "harmonics"},
    description=(
        "Real spherical-harmonic basis for band limit L (partition key): equiangular 2L x 2L "
        "grid (no poles), exact Fejer-1 quadrature weights and the orthonormal associated "
        "Legendre table on the half grid, float64, in basis.safetensors; one summary row in "
        "Parquet (queryable in DuckDB as sh_basis, with column L from the path)."
    ),
)
def sh_basis(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, jax: JaxDeviceResource
) -> dg.MaterializeResult:
    keys = list(context.partition_keys)  # one or more band limits (single-run backfills)
    if not jax.enable_x64:
        raise ValueError(
            f"asset '{SH_BASIS.name}', partitions {keys}: the float64 basis needs the jax "
            "resource's enable_x64=True"
        )
    device = jax.device()  # configures x64 / platform before any transform
    stats = [build_and_write(warehouse.store(), int(key), device) for key in keys]
    for st in stats:
        context.log.info(
            f"sh_basis L={st['L']}: built in {st['build_seconds']:.3f}s, gram error "
            f"{st['max_gram_error']:.1e}, round trip {st['round_trip_rel_error']:.1e} on {device}"
        )
    return partition_results(
        context,
        {
            key: report.materialization_metadata(
                st, jax.metadata(), warehouse.partition_dir(SH_BASIS.name, key)
            )
            for key, st in zip(keys, stats, strict=True)
        },
    )


def band_limit_check_result(store: Warehouse, key: str) -> dg.AssetCheckResult:
    """The orthonormality check of one stored band limit (a failure when it is not on disk)."""
    if key not in io.stored_partitions(store):
        return dg.AssetCheckResult(
            passed=False, metadata={"L": int(key), "problem": f"sh_basis L={key} not on disk"}
        )
    d = sht.basis_diagnostics(io.load_sh_basis(store, key))
    hash_ok = io.tensor_file_matches_row(store, key)
    return dg.AssetCheckResult(
        passed=(
            d["max_gram_error"] <= GRAM_TOLERANCE
            and d["max_addition_error"] <= GRAM_TOLERANCE
            and d["n_zero_columns"] == 0
            and d["n_nonfinite"] == 0
            and hash_ok
        ),
        metadata={
            "L": int(key),
            "max_gram_error": d["max_gram_error"],
            "max_addition_error": d["max_addition_error"],
            "n_zero_columns": d["n_zero_columns"],
            "n_nonfinite": d["n_nonfinite"],
            "sha256_mismatch": "-" if hash_ok else key,
        },
    )


@partitioned_check(
    band_limit_partitions,
    asset=sh_basis,
    description=(
        "Per band limit: the stored basis is orthonormal on its grid (max |G - I| <= 1e-12, "
        "addition theorem <= 1e-12 relative), has no NaN/inf and no all-zero (l, m) column, and "
        "its bytes match the summary row's sha256."
    ),
    blocking=True,
)
def sh_basis_orthonormal(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    keys = partitions_in_scope(context, store, SH_BASIS.name)
    yield from partition_check_results(
        context, {key: band_limit_check_result(store, key) for key in keys}
    )
