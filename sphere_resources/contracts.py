"""Data contracts: the machinery that says what every asset stores (the storage layer checks
every read and write against them).

Each asset has an :class:`AssetContract` naming

* its partition dimension (``shard``, ``L`` or none) — which becomes the Hive directory key
  ``<asset>/<dim>=<key>/`` in the warehouse;
* the Arrow schema of its Parquet rows (if it has rows);
* the dtype and symbolic shape of every safetensors array it stores (if it has arrays).

Readers and writers validate against these contracts and raise :class:`ContractError`, which
always names the asset, the partition and the offending field.

This module is pure (pyarrow + numpy only): compute modules, resources and tests may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Layout constants
# ---------------------------------------------------------------------------------------------

DEFAULT_WAREHOUSE_ROOT = "data/warehouse"
DEFAULT_CATALOG_PATH = "data/sphere.duckdb"
PARQUET_PART_NAME = "part-0.parquet"

SHARD_DIM = "shard"
BAND_LIMIT_DIM = "L"


class ContractError(ValueError):
    """A stored or produced artifact does not match its contract."""

    def __init__(self, asset: str, partition: str | None, field: str, problem: str):
        self.asset = asset
        self.partition = partition
        self.field = field
        self.problem = problem
        where = f"asset '{asset}'"
        if partition is not None:
            where += f", partition '{partition}'"
        super().__init__(f"{where}, field '{field}': {problem}")


@dataclass(frozen=True)
class TensorSpec:
    """dtype (numpy name) and shape of one safetensors array.

    Shape entries are ints (fixed) or strings (symbolic: every array using the same symbol in
    one file must agree on its size, e.g. ``"P"`` = number of patches).
    """

    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class AssetContract:
    name: str
    partition_dim: str | None
    schema: pa.Schema | None = None
    # file stem (without .safetensors) -> array name -> spec
    tensors: Mapping[str, Mapping[str, TensorSpec]] = field(default_factory=dict)
    # column name -> what it holds: the UI's column schema is built from these (one place)
    column_docs: Mapping[str, str] = field(default_factory=dict)
    # Parquet dictionary encoding only pays off for low-cardinality columns; None = all columns.
    dictionary_columns: tuple[str, ...] | None = None

    @property
    def has_rows(self) -> bool:
        return self.schema is not None


CONTRACTS: dict[str, AssetContract] = {}


def register(contract: AssetContract) -> AssetContract:
    if contract.name in CONTRACTS:
        raise ValueError(f"contract for asset '{contract.name}' registered twice")
    CONTRACTS[contract.name] = contract
    return contract


def contract_for(asset: str) -> AssetContract:
    try:
        return CONTRACTS[asset]
    except KeyError:
        raise KeyError(
            f"no data contract for asset '{asset}' in sphere_resources.contracts"
        ) from None


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_schema(contract: AssetContract, partition: str | None, schema: pa.Schema) -> None:
    """Check that ``schema`` has exactly the contract's fields, in order, with the same types."""
    if contract.schema is None:
        raise ContractError(contract.name, partition, "<rows>", "asset has no Parquet rows")
    expected = contract.schema
    got_names = list(schema.names)
    for f in expected:
        if f.name not in got_names:
            raise ContractError(contract.name, partition, f.name, "missing column")
        got = schema.field(f.name)
        if not got.type.equals(f.type):
            raise ContractError(
                contract.name, partition, f.name, f"type {got.type}, expected {f.type}"
            )
    extra = [n for n in got_names if n not in expected.names]
    if extra:
        raise ContractError(contract.name, partition, extra[0], "column not in the contract")
    if got_names != expected.names:
        raise ContractError(
            contract.name,
            partition,
            "<columns>",
            f"column order {got_names}, expected {expected.names}",
        )


def validate_nulls(contract: AssetContract, partition: str | None, table: pa.Table) -> None:
    for f in contract.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ContractError(
                contract.name,
                partition,
                f.name,
                f"{table.column(f.name).null_count} null value(s) in a non-nullable column",
            )


def conform_table(contract: AssetContract, partition: str | None, table: pa.Table) -> pa.Table:
    """Validate a table produced by an asset and attach the contract schema (nullability)."""
    validate_schema(contract, partition, table.schema)
    validate_nulls(contract, partition, table)
    return table.cast(contract.schema)


def validate_tensors(
    contract: AssetContract, partition: str | None, stem: str, arrays: Mapping[str, np.ndarray]
) -> None:
    specs = contract.tensors.get(stem)
    if specs is None:
        raise ContractError(contract.name, partition, stem, "tensor file not in the contract")
    sizes: dict[str, int] = {}
    for name, spec in specs.items():
        if name not in arrays:
            raise ContractError(contract.name, partition, f"{stem}.{name}", "missing tensor")
        arr = arrays[name]
        if np.dtype(arr.dtype) != np.dtype(spec.dtype):
            raise ContractError(
                contract.name,
                partition,
                f"{stem}.{name}",
                f"dtype {arr.dtype}, expected {spec.dtype}",
            )
        if len(arr.shape) != len(spec.shape):
            raise ContractError(
                contract.name,
                partition,
                f"{stem}.{name}",
                f"rank {len(arr.shape)} (shape {tuple(arr.shape)}), expected shape {spec.shape}",
            )
        for axis, (size, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if isinstance(want, int):
                if size != want:
                    raise ContractError(
                        contract.name,
                        partition,
                        f"{stem}.{name}",
                        f"axis {axis} has size {size}, expected {want}",
                    )
            elif sizes.setdefault(want, size) != size:
                raise ContractError(
                    contract.name,
                    partition,
                    f"{stem}.{name}",
                    f"axis {axis} ('{want}') has size {size}, but another tensor has {want}={sizes[want]}",
                )
    extra = sorted(set(arrays) - set(specs))
    if extra:
        raise ContractError(
            contract.name, partition, f"{stem}.{extra[0]}", "tensor not in the contract"
        )
