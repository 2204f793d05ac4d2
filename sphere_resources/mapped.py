"""Memory-mapped, read-only safetensors files and the verify-once stamps that keep them honest
(pure: no Dagster; the only I/O is on the paths and file handles it is given).

Why
    ``Warehouse.read_tensors`` reads every byte of a file and hashes it on every call, which is
    right for a step that uses the whole file but makes an index that a query touches a few
    pages of cost O(file) per process (``sphere restore`` reloaded its whole index per call).
    A mapped open costs O(header): the arrays are ``np.frombuffer`` views of a read-only
    ``mmap``, and the pages a query touches are read by the kernel on demand.

Integrity (verify once per file identity)
    A mapped file is still checked against its manifest entry: its size always, and its sha256
    once per *file identity* ``(manifest sha256, st_dev, st_ino, st_size, st_mtime_ns,
    st_ctime_ns)``.  After a full-file sha256 matches, a *verified stamp* (an empty file named by
    the sha256 of that identity) is recorded in ``<cache root>/verified/``; later opens of the
    same unchanged file skip the hash (a file changed in the last ``RACY_S`` seconds is never
    stamped: file times advance in coarse ticks).  Any write to the file, a copy, a rename-over or a
    re-materialization changes the inode or ``ctime`` (which no user call can set back), so the
    file is hashed again before it is trusted.  What this does *not* catch: bytes that change
    on the medium without a write through the kernel (bit rot below the file system) after the
    file was verified once; ``Warehouse.read_tensors`` (hash on every read) remains the path
    for steps that need that.  When no cache root is writable the stamp is not recorded and
    every open hashes the file (honest, just slower).

Derived files
    :func:`write_tensor_file` streams arrays into a safetensors file (no second in-memory copy)
    and returns its size and sha256, which the caller records beside it (``<name>.sha256``), so
    a derived file (e.g. the restore index cache) is verified the same way as a warehouse file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sphere_resources.integrity import HASH_CHUNK, MAX_SAFETENSORS_HEADER, FileEntry

CACHE_SUFFIX = ".cache"  # <parent>/.<root name>.cache beside the warehouse root
VERIFIED_DIR = "verified"
RACY_S = 2.0  # a file changed this recently is not stamped (see record_stamp)

# safetensors dtype names <-> numpy (little-endian, as the format stores them)
DTYPES = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}


def cache_root_for(root: Path) -> Path | None:
    """``<parent>/.<root name>.cache`` (inside the root as ``.cache`` when the parent is not
    writable); None when neither can be made (a read-only warehouse: nothing is cached)."""
    for candidate in (root.parent / f".{root.name}{CACHE_SUFFIX}", root / CACHE_SUFFIX):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    return None


def identity(sha256: str, st: os.stat_result) -> str:
    """The verified-stamp name of a file: sha256 of its manifest digest and its identity."""
    text = (
        f"{sha256}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    ).encode()
    return hashlib.sha256(text).hexdigest()


def stamped(cache_root: Path | None, stamp: str) -> bool:
    return cache_root is not None and (cache_root / VERIFIED_DIR / stamp).exists()


def record_stamp(cache_root: Path | None, stamp: str, st: os.stat_result) -> None:
    """Record a verified stamp; a cache that cannot be written is left alone (next open
    hashes again).  A file changed less than :data:`RACY_S` ago gets no stamp: file times
    advance in coarse ticks, so a write later in the same tick would keep the identity (git's
    "racy clean" problem); such a file is hashed again until it is older."""
    if cache_root is None or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_S * 1e9:
        return
    with contextlib.suppress(OSError):
        d = cache_root / VERIFIED_DIR
        d.mkdir(parents=True, exist_ok=True)
        (d / stamp).touch()


def sha256_of(fh) -> tuple[int, str]:
    """(size, sha256) of an open binary file from its start, in bounded chunks (the pages are
    read through a buffer, not mapped: hashing does not grow the mapping's resident set)."""
    fh.seek(0)
    h, size = hashlib.sha256(), 0
    while chunk := fh.read(HASH_CHUNK):
        h.update(chunk)
        size += len(chunk)
    fh.seek(0)
    return size, h.hexdigest()


def map_file(fh) -> mmap.mmap:
    """A read-only mapping of the whole open file (kept alive by the arrays viewing it)."""
    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def tensor_views(buffer) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read-only arrays (views, no copy) and ``__metadata__`` of a safetensors buffer.

    Raises ValueError saying what is wrong: header bounds, unknown dtype, offsets outside the
    data or inconsistent with the shape."""
    size = len(buffer)
    if size < 8:
        raise ValueError(f"{size} bytes: too short for a safetensors header (8-byte length)")
    (n,) = struct.unpack("<Q", bytes(buffer[:8]))
    if n > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"header length {n} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit")
    if 8 + n > size:
        raise ValueError(f"header length {n} runs past the end of the {size}-byte file")
    try:
        header = json.loads(bytes(buffer[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    arrays = {}
    for name, spec in header.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(x) for x in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: bad header entry {spec!r}") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= size - base) or end - begin != count * dtype.itemsize:
            raise ValueError(
                f"tensor {name!r}: data_offsets [{begin}, {end}) do not fit shape {shape} of "
                f"{spec['dtype']} in {size - base} data bytes"
            )
        arrays[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin).reshape(
            shape
        )
    return arrays, {str(k): str(v) for k, v in metadata.items()}


def _header(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    doc: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(arrays):
        arr = arrays[name]
        nbytes = arr.size * arr.dtype.itemsize
        dtype = _NAMES.get(arr.dtype) if arr.dtype.byteorder in "<=|" else None
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors name")
        doc[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_tensor_file(
    path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> FileEntry:
    """Stream ``arrays`` (sorted by name) into a safetensors file at ``path`` atomically (a
    temporary name in the same directory, fsync, rename); returns its size and sha256."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    h, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as fh:
            for piece in [_header(arrays, metadata)] + [
                memoryview(arrays[k].reshape(-1)).cast("B") for k in sorted(arrays)
            ]:
                fh.write(piece)
                h.update(piece)
                size += len(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return FileEntry(size, h.hexdigest())
