"""Data contracts of the placements family: sphere_map, shell_placements."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, TensorSpec, register

# --- sphere_map: the one fitted map (unpartitioned) ------------------------------------------
# <root>/sphere_map/model.safetensors   the map (lib/sphere/sphere_map.py SphereMapModel): PCA-3
#                                       axes, landmarks + their directions + inverted file,
#                                       score centres, drift reference
# <root>/sphere_map/part-0.parquet      one row: the fit report

SPHERE_MAP_SCHEMA = pa.schema(
    [
        pa.field("method", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("dimension", pa.int32(), nullable=False),
        pa.field("sample_rows", pa.int64(), nullable=False),
        pa.field("corpus_rows", pa.int64(), nullable=False),
        pa.field("shards", pa.string(), nullable=False),
        pa.field("recall_at_10", pa.float64(), nullable=False),
        pa.field("recall_at_10_pca3", pa.float64(), nullable=False),
        pa.field("trustworthiness_at_10", pa.float64(), nullable=False),
        pa.field("trustworthiness_at_10_pca3", pa.float64(), nullable=False),
        pa.field("reference_drift", pa.float64(), nullable=False),
    ]
)

SPHERE_MAP_COLUMN_DOCS = {
    "method": "neighbour (a neighbourhood-preserving layout of the sample, carried to any row "
    "by its nearest sample rows) | pca3.",
    "config_json": "SphereMapConfig as JSON (sample size, network, training).",
    "dimension": "Embedding dimension D the map takes.",
    "sample_rows": "Rows of the evenly spaced corpus sample the map was fitted on.",
    "corpus_rows": "patch_embeddings rows over all shards at fit time.",
    "shards": "Shards the sample covers, with rows per shard (shard:rows, ...).",
    "recall_at_10": "Tie-aware recall@10 of cosine neighbours among angular neighbours, on the "
    "sample (1,000 queries).",
    "recall_at_10_pca3": "The same for plain PCA-3 of the same sample (the baseline).",
    "trustworthiness_at_10": "scikit-learn trustworthiness@10 (cosine input metric) on 2,000 "
    "sample rows.",
    "trustworthiness_at_10_pca3": "The same for plain PCA-3.",
    "reference_drift": "Largest direction-histogram drift of one shard's sample rows against the "
    "whole sample (compare a new shard's map_drift with it).",
}

SPHERE_MAP = register(
    AssetContract(
        name="sphere_map",
        partition_dim=None,
        schema=SPHERE_MAP_SCHEMA,
        column_docs=SPHERE_MAP_COLUMN_DOCS,
        tensors={
            "model": {
                "mean": TensorSpec("float32", ("D",)),
                "components": TensorSpec("float32", ("D", 3)),
                "landmarks_t": TensorSpec("float32", ("D", "M")),
                "positions": TensorSpec("float32", ("M", 3)),
                "centroids_t": TensorSpec("float32", ("D", "C")),
                "list_offsets": TensorSpec("int64", ("C1",)),
                "score_centre": TensorSpec("float64", (4,)),
                "level_centre": TensorSpec("float64", (2,)),
                "direction_histogram": TensorSpec("float64", (192,)),
            }
        },
    )
)

# --- shell_placements: water-filled places on the shell sphere, per shard --------------------
# <root>/shell_placements/shard=<k>/part-0.parquet  (row i <-> patch_embeddings row i)
#   + coordinates.safetensors (xyz, rtp, shell), librarian.safetensors (patch bytes -> r,theta,phi)
#   + lvm.safetensors (rows of windows of W consecutive patches -> the next one, indices
#     into patch_embeddings/shard=<k>/embeddings.safetensors)

SHELL_PLACEMENTS_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("patch_index", pa.int32(), nullable=False),
        pa.field("shell", pa.int32(), nullable=False),
        pa.field("r", pa.float32(), nullable=False),
        pa.field("theta", pa.float32(), nullable=False),
        pa.field("phi", pa.float32(), nullable=False),
        pa.field("map_theta", pa.float32(), nullable=False),
        pa.field("map_phi", pa.float32(), nullable=False),
        pa.field("spread", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
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
    "map_theta": "Colatitude of the sphere_map direction (before any lateral move): the same "
    "embedding has the same map_theta/map_phi in every shard, bit for bit.",
    "map_phi": "Longitude of the sphere_map direction, [0, 2 pi).",
    "spread": "Angle (radians) the spreading step moved the point inside its shell.",
    "score": "Information score (log prominence + concentration, centred by the sphere_map "
    "fit sample): the radial order.",
    "x": "r sin(theta) cos(phi).",
    "y": "r sin(theta) sin(phi).",
    "z": "r cos(theta).",
    "prominence": "L2 norm of the pre-norm patch vector (from patch_embeddings).",
    "promotions": "Outward shell steps taken by the water-filling.",
    "lateral_moves": "Lateral moves inside a shell instead of a promotion (0 or 1; the "
    "incremental case, see README).",
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
                "rows": TensorSpec("int64", ("M", "W1")),
            },
        },
        dictionary_columns=("article_id",),
    )
)
