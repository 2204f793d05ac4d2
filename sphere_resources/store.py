"""Warehouse storage (pure, no Dagster): Hive-partitioned Parquet + safetensors with atomic partition replacement.

Layout (see ``sphere_resources.contracts``)::

    <root>/<asset>/<dim>=<key>/part-0.parquet      partitioned asset (dim = shard | L)
    <root>/<asset>/<dim>=<key>/<stem>.safetensors
    <root>/<asset>/<dim>=<key>/_manifest.json      size + sha256 of every file beside it
    <root>/<asset>/part-0.parquet                  unpartitioned asset (+ _manifest.json)
    <root>/.locks/<asset>/<dim>=<key>.lock         one writer per partition at a time (flock)
    <root>/../.<root name>.staging/<asset>/<dim>=<key>.<uuid>/   partitions being written

A partition is written into a fresh staging directory outside the root (so no glob under the
root, ``**`` included, ever sees a file being written; inside the root as ``.staging`` only when
the root is a mount point), sealed with its manifest, and swapped into place with one atomic
``renameat2(RENAME_EXCHANGE)``: the partition path always names a complete version, the old or
the new, never nothing, and the old one is deleted after a short grace (``swap.retire``: a
reader that opened the old directory an instant before the swap still lists its files). A crash mid-write leaves the previous
partition untouched; the next writer of that partition removes the leftovers (or
``Warehouse.clean_staging`` all of them). Writers of one partition take turns on its lock.

Readers open the partition directory once and every file relative to it, so one read sees one
version even while a writer swaps; each file is checked against the manifest (size and sha256
of every byte parsed, always on; see ``sphere_resources.integrity``) and a damaged file is a
``DamagedFileError`` naming asset, partition, path and the damage.

Parquet and safetensors bytes are deterministic: the same rows and arrays always give the same
file bytes (safetensors' metadata map is re-serialized with sorted keys, because the Rust
writer emits it in hash-map order), and so is the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save as st_save

from sphere_resources import mapped
from sphere_resources.contracts import (
    PARQUET_PART_NAME,
    AssetContract,
    ContractError,
    conform_table,
    contract_for,
    validate_schema,
    validate_tensors,
)
from sphere_resources.integrity import (
    HASH_CHUNK,
    MANIFEST_NAME,
    DamagedFileError,
    FileEntry,
    check_digest,
    check_size,
    manifest_bytes,
    parse_manifest,
    parse_safetensors,
    verify_bytes,
)
from sphere_resources.swap import PartitionLock, exchange, in_grace, retire, staging_root_for

__all__ = ["MANIFEST_NAME", "DamagedFileError", "Warehouse"]

STAGING_DIR = ".staging"  # inside the root: the fallback staging place, and the old layout's
TRASH_DIR = ".trash"  # the old layout's (two-rename swap); removed when found
LOCK_DIR = ".locks"
LOCK_TIMEOUT_S = 600.0  # a second writer of a partition waits this long for the first
READ_ATTEMPTS = 8  # reads started over when writers keep swapping the partition meanwhile
FALLBACK_SWAP_WAIT_S = 2.0  # how long a reader waits out a two-rename swap (no RENAME_EXCHANGE)
_STAGED = re.compile(r"^(.+)\.[0-9a-f]{32}(\.old(-\d+)?)?$")  # <slot>.<uuid>[.old[-<deadline>]]
_LEGACY_STAGED = re.compile(r"^(.+)-[0-9a-f]{32}$")  # the old layout's <asset>-<uuid>
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
    """Arrays and metadata of a safetensors file outside the warehouse (tests, exports); the
    header is bounded before allocation. Warehouse files: ``Warehouse.read_tensors``."""
    data = Path(path).read_bytes()
    try:
        return parse_safetensors(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


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
        if name == MANIFEST_NAME:
            raise ContractError(
                self.contract.name, self.partition, name, "reserved for the partition manifest"
            )
        path = self.staging / name
        _fsync_write(path, data)
        self.files.append(path)
        return path


class _Swapped(Exception):
    """The partition directory a read had pinned was replaced meanwhile: read it again."""


class Warehouse:
    """Plain (Dagster-free) access to the warehouse directory tree.

    Reads are pinned to one version of a partition (its directory is opened once and every file
    is opened relative to it) and verified against that version's manifest; writes are staged
    outside the root, sealed with a manifest, and swapped in with one atomic exchange while the
    partition's writer lock is held (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, lock_timeout_s: float = LOCK_TIMEOUT_S):
        self.root = Path(root).resolve()
        self.lock_timeout_s = lock_timeout_s
        self._staging_root: Path | None = None

    # -- paths ---------------------------------------------------------------------------------
    @property
    def staging_root(self) -> Path:
        """Where partitions are written before the swap (see swap.staging_root_for)."""
        if self._staging_root is None:
            self._staging_root = staging_root_for(self.root)
        return self._staging_root

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

    def _slot(self, asset: str, partition: str | None) -> str:
        """The partition's name in staging and lock paths (``shard=3``; ``_all`` unpartitioned)."""
        return self.partition_dir(asset, partition).name if partition is not None else "_all"

    def _lock(self, asset: str, partition: str | None, timeout_s: float) -> PartitionLock:
        path = self.root / LOCK_DIR / asset / f"{self._slot(asset, partition)}.lock"
        return PartitionLock(path, timeout_s, _where(asset, partition))

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
        """Whether the partition is materialized (waits out a two-rename fallback swap)."""
        try:
            os.close(self._open_dir(asset, partition, "")[0])
        except FileNotFoundError:
            return False
        return True

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def partition_writer(self, asset: str, partition: str | None) -> Iterator[PartitionWriter]:
        """Write a whole partition atomically: files go to staging, then replace the partition.

        Writers of one partition take turns (its lock; LockTimeout after ``lock_timeout_s``);
        staging left by a crashed writer of the partition is removed first. If the body raises,
        the staging directory is removed and the old partition stays.
        """
        contract = contract_for(asset)
        final = self.partition_dir(asset, partition)
        with self._lock(asset, partition, self.lock_timeout_s):
            self._clean_partition_staging(asset, partition)
            staging = (
                self.staging_root / asset / f"{self._slot(asset, partition)}.{uuid.uuid4().hex}"
            )
            staging.mkdir(parents=True)
            writer = PartitionWriter(contract, partition, staging)
            try:
                yield writer
                self._seal(asset, partition, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._swap(final, staging)

    def remove_partition(self, asset: str, partition: str | None) -> bool:
        """Delete a partition under its writer lock: it is first renamed out of the root into
        staging (``<slot>.<uuid>.old``, cleaned like a crashed write's if this process dies), so
        a reader sees it whole or not at all. Returns whether there was one."""
        final = self.partition_dir(asset, partition)
        with self._lock(asset, partition, self.lock_timeout_s):
            if not os.path.lexists(final):
                return False
            gone = (
                self.staging_root / asset / f"{self._slot(asset, partition)}.{uuid.uuid4().hex}.old"
            )
            gone.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, gone)
            retire(gone)
        with contextlib.suppress(OSError):
            final.parent.rmdir()  # the asset's directory, when that was its last partition
        return True

    def _seal(self, asset: str, partition: str | None, staging: Path) -> None:
        """Write the manifest of every file in ``staging`` (it is swapped in with them)."""
        files = [p for p in staging.iterdir() if p.is_file() and p.name != MANIFEST_NAME]
        _fsync_write(staging / MANIFEST_NAME, manifest_bytes(asset, partition, files))

    def _swap(self, final: Path, staging: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(final):
            os.rename(staging, final)  # a rename onto a missing name is atomic
            return
        if exchange(staging, final):
            retire(staging)  # it now holds the previous version
            return
        # No RENAME_EXCHANGE here: two renames; a reader that finds the directory missing while
        # this writer holds the lock waits for it (see _open_dir).
        old = staging.with_name(staging.name + ".old")
        os.rename(final, old)
        os.rename(staging, final)
        retire(old)

    def _clean_partition_staging(self, asset: str, partition: str | None) -> int:
        """Remove staging left by crashed writers of this partition (the caller holds its lock,
        so none of it is in use) and the old layout's leftovers of this asset."""
        removed = 0
        base = self.staging_root / asset
        prefix = self._slot(asset, partition) + "."
        if base.is_dir():
            for child in base.iterdir():
                if (
                    child.name.startswith(prefix)
                    and _STAGED.match(child.name)
                    and not in_grace(child.name)
                ):
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
        return removed + self._clean_legacy(asset)

    def _clean_legacy(self, asset: str | None) -> int:
        """Leftovers of the layout before manifests: ``<root>/.staging/<asset>-<uuid>`` and
        ``<root>/.trash/<uuid>`` (no writer of this version uses them)."""
        removed = 0
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for child in staging.iterdir():
                m = _LEGACY_STAGED.match(child.name)
                if m and (asset is None or m.group(1) == asset):
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
        trash = self.root / TRASH_DIR
        if trash.is_dir():
            for child in trash.iterdir():
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
            with contextlib.suppress(OSError):
                trash.rmdir()
        return removed

    def clean_staging(self) -> int:
        """Remove leftovers of crashed writes (every asset, every partition not being written
        right now); returns how many were removed."""
        removed = self._clean_legacy(None)
        root = self.staging_root
        if not root.is_dir():
            return removed
        for asset_dir in root.iterdir():
            if not asset_dir.is_dir():
                continue
            for child in asset_dir.iterdir():
                m = _STAGED.match(child.name)
                if not m or in_grace(child.name):
                    continue
                lock = PartitionLock(
                    self.root / LOCK_DIR / asset_dir.name / f"{m.group(1)}.lock", 0, child.name
                )
                if lock.try_acquire(record=False):
                    try:
                        shutil.rmtree(child, ignore_errors=True)
                        removed += 1
                    finally:
                        lock.release()
        return removed

    # -- reading -------------------------------------------------------------------------------
    def _no_partition(self, asset: str, partition: str | None, path: Path) -> FileNotFoundError:
        return FileNotFoundError(
            f"asset '{asset}', partition '{partition}': no materialization at {path} "
            f"(materialize it first: dagster asset materialize --select {asset}"
            + (f" --partition {partition})" if partition is not None else ")")
        )

    def _open_dir(self, asset: str, partition: str | None, file_name: str) -> tuple[int, Path]:
        """An fd of the partition directory (pins this version of it)."""
        pdir = self.partition_dir(asset, partition)
        deadline = time.monotonic() + FALLBACK_SWAP_WAIT_S
        last_try = False
        while True:
            try:
                return os.open(pdir, os.O_RDONLY | os.O_DIRECTORY), pdir
            except FileNotFoundError:
                # Only the two-rename fallback swap leaves a moment without the directory, and
                # only while a writer holds the partition's lock; once the lock is free any swap
                # has finished, so one more look decides.
                if last_try or time.monotonic() >= deadline:
                    raise self._no_partition(asset, partition, pdir / file_name) from None
                last_try = not self._being_written(asset, partition)
                if not last_try:
                    time.sleep(0.001)

    def _being_written(self, asset: str, partition: str | None) -> bool:
        lock = self._lock(asset, partition, 0)
        try:
            if lock.try_acquire(record=False):
                lock.release()
                return False
        except OSError:  # a read-only warehouse: nobody can be writing it
            return False
        return True

    def _open_in(self, dfd: int, pdir: Path, name: str, asset: str, partition: str | None):
        """Open ``name`` in the pinned directory; a missing file is damage if the directory is
        still the current version, else the read starts over (_Swapped)."""
        try:
            return os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dfd), "rb")
        except FileNotFoundError:
            if not _same_dir(dfd, pdir):
                raise _Swapped from None
            if name == MANIFEST_NAME:
                problem = (
                    "no manifest: the partition was not written through the storage layer (or "
                    "by a version before checksums); re-materialize it"
                )
            else:
                problem = "listed in the manifest but missing"
            raise DamagedFileError(asset, partition, pdir / name, problem) from None

    def _entry(self, dfd: int, pdir: Path, name: str, asset: str, partition: str | None):
        with self._open_in(dfd, pdir, MANIFEST_NAME, asset, partition) as fh:
            entries = parse_manifest(fh.read(), asset, partition, pdir / MANIFEST_NAME)
        entry = entries.get(name)
        if entry is None:
            raise FileNotFoundError(
                f"asset '{asset}', partition '{partition}': no file '{name}' at {pdir} "
                f"(its manifest lists {sorted(entries)})"
            )
        return entry

    def _pinned(self, asset: str, partition: str | None, name: str, read):
        """``read(fh, entry, path)`` on one version of the partition, starting over (a few times)
        when a writer swaps a new version in between opening the directory and the file."""
        for _ in range(READ_ATTEMPTS):
            dfd, pdir = self._open_dir(asset, partition, name)
            try:
                entry = self._entry(dfd, pdir, name, asset, partition)
                fh = self._open_in(dfd, pdir, name, asset, partition)
            except _Swapped:
                continue
            finally:
                os.close(dfd)
            return read(fh, entry, pdir / name)
        raise DamagedFileError(
            asset,
            partition,
            self.partition_dir(asset, partition) / name,
            f"replaced by writers {READ_ATTEMPTS} times while being opened; try again",
        )

    def read_file(self, asset: str, partition: str | None, name: str) -> bytes:
        """The verified bytes of one file of a partition."""

        def read(fh, entry: FileEntry, path: Path) -> bytes:
            with fh:
                data = fh.read()
            verify_bytes(asset, partition, path, data, entry)
            return data

        return self._pinned(asset, partition, name, read)

    def has_file(self, asset: str, partition: str | None, name: str) -> bool:
        """Whether the partition exists and its manifest lists ``name``."""
        try:
            self._pinned(asset, partition, name, lambda fh, entry, path: fh.close())
        except FileNotFoundError:
            return False
        return True

    def _open_verified(self, asset: str, partition: str | None, name: str):
        """An open file, verified by streaming it through sha256 once (bounded memory), rewound."""

        def read(fh, entry: FileEntry, path: Path):
            try:
                h, size = hashlib.sha256(), 0
                while chunk := fh.read(HASH_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                check_size(asset, partition, path, size, entry)
                check_digest(asset, partition, path, h.hexdigest(), entry)
                fh.seek(0)
            except BaseException:
                fh.close()
                raise
            return fh, path

        return self._pinned(asset, partition, name, read)

    def _parquet(self, asset: str, partition: str | None, path: Path, source) -> pq.ParquetFile:
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise DamagedFileError(
                asset, partition, path, f"not a readable Parquet file ({exc})"
            ) from None
        validate_schema(contract_for(asset), partition, pf.schema_arrow)
        return pf

    def read_table(
        self, asset: str, partition: str | None, columns: list[str] | None = None
    ) -> pa.Table:
        data = self.read_file(asset, partition, PARQUET_PART_NAME)
        path = self.partition_dir(asset, partition) / PARQUET_PART_NAME
        pf = self._parquet(asset, partition, path, pa.BufferReader(data))
        try:
            return pf.read(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise DamagedFileError(
                asset, partition, path, f"Parquet data unreadable ({exc})"
            ) from None

    def iter_batches(
        self,
        asset: str,
        partition: str | None,
        batch_size: int = 1024,
        columns: list[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        fh, path = self._open_verified(asset, partition, PARQUET_PART_NAME)
        with fh:
            pf = self._parquet(asset, partition, path, fh)
            try:
                yield from pf.iter_batches(batch_size=batch_size, columns=columns)
            except (pa.ArrowException, OSError) as exc:
                raise DamagedFileError(
                    asset, partition, path, f"Parquet data unreadable ({exc})"
                ) from None

    def read_tensors(
        self, asset: str, partition: str | None, stem: str
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        name = f"{stem}.safetensors"
        data = self.read_file(asset, partition, name)
        try:
            arrays, metadata = parse_safetensors(data)
        except ValueError as exc:
            path = self.partition_dir(asset, partition) / name
            raise DamagedFileError(asset, partition, path, str(exc)) from None
        validate_tensors(contract_for(asset), partition, stem, arrays)
        return arrays, metadata

    # -- memory-mapped reads (verify once per file identity; see sphere_resources.mapped) -----
    @property
    def cache_root(self) -> Path | None:
        """Beside the root (``.<root name>.cache``): verified stamps and derived files; None
        when nothing can be written there (then nothing is cached and every open hashes)."""
        if not hasattr(self, "_cache_root"):
            self._cache_root = mapped.cache_root_for(self.root)
        return self._cache_root

    def open_tensors_mmap(
        self, asset: str, partition: str | None, stem: str
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Read-only memory-mapped arrays and metadata of a partition's safetensors file.

        O(header) once the file is known good: the arrays are views of a read-only ``mmap``
        (pages are read when touched). The size is checked against the manifest on every open,
        the sha256 of every byte on the first open of each file identity (manifest digest,
        device, inode, size, mtime, ctime; a verified stamp under :attr:`cache_root` records
        it) — the guarantee and its limit are in :mod:`sphere_resources.mapped`. Damage is a
        DamagedFileError naming asset, partition and path, as for :meth:`read_tensors`.
        """
        name = f"{stem}.safetensors"

        def read(fh, entry: FileEntry, path: Path):
            arrays, metadata = self._verified_views(fh, entry, asset, partition, path)
            validate_tensors(contract_for(asset), partition, stem, arrays)
            return arrays, metadata

        return self._pinned(asset, partition, name, read)

    def file_identity(self, asset: str, partition: str | None, name: str) -> str:
        """A digest of a stored file's manifest sha256 and its identity (device, inode, size,
        mtime, ctime): it changes whenever the file is rewritten or replaced, so it keys caches
        derived from the file (see :meth:`write_derived_tensors`)."""

        def read(fh, entry: FileEntry, path: Path) -> str:
            with fh:
                return mapped.identity(entry.sha256, os.fstat(fh.fileno()))

        return self._pinned(asset, partition, name, read)

    def _derived_path(self, kind: str, name: str) -> Path | None:
        if self.cache_root is None:
            return None
        if not re.fullmatch(r"[A-Za-z0-9_-]+", kind) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(
                f"derived file kind/name must be [A-Za-z0-9_-]+, got {kind!r}/{name!r}"
            )
        return self.cache_root / kind / f"{name}.safetensors"

    def write_derived_tensors(
        self,
        kind: str,
        name: str,
        arrays: Mapping[str, np.ndarray],
        metadata: Mapping[str, str],
        keep: int = 2,
    ) -> Path | None:
        """Write a file derived from warehouse data (an index built once, opened mapped later)
        under ``<cache root>/<kind>/<name>.safetensors`` with its size + sha256 beside it
        (``<name>.sha256``); the ``keep`` newest files of ``kind`` stay, older ones are removed.
        None when no cache can be written (the caller keeps what it built in memory)."""
        path = self._derived_path(kind, name)
        if path is None:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = mapped.write_tensor_file(path, arrays, metadata)
            digest = path.with_suffix(".sha256")
            tmp = digest.with_name(f".{digest.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps({"bytes": entry.bytes, "sha256": entry.sha256}))
            os.replace(tmp, digest)
        except OSError:
            return None
        files = sorted(
            path.parent.glob("*.safetensors"), key=lambda f: f.stat().st_mtime_ns, reverse=True
        )
        for old in files[keep:]:
            if old != path:
                for f in (old, old.with_suffix(".sha256")):
                    with contextlib.suppress(OSError):
                        f.unlink()
        return path

    def open_derived_tensors_mmap(
        self, kind: str, name: str
    ) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
        """Mapped arrays of a derived file (None when it was never written or is incomplete),
        verified like :meth:`open_tensors_mmap` against the size + sha256 recorded beside it;
        damage is a DamagedFileError (asset ``cache:<kind>``)."""
        path = self._derived_path(kind, name)
        if path is None:
            return None
        where = f"cache:{kind}"
        try:
            doc = json.loads(path.with_suffix(".sha256").read_text())
            entry = FileEntry(int(doc["bytes"]), str(doc["sha256"]))
            fh = open(path, "rb")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DamagedFileError(where, None, path, f"digest unreadable ({exc})") from None
        return self._verified_views(fh, entry, where, None, path)

    def _verified_views(self, fh, entry: FileEntry, asset: str, partition: str | None, path: Path):
        """(arrays, metadata) as read-only views of ``fh`` mapped: its size checked against
        ``entry`` on every open, its sha256 once per file identity (the stamp). Closes ``fh``."""
        with fh:
            st = os.fstat(fh.fileno())
            check_size(asset, partition, path, st.st_size, entry)
            stamp = mapped.identity(entry.sha256, st)
            if not mapped.stamped(self.cache_root, stamp):
                size, digest = mapped.sha256_of(fh)
                check_size(asset, partition, path, size, entry)
                check_digest(asset, partition, path, digest, entry)
                mapped.record_stamp(self.cache_root, stamp, st)
            buffer = mapped.map_file(fh) if st.st_size else b""
        try:
            return mapped.tensor_views(buffer)
        except ValueError as exc:
            raise DamagedFileError(asset, partition, path, str(exc)) from None


def _where(asset: str, partition: str | None) -> str:
    return f"asset '{asset}'" + (f", partition '{partition}'" if partition is not None else "")


def _same_dir(dfd: int, path: Path) -> bool:
    """Whether ``path`` still names the directory open as ``dfd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    pinned = os.fstat(dfd)
    return (st.st_ino, st.st_dev) == (pinned.st_ino, pinned.st_dev)


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
