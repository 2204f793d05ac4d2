"""blt-burn v3 files for the tests (formerly ``patch_embeddings.save_blt_v3``/``load_blt_v3``,
used by tests only): written with the storage layer's safetensors writer, read back with the
safetensors library's own reader (what blt-burn's readers use)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from sphere_assets.lib.text.patch_embeddings import BLT_V3_FORMAT, blt_v3_arrays
from sphere_resources.store import canonical_safetensors


def save_blt_v3(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    with open(path, "wb") as fh:
        fh.write(canonical_safetensors(arrays, metadata))


def load_blt_v3(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a v3 file back (safetensors' own reader) and re-check its invariants."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        metadata = dict(fh.metadata() or {})
        arrays = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    if metadata.get("format") != BLT_V3_FORMAT:
        raise ValueError(f"{path}: format '{metadata.get('format')}', expected {BLT_V3_FORMAT}")
    blt_v3_arrays(
        arrays["bytes"],
        arrays["patch_lengths"],
        arrays["entropies"],
        arrays["embeddings"],
        arrays["prominence"],
        arrays["patch_entropies"],
    )
    return arrays, metadata
