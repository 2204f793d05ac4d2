"""Data contracts of the navigate family: sphere_index (cone index) and embedding_ann (ANN)."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, TensorSpec, register

# --- sphere_index: HEALPix cell index over shell_placements, per shard ----------------------
# <root>/sphere_index/shard=<k>/part-0.parquet   one row per placement, in index order
#   + csr.safetensors (offsets [K + 1], unit [P, 3], shell [P], row [P]; metadata nside, ...)
#   + map.safetensors (the same over the sphere_map directions, when shell_placements has them)

SPHERE_INDEX_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("patch_index", pa.int32(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("shell", pa.int32(), nullable=False),
        pa.field("band", pa.int32(), nullable=False),
        pa.field("cell", pa.int64(), nullable=False),
        pa.field("theta", pa.float32(), nullable=False),
        pa.field("phi", pa.float32(), nullable=False),
        pa.field("ux", pa.float64(), nullable=False),
        pa.field("uy", pa.float64(), nullable=False),
        pa.field("uz", pa.float64(), nullable=False),
    ]
)

SPHERE_INDEX_COLUMN_DOCS = {
    "article_id": "Article of the patch (joins shell_placements / blt_patches).",
    "patch_index": "Patch position in its article.",
    "row": "Row of the patch in shell_placements (= patch_embeddings = blt_patches) of the shard.",
    "shell": "Shell index (as in shell_placements).",
    "band": "Shell band = shell // band_width (csr.safetensors metadata).",
    "cell": "HEALPix cell of the direction (RING scheme, nside in csr.safetensors metadata).",
    "theta": "Colatitude in [0, pi] (as stored in shell_placements).",
    "phi": "Longitude in [0, 2 pi) (as stored in shell_placements).",
    "ux": "Unit direction x = x / |(x, y, z)| (float64; the cone test uses ux, uy, uz).",
    "uy": "Unit direction y.",
    "uz": "Unit direction z.",
}

SPHERE_INDEX = register(
    AssetContract(
        name="sphere_index",
        partition_dim=SHARD_DIM,
        schema=SPHERE_INDEX_SCHEMA,
        column_docs=SPHERE_INDEX_COLUMN_DOCS,
        tensors={
            "csr": {
                "offsets": TensorSpec("int64", ("K1",)),
                "unit": TensorSpec("float64", ("P", 3)),
                "shell": TensorSpec("int32", ("P",)),
                "row": TensorSpec("int64", ("P",)),
            },
            # the same index over the sphere_map directions (map_theta, map_phi: before the
            # water-filling moved points), one band: the cone-candidate semantic search
            "map": {
                "offsets": TensorSpec("int64", ("K2",)),
                "unit": TensorSpec("float64", ("P", 3)),
                "shell": TensorSpec("int32", ("P",)),
                "row": TensorSpec("int64", ("P",)),
            },
        },
        dictionary_columns=("article_id",),
    )
)

# --- embedding_ann: faiss index over the unit patch embeddings, per shard --------------------
# <root>/embedding_ann/shard=<k>/ann.faiss (faiss.serialize_index) + part-0.parquet (one row)

EMBEDDING_ANN_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("nlist", pa.int32(), nullable=False),
        pa.field("nprobe", pa.int32(), nullable=False),
        pa.field("hnsw_m", pa.int32(), nullable=False),
        pa.field("ef_search", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("build_seconds", pa.float64(), nullable=False),
        pa.field("index_bytes", pa.int64(), nullable=False),
    ]
)

EMBEDDING_ANN_COLUMN_DOCS = {
    "kind": "ivf (faiss IndexIVFFlat, inner product) | hnsw (faiss IndexHNSWFlat).",
    "rows": "Vectors in the index (= patch_embeddings rows of the shard; id = row).",
    "dim": "Embedding dimension D.",
    "nlist": "IVF inverted lists (0 for hnsw).",
    "nprobe": "IVF lists searched per query, stored in the index (0 for hnsw).",
    "hnsw_m": "HNSW graph degree (0 for ivf).",
    "ef_search": "HNSW search breadth stored in the index (0 for ivf).",
    "seed": "Seed of the k-means training sample / clustering.",
    "model_sha256": "patch_embeddings' entropy-model sha256 (embeddings.safetensors metadata).",
    "build_seconds": "Wall time of the faiss build.",
    "index_bytes": "Size of ann.faiss.",
}

EMBEDDING_ANN = register(
    AssetContract(
        name="embedding_ann",
        partition_dim=SHARD_DIM,
        schema=EMBEDDING_ANN_SCHEMA,
        column_docs=EMBEDDING_ANN_COLUMN_DOCS,
    )
)
