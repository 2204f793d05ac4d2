"""Warehouse storage (pure, no Dagster): Hive-partitioned Parquet + safetensors with atomic partition replacement.

Layout (see ``sphere_resources.contracts``)::

    <root>/<asset>/<dim>=<key>/part-0.parquet      partitioned asset (dim = shard | L)
    <root>/<asset>/<dim>=<key>/<stem>.safetensors
    <root>/<asset>/part-0.parquet                  unpartitioned asset
    <root>/.staging/<uuid>/                        partitions being written (never globbed)

A partition is written into a fresh staging directory and only then swapped into place, so a
crash mid-write leaves the previous partition untouched, and a re-materialization replaces the
partition whole (no stale files survive). The swap is two renames on the same filesystem
(old -> .trash, staging -> final); readers never see a half-written file.

Parquet and safetensors bytes are deterministic: the same rows and arrays always give the same
file bytes (safetensors' metadata map is re-serialized with sorted keys, because the Rust
writer emits it in hash-map order).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from sphere_resources.contracts import (
    PARQUET_PART_NAME,
    AssetContract,
    ContractError,
    conform_table,
    contract_for,
    validate_schema,
    validate_tensors,
)

STAGING_DIR = ".staging"
TRASH_DIR = ".trash"
# Parquet writer settings are fixed so output bytes depend only on the rows.
PARQUET_OPTIONS = dict(compression="zstd", compression_level=1, write_statistics=True)


def parquet_options(contract: AssetContract) -> dict:
    cols = contract.dictionary_columns
    return {**PARQUET_OPTIONS, "use_dictionary": True if cols is None else list(cols)}


def canonical_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """Serialize with safetensors, then rewrite the JSON header in a canonical key order."""
    raw = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=dict(metadata))
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    ordered: dict = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
        ordered[name] = header[name]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8-byte alignment
    return struct.pack("<Q", len(text)) + text + raw[8 + header_len :]


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    return st_load(data), metadata


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class PartitionWriter:
    """Collects the files of one partition in a staging directory; see Warehouse.partition_writer."""

    def __init__(self, contract: AssetContract, partition: str | None, staging: Path):
        self.contract = contract
        self.partition = partition
        self.staging = staging
        self.files: list[Path] = []
        self.rows_written = 0

    def write_table(self, table: pa.Table, name: str = PARQUET_PART_NAME) -> Path:
        table = conform_table(self.contract, self.partition, table)
        path = self.staging / name
        pq.write_table(table, path, **parquet_options(self.contract))
        self.files.append(path)
        self.rows_written += table.num_rows
        return path

    @contextmanager
    def table_stream(self, name: str = PARQUET_PART_NAME) -> Iterator[pq.ParquetWriter]:
        """Stream record batches into one Parquet file (bounded memory for big partitions)."""
        path = self.staging / name
        writer = pq.ParquetWriter(path, self.contract.schema, **parquet_options(self.contract))
        contract, partition = self.contract, self.partition
        outer = self

        class _Checked:
            def write(self, table: pa.Table) -> None:
                table = conform_table(contract, partition, table)
                writer.write_table(table)
                outer.rows_written += table.num_rows

        try:
            yield _Checked()
        finally:
            writer.close()
        self.files.append(path)

    def write_tensors(
        self, stem: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
    ) -> Path:
        validate_tensors(self.contract, self.partition, stem, arrays)
        meta = {"asset": self.contract.name, **(metadata or {})}
        if self.partition is not None:
            meta["partition"] = self.partition
        path = self.staging / f"{stem}.safetensors"
        _fsync_write(path, canonical_safetensors(arrays, meta))
        self.files.append(path)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        """A file outside the Parquet/safetensors contract (e.g. an export in a foreign format)."""
        path = self.staging / name
        _fsync_write(path, data)
        self.files.append(path)
        return path


class Warehouse:
    """Plain (Dagster-free) access to the warehouse directory tree."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # -- paths ---------------------------------------------------------------------------------
    def asset_dir(self, asset: str) -> Path:
        return self.root / asset

    def partition_dir(self, asset: str, partition: str | None) -> Path:
        contract = contract_for(asset)
        if contract.partition_dim is None:
            if partition is not None:
                raise ContractError(asset, partition, "<partition>", "asset is not partitioned")
            return self.asset_dir(asset)
        if partition is None:
            raise ContractError(
                asset, None, "<partition>", f"asset is partitioned by '{contract.partition_dim}'"
            )
        return self.asset_dir(asset) / f"{contract.partition_dim}={partition}"

    def parquet_glob(self, asset: str) -> str:
        contract = contract_for(asset)
        if contract.partition_dim is None:
            return str(self.asset_dir(asset) / "*.parquet")
        return str(self.asset_dir(asset) / "*" / "*.parquet")

    def partitions(self, asset: str) -> list[str]:
        """Partition keys present on disk, sorted (numerically when they are integers)."""
        contract = contract_for(asset)
        base = self.asset_dir(asset)
        if contract.partition_dim is None or not base.exists():
            return []
        prefix = f"{contract.partition_dim}="
        keys = [
            p.name[len(prefix) :]
            for p in base.iterdir()
            if p.is_dir() and p.name.startswith(prefix)
        ]
        return sorted(keys, key=lambda k: (0, int(k), k) if k.lstrip("-").isdigit() else (1, 0, k))

    def exists(self, asset: str, partition: str | None) -> bool:
        return self.partition_dir(asset, partition).exists()

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def partition_writer(self, asset: str, partition: str | None) -> Iterator[PartitionWriter]:
        """Write a whole partition atomically: files go to staging, then replace the partition.

        If the body raises, the staging directory is removed and the old partition stays.
        """
        contract = contract_for(asset)
        final = self.partition_dir(asset, partition)
        staging = self.root / STAGING_DIR / f"{asset}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        writer = PartitionWriter(contract, partition, staging)
        try:
            yield writer
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if contract.partition_dim is None:
            self._swap_unpartitioned(final, staging)
        else:
            self._swap(final, staging)

    def _swap(self, final: Path, staging: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if final.exists():
            trash = self.root / TRASH_DIR / uuid.uuid4().hex
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)
        os.rename(staging, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _swap_unpartitioned(self, final: Path, staging: Path) -> None:
        # The asset directory itself is the partition; sibling partition dirs cannot exist.
        self._swap(final, staging)

    # -- reading -------------------------------------------------------------------------------
    def read_table(
        self, asset: str, partition: str | None, columns: list[str] | None = None
    ) -> pa.Table:
        contract = contract_for(asset)
        pdir = self.partition_dir(asset, partition)
        path = pdir / PARQUET_PART_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"asset '{asset}', partition '{partition}': no materialization at {path} "
                f"(materialize it first: dagster asset materialize --select {asset}"
                + (f" --partition {partition})" if partition is not None else ")")
            )
        pf = pq.ParquetFile(path)
        validate_schema(contract, partition, pf.schema_arrow)
        return pf.read(columns=columns)

    def iter_batches(
        self,
        asset: str,
        partition: str | None,
        batch_size: int = 1024,
        columns: list[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        contract = contract_for(asset)
        path = self.partition_dir(asset, partition) / PARQUET_PART_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"asset '{asset}', partition '{partition}': no materialization at {path}"
            )
        pf = pq.ParquetFile(path)
        validate_schema(contract, partition, pf.schema_arrow)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)

    def read_tensors(
        self, asset: str, partition: str | None, stem: str
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        contract = contract_for(asset)
        path = self.partition_dir(asset, partition) / f"{stem}.safetensors"
        if not path.exists():
            raise FileNotFoundError(
                f"asset '{asset}', partition '{partition}': no tensors at {path}"
            )
        arrays, metadata = read_safetensors(path)
        validate_tensors(contract, partition, stem, arrays)
        return arrays, metadata

    def clean_staging(self) -> int:
        """Remove leftovers of crashed writes; returns how many were removed."""
        removed = 0
        for name in (STAGING_DIR, TRASH_DIR):
            d = self.root / name
            if d.exists():
                for child in d.iterdir():
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
        return removed


class BackgroundTableWriter:
    """Runs Parquet writes on one background thread, in submission order, with a bounded queue.

    pyarrow releases the GIL while encoding and compressing, so writing overlaps with the
    (GIL-bound) reading and normalizing of the next batch on the other core. At most
    ``max_pending`` tables wait in memory; an error in a write is raised on the next call.
    """

    def __init__(self, max_pending: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending: list = []
        self.max_pending = max_pending

    def submit(self, write, table: pa.Table) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(write, table))

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)
