"""sh_basis materialized into a temporary warehouse: files on disk, DuckDB, the check."""

import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sphere_assets.definitions import duckdb_catalog
from sphere_assets.harmonics import io as harmonics_io
from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.harmonics.contract import SH_BASIS_SCHEMA
from sphere_assets.lib.sphere import sht
from sphere_resources.contracts import ContractError
from sphere_resources.store import read_safetensors

ASSETS = [harmonics.sh_basis, harmonics.sh_basis_orthonormal]


def materialize(resources, key):
    res = dg.materialize(ASSETS, partition_key=key, resources=resources)
    assert res.success
    return res


def materialization_metadata(result):
    (mat,) = result.asset_materializations_for_node("sh_basis")
    return {k: v.value for k, v in mat.metadata.items()}


def check_result(result):
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def check_results(result) -> dict:
    """The run's check evaluations by partition (None: the summary of a check run alone)."""
    return {e.partition: e for e in result.get_asset_check_evaluations()}


def test_sh_basis_partition_files_metadata_and_check(resources):
    res = materialize(resources, "16")
    part = Path(resources["warehouse"].root) / "sh_basis" / "L=16"
    assert sorted(p.name for p in part.iterdir()) == [
        "_manifest.json",
        "basis.safetensors",
        "part-0.parquet",
    ]

    tensors, meta = read_safetensors(part / "basis.safetensors")
    assert meta["L"] == "16" and meta["partition"] == "16" and meta["asset"] == "sh_basis"
    assert meta["format"] == sht.FORMAT and "layout" in meta and "condon_shortley" in meta
    basis = sht.basis_from_tensors(tensors, meta)
    fresh = sht.build_basis(16)
    for name in ("theta", "phi", "weights", "legendre"):
        assert tensors[name].dtype == np.float64
        np.testing.assert_array_equal(getattr(basis, name), getattr(fresh, name))
    c = np.random.default_rng(0).standard_normal(16 * 16)
    np.testing.assert_allclose(
        np.asarray(sht.analysis(basis, sht.synthesis(basis, c))), c, atol=1e-12
    )

    table = pq.read_table(part / "part-0.parquet")
    assert table.schema.names == SH_BASIS_SCHEMA.names and table.num_rows == 1
    row = table.to_pylist()[0]
    data = (part / "basis.safetensors").read_bytes()
    assert row["tensor_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["n_theta"] == 32 and row["n_phi"] == 32 and row["n_coeffs"] == 256

    meta = materialization_metadata(res)
    assert meta["L"] == 16 and meta["max_gram_error"] <= 1e-12
    assert meta["round_trip_rel_error"] <= 1e-12 and meta["build_seconds"] >= 0
    assert meta["jax/platform"] == "cpu" and "grid" in meta
    evaluation = check_result(res)
    assert evaluation.passed and evaluation.partition == "16"
    assert evaluation.metadata["max_gram_error"].value <= 1e-12
    assert evaluation.metadata["L"].value == 16

    # re-materializing gives byte-identical files
    first = {p.name: p.read_bytes() for p in part.iterdir()}
    materialize(resources, "16")
    assert {p.name: p.read_bytes() for p in part.iterdir()} == first


@pytest.mark.slow  # a second band limit and the catalog (tests/catalog covers the views)
def test_sh_basis_rows_through_duckdb_catalog(resources):
    for key in ("16", "32"):
        materialize(resources, key)
    res = dg.materialize(
        [harmonics.sh_basis, duckdb_catalog], selection=[duckdb_catalog], resources=resources
    )
    assert res.success
    con = duckdb.connect(resources["catalog"].path, read_only=True)
    rows = con.execute(
        "select L, n_theta, n_coeffs, max_gram_error, n_zero_columns from sh_basis order by L"
    ).fetchall()
    con.close()
    assert [(int(r[0]), r[1], r[2]) for r in rows] == [(16, 32, 256), (32, 64, 1024)]
    assert all(r[3] <= 1e-12 and r[4] == 0 for r in rows)


def rewrite_tensors(store, key, tensors, meta):
    """Replace the partition's tensors through the storage layer (its manifest then matches:
    these tests are about bad numbers a writer produced, not about damaged files), keeping the
    summary row as it was."""
    row = store.read_table("sh_basis", key)
    with store.partition_writer("sh_basis", key) as writer:
        writer.write_tensors("basis", tensors, meta)
        writer.write_table(row)


def test_check_fails_on_a_corrupted_table(resources):
    materialize(resources, "16")
    store = resources["warehouse"].store()
    part = store.partition_dir("sh_basis", "16")
    tensors, meta = read_safetensors(part / "basis.safetensors")
    broken = dict(tensors)
    legendre = np.array(broken["legendre"])
    legendre[5] = 0.0  # one (l, m) column underflowed to zero, as in the research code
    broken["legendre"] = legendre
    rewrite_tensors(store, "16", broken, meta)
    res = dg.materialize(
        ASSETS,
        resources=resources,
        selection=dg.AssetSelection.checks(harmonics.sh_basis_orthonormal),
        raise_on_error=False,  # a failing blocking check fails its step
    )
    assert not res.success
    evaluations = check_results(res)
    assert set(evaluations) == {"16", None}  # the band limit on disk, and the run's summary
    evaluation = evaluations["16"]
    assert not evaluation.passed
    assert evaluation.metadata["n_zero_columns"].value == 1
    assert evaluation.metadata["sha256_mismatch"].value == "16"
    assert not evaluations[None].passed
    assert evaluations[None].metadata["failed_partitions"].value == "16"


def test_load_sh_basis_names_partition_on_bad_file(resources):
    materialize(resources, "16")
    store = resources["warehouse"].store()
    assert harmonics_io.load_sh_basis(store, 16).L == 16
    part = store.partition_dir("sh_basis", "16")
    tensors, meta = read_safetensors(part / "basis.safetensors")
    meta = dict(meta, m_blocks="0:16:8")
    rewrite_tensors(store, "16", tensors, meta)
    with pytest.raises(ContractError, match="sh_basis.*'16'"):
        harmonics_io.load_sh_basis(store, "16")


def test_partition_range_in_one_run_writes_each_band_limit(resources):
    res = dg.materialize(
        ASSETS,
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": "16",
            "dagster/asset_partition_range_end": "32",
        },
    )
    assert res.success
    root = Path(resources["warehouse"].root) / "sh_basis"
    assert sorted(p.name for p in root.iterdir()) == ["L=16", "L=32"]
    mats = res.asset_materializations_for_node("sh_basis")
    assert sorted(m.partition for m in mats) == ["16", "32"]
    # each partition's materialization carries its own band limit, row count, path and errors
    for m in mats:
        meta = {k: v.value for k, v in m.metadata.items()}
        assert meta["L"] == int(m.partition) and meta["dagster/row_count"] == 1
        assert meta["max_gram_error"] <= 1e-12 and meta["round_trip_rel_error"] <= 1e-12
        assert meta["path"].endswith(f"L={m.partition}") and meta["partitions_in_run"] == "16,32"
    evaluations = check_results(res)
    assert sorted(evaluations) == ["16", "32"]  # one evaluation per band limit of the range
    for key, evaluation in evaluations.items():
        assert evaluation.passed and evaluation.metadata["L"].value == int(key)


