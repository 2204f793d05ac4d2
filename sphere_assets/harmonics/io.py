"""Reads and writes of the harmonics family, all through the warehouse (storage layer).

Per band limit ``sh_basis/L=<L>/``: ``basis.safetensors`` (theta, phi, weights, legendre; the
layout in its metadata) and ``part-0.parquet`` (one summary row).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from sphere_assets.core.lazy import lazy_module
from sphere_assets.harmonics.contract import SH_BASIS, SH_BASIS_SCHEMA
from sphere_resources.contracts import ContractError
from sphere_resources.warehouse import Warehouse

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
sht = lazy_module("sphere_assets.lib.sphere.sht")

TENSOR_STEM = "basis"


def load_sh_basis(store: Warehouse, L: int | str) -> sht.ShBasis:
    """The stored basis of partition L, validated against the contract and the sht layout."""
    key = str(L)
    tensors, metadata = store.read_tensors(SH_BASIS.name, key, TENSOR_STEM)
    try:
        basis = sht.basis_from_tensors(tensors, metadata)
    except ValueError as exc:
        raise ContractError(SH_BASIS.name, key, f"{TENSOR_STEM}.safetensors", str(exc)) from exc
    if str(basis.L) != key:
        raise ContractError(SH_BASIS.name, key, f"{TENSOR_STEM}.L", f"file holds L={basis.L}")
    return basis


def summary_row(basis: sht.ShBasis, diagnostics: dict, data: bytes) -> pa.Table:
    """The one Parquet row of partition L (``data``: the bytes of basis.safetensors)."""
    meta = sht.basis_metadata(basis)
    row = {
        "n_theta": basis.n_theta,
        "n_phi": basis.n_phi,
        "n_coeffs": basis.L * basis.L,
        "legendre_rows": basis.legendre.shape[0],
        "grid": meta["grid"],
        "convention": meta["condon_shortley"],
        "tensor_file": f"{TENSOR_STEM}.safetensors",
        "tensor_bytes": len(data),
        "tensor_sha256": hashlib.sha256(data).hexdigest(),
        "max_gram_error": diagnostics["max_gram_error"],
        "max_addition_error": diagnostics["max_addition_error"],
        "n_zero_columns": diagnostics["n_zero_columns"],
        "n_nonfinite": diagnostics["n_nonfinite"],
    }
    return pa.Table.from_pylist([row], schema=SH_BASIS_SCHEMA)


def write_basis(store: Warehouse, basis: sht.ShBasis, diagnostics: dict) -> bytes:
    """Write partition L atomically (tensors, then the summary row with their sha256);
    returns the bytes of basis.safetensors."""
    with store.partition_writer(SH_BASIS.name, str(basis.L)) as writer:
        path = writer.write_tensors(
            TENSOR_STEM, sht.basis_tensors(basis), sht.basis_metadata(basis)
        )
        data = path.read_bytes()
        writer.write_table(summary_row(basis, diagnostics, data))
    return data


def stored_partitions(store: Warehouse) -> list[str]:
    """Band limits on disk."""
    return store.partitions(SH_BASIS.name)


def tensor_file_matches_row(store: Warehouse, key: str) -> bool:
    """Whether the bytes of the tensor file named in the summary row hash to its sha256."""
    row = store.read_table(SH_BASIS.name, key, columns=["tensor_file", "tensor_sha256"])
    row = row.to_pylist()[0]
    data = store.read_file(SH_BASIS.name, key, row["tensor_file"])
    return hashlib.sha256(data).hexdigest() == row["tensor_sha256"]
