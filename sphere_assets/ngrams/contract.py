"""Data contracts of the ngrams family: ngram_index, ngram_vocabulary, article_hllsets, adjacency, adjacency_merged."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, TensorSpec, register

# HLLSet n-gram system over BLT patches (sphere_assets.lib.sketch.{ngrams,hllset,adjacency,restore}).
# <root>/ngram_index/shard=<k>/part-0.parquet          distinct 1/2/3-grams of the shard
# <root>/ngram_vocabulary/part-0.parquet + lookup.safetensors   global merge + bit -> rows CSR
# <root>/article_hllsets/shard=<k>/part-0.parquet      HLLSet per article and per span
# <root>/adjacency/shard=<k>/part-0.parquet + csr.safetensors   node table + CSR (per shard)
#   + context.safetensors                                         n-gram context counts (3..N)
# <root>/adjacency_merged/part-0.parquet + csr.safetensors      the same, merged over shards

# safetensors stems (files <stem>.safetensors beside part-0.parquet)
LOOKUP_STEM = "lookup"  # ngram_vocabulary: per layer, the rows of every HLLSet bit (CSR)
LOOKUP_FORMAT = "sphere.ngram_vocabulary.lookup/v1"  # lookup.safetensors __metadata__ "format"
CSR_STEM = "csr"  # adjacency, adjacency_merged: the 3-gram edges of the 2-gram nodes
CONTEXT_STEM = "context"  # adjacency, adjacency_merged: patch n-gram counts of order 3..N

NGRAM_INDEX_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int8(), nullable=False),
        pa.field("key", pa.binary(), nullable=False),
        pa.field("hash", pa.uint64(), nullable=False),
        pa.field("reg", pa.int32(), nullable=False),
        pa.field("run", pa.int8(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

NGRAM_INDEX_COLUMN_DOCS = {
    "n": "n-gram order: 1, 2 or 3.",
    "key": "Key bytes: a 1-gram is the patch; 2-/3-grams join the (escaped) patches of the "
    "_START_/_END_-padded sequence with 0x00 (sphere_assets.lib.sketch.ngrams).",
    "hash": "mmh3.hash64(key, seed=0, signed=False)[0] (MurmurHash3_x64_128 low 64 bits).",
    "reg": "hash & (2^P - 1) for the configured P (metadata 'p').",
    "run": "min(ctz(hash >> P), 31); bit = reg * 32 + run.",
    "count": "Occurrences of the n-gram (in the shard, or summed over shards).",
}

ARTICLE_HLLSETS_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("span_index", pa.int32(), nullable=False),
        pa.field("patch_start", pa.int32(), nullable=False),
        pa.field("patch_count", pa.int32(), nullable=False),
        pa.field("p", pa.int8(), nullable=False),
        pa.field("layer1", pa.binary(), nullable=False),
        pa.field("layer2", pa.binary(), nullable=False),
        pa.field("layer3", pa.binary(), nullable=False),
        pa.field("card1", pa.float64(), nullable=False),
        pa.field("card2", pa.float64(), nullable=False),
        pa.field("card3", pa.float64(), nullable=False),
    ]
)

ARTICLE_HLLSETS_COLUMN_DOCS = {
    "article_id": "Article (blt_patches.article_id).",
    "span_index": "-1: the whole article; k >= 0: patches [k*span, (k+1)*span) as their own "
    "_START_/_END_-padded sequence.",
    "patch_start": "First patch_index covered.",
    "patch_count": "Number of patches covered.",
    "p": "HLLSet precision P (2^P registers per layer).",
    "layer1": "1-gram layer: 2^P little-endian uint32 words (bit run of word reg).",
    "layer2": "2-gram layer, same layout.",
    "layer3": "3-gram layer, same layout.",
    "card1": "Horvitz-Thompson cardinality estimate of layer1.",
    "card2": "Horvitz-Thompson cardinality estimate of layer2.",
    "card3": "Horvitz-Thompson cardinality estimate of layer3.",
}

ADJACENCY_NODES_SCHEMA = pa.schema(
    [
        pa.field("node_id", pa.int64(), nullable=False),
        pa.field("key", pa.binary(), nullable=False),
        pa.field("hash", pa.uint64(), nullable=False),
        pa.field("left", pa.binary(), nullable=False),
        pa.field("right", pa.binary(), nullable=False),
        pa.field("left_is_start", pa.bool_(), nullable=False),
        pa.field("right_is_end", pa.bool_(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("outdeg", pa.int32(), nullable=False),
    ]
)

ADJACENCY_NODES_COLUMN_DOCS = {
    "node_id": "Row of the node in csr.safetensors (indptr index).",
    "key": "2-gram key bytes (as in ngram_index).",
    "hash": "mmh3 x64 low 64 bits of key.",
    "left": "First patch (or the sentinel spelling _START_ when left_is_start).",
    "right": "Second patch (or _END_ when right_is_end).",
    "left_is_start": "The node is (_START_, right).",
    "right_is_end": "The node is (left, _END_).",
    "count": "F2: occurrences of the 2-gram.",
    "outdeg": "Distinct 3-gram edges leaving the node.",
}

ADJACENCY_CSR = {
    CSR_STEM: {
        "indptr": TensorSpec("int64", ("n_nodes_plus_1",)),
        "indices": TensorSpec("int64", ("n_edges",)),
        "counts": TensorSpec("int64", ("n_edges",)),
        "weights": TensorSpec("float64", ("n_edges",)),
    },
    # patch n-gram counts of order 3..N by context hash (lib/sketch/context_model.py): the
    # corpus memory restore uses to order a span whose n-gram set admits several orderings
    CONTEXT_STEM: {
        "hashes": TensorSpec("uint64", ("n_contexts",)),
        "counts": TensorSpec("int64", ("n_contexts",)),
    },
}

NGRAM_INDEX = register(
    AssetContract(
        name="ngram_index",
        partition_dim=SHARD_DIM,
        schema=NGRAM_INDEX_SCHEMA,
        column_docs=NGRAM_INDEX_COLUMN_DOCS,
        dictionary_columns=("n", "run"),
    )
)

NGRAM_VOCABULARY = register(
    AssetContract(
        name="ngram_vocabulary",
        partition_dim=None,
        schema=NGRAM_INDEX_SCHEMA,
        column_docs=NGRAM_INDEX_COLUMN_DOCS,
        tensors={
            LOOKUP_STEM: {
                "indptr_1": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_1": TensorSpec("int64", ("v1",)),
                "indptr_2": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_2": TensorSpec("int64", ("v2",)),
                "indptr_3": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_3": TensorSpec("int64", ("v3",)),
            }
        },
        dictionary_columns=("n", "run"),
    )
)

ARTICLE_HLLSETS = register(
    AssetContract(
        name="article_hllsets",
        partition_dim=SHARD_DIM,
        schema=ARTICLE_HLLSETS_SCHEMA,
        column_docs=ARTICLE_HLLSETS_COLUMN_DOCS,
        dictionary_columns=(),
    )
)

ADJACENCY = register(
    AssetContract(
        name="adjacency",
        partition_dim=SHARD_DIM,
        schema=ADJACENCY_NODES_SCHEMA,
        column_docs=ADJACENCY_NODES_COLUMN_DOCS,
        tensors=ADJACENCY_CSR,
        dictionary_columns=(),
    )
)

ADJACENCY_MERGED = register(
    AssetContract(
        name="adjacency_merged",
        partition_dim=None,
        schema=ADJACENCY_NODES_SCHEMA,
        column_docs=ADJACENCY_NODES_COLUMN_DOCS,
        tensors=ADJACENCY_CSR,
        dictionary_columns=(),
    )
)