def test_range_check_records_each_band_limits_own_result(resources, tmp_path):
    """A corrupted L=16 fails its own check partition; L=32, evaluated after it in the same
    step, passes without hiding the failure (read back from the instance's check records)."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    band_range = {
        "dagster/asset_partition_range_start": "16",
        "dagster/asset_partition_range_end": "32",
    }
    check_key = next(iter(harmonics.sh_basis_orthonormal.check_keys))
    assert harmonics.sh_basis_orthonormal.check_specs
    for spec in harmonics.sh_basis_orthonormal.check_specs:
        assert spec.partitions_def == harmonics.sh_basis.partitions_def
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert dg.materialize(
            ASSETS, resources=resources, instance=instance, tags=band_range
        ).success
        store = resources["warehouse"].store()
        part = store.partition_dir("sh_basis", "16")
        tensors, meta = read_safetensors(part / "basis.safetensors")
        legendre = np.array(tensors["legendre"])
        legendre[3] = np.nan
        rewrite_tensors(store, "16", dict(tensors, legendre=legendre), meta)
        res = dg.materialize(
            ASSETS,
            resources=resources,
            instance=instance,
            tags=band_range,
            selection=dg.AssetSelection.checks(harmonics.sh_basis_orthonormal),
            raise_on_error=False,
        )
        assert not res.success  # blocking: the failed band limit fails the step
        assert {k: e.passed for k, e in check_results(res).items()} == {"16": False, "32": True}
        for key, status, nonfinite in (
            ("16", AssetCheckExecutionRecordStatus.FAILED, True),
            ("32", AssetCheckExecutionRecordStatus.SUCCEEDED, False),
        ):
            (record,) = instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=1, partition_filter=PartitionKeyFilter(key=key)
            )
            assert record.run_id == res.run_id and record.status == status, key
            data = record.event.dagster_event.asset_check_evaluation_data
            assert (data.metadata["n_nonfinite"].value > 0) == nonfinite, key
            mat = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=harmonics.sh_basis.key, asset_partitions=[key]),
                limit=1,
            ).records[0]
            assert data.target_materialization_data.storage_id == mat.storage_id
