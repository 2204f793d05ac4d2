"""Data contract of the placements family: shell_placements."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, TensorSpec, register

# --- shell_placements: water-filled places on the shell sphere, per shard --------------------
# <root>/shell_placements/shard=<k>/part-0.parquet  (row i <-> patch_embeddings row i)
#   + coordinates.safetensors (xyz, rtp, shell), librarian.safetensors (patch bytes -> r,theta,phi)
#   + lvm.safetensors (windows of W consecutive patch embeddings -> the next one)

SHELL_PLACEMENTS_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("patch_index", pa.int32(), nullable=False),
        pa.field("shell", pa.int32(), nullable=False),
        pa.field("r", pa.float32(), nullable=False),
        pa.field("theta", pa.float32(), nullable=False),
        pa.field("phi", pa.float32(), nullable=False),
        pa.field("x", pa.float32(), nullable=False),
        pa.field("y", pa.float32(), nullable=False),
        pa.field("z", pa.float32(), nullable=False),
        pa.field("prominence", pa.float32(), nullable=False),
        pa.field("promotions", pa.int32(), nullable=False),
        pa.field("lateral_moves", pa.int32(), nullable=False),
    ]
)

SHELL_PLACEMENTS_COLUMN_DOCS = {
    "article_id": "Article of the patch (joins patch_embeddings / blt_patches).",
    "patch_index": "Patch position in its article.",
    "shell": "Shell index 0..S-1 (0 = innermost, radius r_min).",
    "r": "Shell radius r_min + (r_max - r_min) sqrt(shell / (S-1)) (THRML: relaxed radius).",
    "theta": "Colatitude in [0, pi].",
    "phi": "Longitude in [0, 2 pi).",
    "x": "r sin(theta) cos(phi).",
    "y": "r sin(theta) sin(phi).",
    "z": "r cos(theta).",
    "prominence": "L2 norm of the pre-norm patch vector (from patch_embeddings).",
    "promotions": "Outward shell steps taken by the water-filling.",
    "lateral_moves": "Lateral moves inside a shell instead of a promotion (0 or 1).",
}

SHELL_PLACEMENTS = register(
    AssetContract(
        name="shell_placements",
        partition_dim=SHARD_DIM,
        schema=SHELL_PLACEMENTS_SCHEMA,
        column_docs=SHELL_PLACEMENTS_COLUMN_DOCS,
        tensors={
            "coordinates": {
                "xyz": TensorSpec("float32", ("P", 3)),
                "rtp": TensorSpec("float32", ("P", 3)),
                "shell": TensorSpec("int32", ("P",)),
            },
            "librarian": {
                "bytes": TensorSpec("uint8", ("P", "max_len")),
                "lengths": TensorSpec("int32", ("P",)),
                "target": TensorSpec("float32", ("P", 3)),
            },
            "lvm": {
                "inputs": TensorSpec("float32", ("M", "W", "D")),
                "target": TensorSpec("float32", ("M", "D")),
                "rows": TensorSpec("int64", ("M", "W1")),
            },
        },
        dictionary_columns=("article_id",),
    )
)
