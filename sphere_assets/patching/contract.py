"""Data contracts of the patching family: entropy_model, blt_patches, patch_embeddings."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, TensorSpec, register

# <root>/entropy_model/model.safetensors    weights + config (format sphere_blt_entropy_model_v1;
#                                           validated by lib.text.entropy_model.
#                                           model_from_file_tensors, whose parameter names
#                                           depend on n_layers)
# <root>/entropy_model/heldout.safetensors  held-out token entropies (the model's own evaluation)
# <root>/entropy_model/calibration.safetensors  token entropies of the θ-calibration sample
#                                           (byte windows from every raw_articles shard)
# <root>/entropy_model/part-0.parquet       one summary row
# <root>/blt_patches/shard=<k>/part-0.parquet
# <root>/patch_embeddings/shard=<k>/{embeddings.safetensors, blt_v3.safetensors, part-0.parquet}
# <root>/patch_forward_cache/shard=<k>/{part-0.parquet, settings.json}   not an asset: what
#                                           blt_patches' model pass leaves for patch_embeddings
#                                           (removed by patch_embeddings once it has used it)

BLT_PATCHES_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("patch_index", pa.int32(), nullable=False),
        pa.field("byte_start", pa.int64(), nullable=False),
        pa.field("byte_len", pa.int32(), nullable=False),
        pa.field("patch", pa.binary(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("mean_entropy", pa.float32(), nullable=False),
        pa.field("max_entropy", pa.float32(), nullable=False),
        pa.field("first_entropy", pa.float32(), nullable=False),
    ]
)


ENTROPY_MODEL_SCHEMA = pa.schema(
    [
        pa.field("model_file", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("num_parameters", pa.int64(), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("final_train_loss", pa.float64(), nullable=False),
        pa.field("heldout_bits_per_byte", pa.float64(), nullable=False),
        pa.field("unigram_bits_per_byte", pa.float64(), nullable=False),
        pa.field("heldout_unigram_entropy_bits", pa.float64(), nullable=False),
        pa.field("train_bytes", pa.int64(), nullable=False),
        pa.field("heldout_bytes", pa.int64(), nullable=False),
        pa.field("train_articles", pa.int64(), nullable=False),
        pa.field("heldout_articles", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
    ]
)

ENTROPY_MODEL_COLUMN_DOCS = {
    "model_file": "safetensors file beside this row (weights + config JSON in its metadata).",
    "model_sha256": "SHA-256 of the model file bytes.",
    "config_json": "EntropyModelConfig as JSON (architecture, training, sample settings).",
    "num_parameters": "Trainable parameters.",
    "steps": "Optimizer steps (training wall time is in the materialization metadata only, "
    "so re-materializing writes byte-identical files).",
    "final_train_loss": "Cross-entropy (nats) of the last training batch.",
    "heldout_bits_per_byte": "Held-out next-byte cross-entropy in bits per byte.",
    "unigram_bits_per_byte": "Held-out cross-entropy of the add-one byte unigram of the training split.",
    "heldout_unigram_entropy_bits": "Empirical unigram entropy of the held-out bytes.",
    "train_bytes": "Bytes in the training split of the deterministic sample.",
    "heldout_bytes": "Held-out bytes evaluated.",
    "train_articles": "Articles in the training split.",
    "heldout_articles": "Articles (or byte-split segments) held out.",
    "device": "torch device the model was trained on.",
}

BLT_PATCHES_COLUMN_DOCS = {
    "article_id": "raw_articles.article_id of the article the patch belongs to.",
    "patch_index": "0-based position of the patch in its article.",
    "byte_start": "Offset of the patch's first byte in the article's UTF-8 bytes.",
    "byte_len": "Patch length in bytes (<= max_patch_length).",
    "patch": "The patch's exact bytes; an article's patches in patch_index order concatenate to it.",
    "text": "patch decoded as UTF-8 with errors='replace': a patch that splits a multi-byte "
    "character shows U+FFFD for the partial sequence (use `patch` for exact bytes).",
    "mean_entropy": "Mean next-byte entropy (nats) of the entropy model over the patch's bytes.",
    "max_entropy": "Max next-byte entropy (nats) over the patch's bytes.",
    "first_entropy": "Entropy (nats) at the patch's first byte (the value that opened it).",
}

PATCH_EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("patch_index", pa.int32(), nullable=False),
        pa.field("article_index", pa.int32(), nullable=False),
        pa.field("prominence", pa.float32(), nullable=False),
        pa.field("patch_entropy", pa.float32(), nullable=False),
    ]
)

PATCH_EMBEDDINGS_COLUMN_DOCS = {
    "article_id": "Article of the patch (joins blt_patches on article_id, patch_index).",
    "patch_index": "Patch position in its article.",
    "article_index": "0-based article number in this shard (embeddings.safetensors article_index).",
    "prominence": "L2 norm of the patch's mean pre-norm hidden state of the entropy model.",
    "patch_entropy": "Mean next-byte entropy (nats) over the patch's bytes.",
}

ENTROPY_MODEL = register(
    AssetContract(
        name="entropy_model",
        partition_dim=None,
        schema=ENTROPY_MODEL_SCHEMA,
        column_docs=ENTROPY_MODEL_COLUMN_DOCS,
        tensors={
            "heldout": {
                "entropies": TensorSpec("float32", ("tokens",)),
                "lengths": TensorSpec("int64", ("segments",)),
            },
            # the sample blt_patches calibrates θ on: windows from every shard
            # (lib.text.calibration_sample); segment_shard = the shard each segment came from
            "calibration": {
                "entropies": TensorSpec("float32", ("tokens",)),
                "lengths": TensorSpec("int64", ("segments",)),
                "segment_shard": TensorSpec("int32", ("segments",)),
            },
        },
        dictionary_columns=(),
    )
)

BLT_PATCHES = register(
    AssetContract(
        name="blt_patches",
        partition_dim=SHARD_DIM,
        schema=BLT_PATCHES_SCHEMA,
        column_docs=BLT_PATCHES_COLUMN_DOCS,
        dictionary_columns=("article_id",),
    )
)

PATCH_EMBEDDINGS = register(
    AssetContract(
        name="patch_embeddings",
        partition_dim=SHARD_DIM,
        schema=PATCH_EMBEDDINGS_SCHEMA,
        column_docs=PATCH_EMBEDDINGS_COLUMN_DOCS,
        tensors={
            # row i of every array <-> row i of part-0.parquet <-> blt_patches (article, patch)
            "embeddings": {
                "embeddings": TensorSpec("float32", ("P", "D")),
                "prominence": TensorSpec("float32", ("P",)),
                "article_index": TensorSpec("int32", ("P",)),
                "patch_index": TensorSpec("int32", ("P",)),
            },
            # blt-burn blt_patches_v3 export of the whole shard
            "blt_v3": {
                "bytes": TensorSpec("uint8", ("total_bytes",)),
                "patch_lengths": TensorSpec("int32", ("P",)),
                "entropies": TensorSpec("float32", ("total_bytes",)),
                "embeddings": TensorSpec("float32", ("P", "D")),
                "prominence": TensorSpec("float32", ("P",)),
                "patch_entropies": TensorSpec("float32", ("P",)),
            },
        },
        dictionary_columns=("article_id",),
    )
)

# Not an asset: the per-article results of blt_patches' entropy-model pass that patch_embeddings
# needs (patch vectors, prominence, entropies), so the model runs once per byte for both (see
# sphere_assets/patching/blt_patches.py). One row per article with at least one patch, in
# blt_patches row order; arrays are raw little-endian bytes. Its partition is removed by
# patch_embeddings after use; settings.json beside it records the model and torch settings.
PATCH_FORWARD_CACHE_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("sha256", pa.binary(32), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("byte_len", pa.large_binary(), nullable=False),
        pa.field("embeddings", pa.large_binary(), nullable=False),
        pa.field("prominence", pa.large_binary(), nullable=False),
        pa.field("patch_entropy", pa.large_binary(), nullable=False),
        pa.field("byte_entropy", pa.large_binary(), nullable=False),
    ]
)

PATCH_FORWARD_CACHE = register(
    AssetContract(
        name="patch_forward_cache",
        partition_dim=SHARD_DIM,
        schema=PATCH_FORWARD_CACHE_SCHEMA,
        column_docs={
            "article_id": "raw_articles.article_id (blt_patches row order).",
            "sha256": "SHA-256 of the article's UTF-8 bytes (the cache is used only for the same text).",
            "n_bytes": "Article bytes.",
            "byte_len": "int32 [P]: the patch lengths (must equal blt_patches byte_len).",
            "embeddings": "float32 [P, D]: mean pre-norm hidden state per patch.",
            "prominence": "float32 [P]: L2 norm of each embedding.",
            "patch_entropy": "float32 [P]: mean byte entropy per patch.",
            "byte_entropy": "float32 [n_bytes]: entropy (nats) of each byte's prediction.",
        },
        dictionary_columns=(),
    )
)
