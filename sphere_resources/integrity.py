"""Partition manifests (sha256 of every file) and bounded parsing of stored files (pure: no
Dagster; reads only the bytes it is handed).

Every partition directory holds ``_manifest.json`` beside its data files, written in staging and
swapped in with them, so a manifest always describes the files next to it::

    {"asset": "raw_articles", "files": {"part-0.parquet": {"bytes": 1234, "sha256": "…"}},
     "format": 1, "partition": "0"}

The leading underscore keeps it out of ``*.parquet`` globs and out of pyarrow's dataset
discovery. It has no timestamps: the same files give the same manifest bytes, so a
re-materialization stays byte-identical.

Verification is always on and complete: a reader hashes every byte it parses (sha256 runs at
~1.5 GB/s, see BENCHMARKS.md "storage integrity") and parses exactly the bytes it verified, so a
truncated file, a zeroed tail or a flipped bit is an error naming the asset, partition and path,
never a silent load. Sampling would miss exactly the damage that matters (a zeroed tail is one
region of the file).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sphere_resources.contracts import ContractError

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = 1
# safetensors refuses headers over 100 MB itself; checking first means a crafted 8-byte length
# (e.g. 2**62) is an error before anything is allocated for it.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
HASH_CHUNK = 1 << 20


class DamagedFileError(ContractError):
    """A stored file is missing from its manifest, has the wrong size or checksum, or does not
    parse. ``field`` is the file name; the message names asset, partition, path and the damage."""

    def __init__(self, asset: str, partition: str | None, path: Path, problem: str):
        self.path = Path(path)
        super().__init__(asset, partition, self.path.name, f"{self.path}: {problem}")


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


def digest_file(path: Path) -> FileEntry:
    """Size and sha256 of a file, read in 1 MiB chunks (bounded memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(size, h.hexdigest())


def manifest_bytes(asset: str, partition: str | None, files: Iterable[Path]) -> bytes:
    """The canonical manifest of ``files`` (sorted keys, no timestamps)."""
    entries = {}
    for path in sorted(files, key=lambda p: p.name):
        e = digest_file(path)
        entries[path.name] = {"bytes": e.bytes, "sha256": e.sha256}
    doc = {"asset": asset, "files": entries, "format": MANIFEST_FORMAT, "partition": partition}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8")


def parse_manifest(
    data: bytes, asset: str, partition: str | None, path: Path
) -> dict[str, FileEntry]:
    """File name -> entry; a manifest that does not parse or names another partition is damage."""
    try:
        doc = json.loads(data.decode("utf-8"))
        files = {
            name: FileEntry(int(e["bytes"]), str(e["sha256"])) for name, e in doc["files"].items()
        }
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedFileError(asset, partition, path, f"manifest does not parse ({exc})") from None
    if doc.get("asset") != asset or doc.get("partition") != partition:
        raise DamagedFileError(
            asset,
            partition,
            path,
            f"manifest belongs to asset {doc.get('asset')!r} partition {doc.get('partition')!r}",
        )
    return files


def check_size(asset: str, partition: str | None, path: Path, size: int, entry: FileEntry) -> None:
    if size != entry.bytes:
        what = "truncated" if size < entry.bytes else "longer than written"
        raise DamagedFileError(
            asset, partition, path, f"{what}: {size} bytes, the manifest says {entry.bytes}"
        )


def check_digest(
    asset: str, partition: str | None, path: Path, sha256: str, entry: FileEntry
) -> None:
    if sha256 != entry.sha256:
        raise DamagedFileError(
            asset,
            partition,
            path,
            f"checksum mismatch (sha256 {sha256[:16]}…, the manifest says {entry.sha256[:16]}…): "
            "the file was damaged or changed after it was written; re-materialize the partition",
        )


def verify_bytes(
    asset: str, partition: str | None, path: Path, data: bytes, entry: FileEntry
) -> None:
    """Raise DamagedFileError unless ``data`` is exactly the bytes the manifest recorded."""
    check_size(asset, partition, path, len(data), entry)
    check_digest(asset, partition, path, hashlib.sha256(data).hexdigest(), entry)


def safetensors_header_length(data: bytes) -> int:
    """The JSON header length of a safetensors file, bounded before anything is allocated.

    Raises ValueError saying what is wrong (too short, length beyond the file or the limit)."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: too short for a safetensors header (8-byte length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_SAFETENSORS_HEADER:
        raise ValueError(f"header length {n} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit")
    if 8 + n > len(data):
        raise ValueError(f"header length {n} runs past the end of the {len(data)}-byte file")
    return n


def parse_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays and ``__metadata__`` of a safetensors file; ValueError says what is wrong."""
    from safetensors.numpy import load as st_load

    n = safetensors_header_length(data)
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    try:
        arrays = st_load(data)
    except Exception as exc:  # SafetensorError is not exported under a stable name
        raise ValueError(f"not a valid safetensors file ({exc})") from None
    return arrays, metadata
