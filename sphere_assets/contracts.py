"""Data contracts: the one place that says what every asset stores.

Each asset has an :class:`AssetContract` naming

* its partition dimension (``shard``, ``L`` or none) — which becomes the Hive directory key
  ``<asset>/<dim>=<key>/`` in the warehouse;
* the Arrow schema of its Parquet rows (if it has rows);
* the dtype and symbolic shape of every safetensors array it stores (if it has arrays).

Readers and writers validate against these contracts and raise :class:`ContractError`, which
always names the asset, the partition and the offending field.

This module is pure (pyarrow + numpy only): compute modules, resources and tests may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Layout constants
# ---------------------------------------------------------------------------------------------

DEFAULT_WAREHOUSE_ROOT = "data/warehouse"
DEFAULT_CATALOG_PATH = "data/sphere.duckdb"
PARQUET_PART_NAME = "part-0.parquet"

SHARD_DIM = "shard"
BAND_LIMIT_DIM = "L"


class ContractError(ValueError):
    """A stored or produced artifact does not match its contract."""

    def __init__(self, asset: str, partition: str | None, field: str, problem: str):
        self.asset = asset
        self.partition = partition
        self.field = field
        self.problem = problem
        where = f"asset '{asset}'"
        if partition is not None:
            where += f", partition '{partition}'"
        super().__init__(f"{where}, field '{field}': {problem}")


@dataclass(frozen=True)
class TensorSpec:
    """dtype (numpy name) and shape of one safetensors array.

    Shape entries are ints (fixed) or strings (symbolic: every array using the same symbol in
    one file must agree on its size, e.g. ``"P"`` = number of patches).
    """

    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class AssetContract:
    name: str
    partition_dim: str | None
    schema: pa.Schema | None = None
    # file stem (without .safetensors) -> array name -> spec
    tensors: Mapping[str, Mapping[str, TensorSpec]] = field(default_factory=dict)
    description: str = ""
    # Parquet dictionary encoding only pays off for low-cardinality columns; None = all columns.
    dictionary_columns: tuple[str, ...] | None = None

    @property
    def has_rows(self) -> bool:
        return self.schema is not None


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------

RAW_ARTICLES_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("url", pa.string(), nullable=True),
    ]
)

RAW_ARTICLES_COLUMN_DOCS = {
    "article_id": "Stable article id from the source (shard = mmh3 x64 low 64 bits of id mod N).",
    "title": "Article title (empty string when the source has none).",
    "text": "Article text, NFC-normalized valid UTF-8.",
    "source": "Where the article came from (bundled:pydoc_data.topics, file path, hf:name/config/split).",
    "n_bytes": "Length of text in UTF-8 bytes.",
    "url": "Source URL when the source provides one.",
}

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


CONTRACTS: dict[str, AssetContract] = {}


def register(contract: AssetContract) -> AssetContract:
    if contract.name in CONTRACTS:
        raise ValueError(f"contract for asset '{contract.name}' registered twice")
    CONTRACTS[contract.name] = contract
    return contract


register(
    AssetContract(
        name="raw_articles",
        partition_dim=SHARD_DIM,
        schema=RAW_ARTICLES_SCHEMA,
        description="Articles from the configured corpus source, one row per article.",
        dictionary_columns=("source",),
    )
)

# --- entropy_model / blt_patches / patch_embeddings (issue 3) ---------------------------------
# <root>/entropy_model/model.safetensors    weights + config (format sphere_blt_entropy_model_v1;
#                                           validated by compute.entropy_model.load_entropy_model,
#                                           whose parameter names depend on n_layers)
# <root>/entropy_model/heldout.safetensors  held-out token entropies for threshold calibration
# <root>/entropy_model/part-0.parquet       one summary row
# <root>/blt_patches/shard=<k>/part-0.parquet
# <root>/patch_embeddings/shard=<k>/{embeddings.safetensors, blt_v3.safetensors, part-0.parquet}

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

register(
    AssetContract(
        name="entropy_model",
        partition_dim=None,
        schema=ENTROPY_MODEL_SCHEMA,
        tensors={
            "heldout": {
                "entropies": TensorSpec("float32", ("tokens",)),
                "lengths": TensorSpec("int64", ("segments",)),
            }
        },
        description="BLT-family byte entropy model trained on a deterministic sample of "
        "raw_articles; model.safetensors (weights + config), held-out token entropies for "
        "threshold calibration, one summary row.",
        dictionary_columns=(),
    )
)

register(
    AssetContract(
        name="blt_patches",
        partition_dim=SHARD_DIM,
        schema=BLT_PATCHES_SCHEMA,
        description="BLT entropy patches, one row per patch; an article's patches in patch_index "
        "order concatenate to its UTF-8 bytes.",
        dictionary_columns=("article_id",),
    )
)

register(
    AssetContract(
        name="patch_embeddings",
        partition_dim=SHARD_DIM,
        schema=PATCH_EMBEDDINGS_SCHEMA,
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
        description="One vector per blt_patches row: mean of the entropy model's pre-norm "
        "hidden states over the patch's bytes, prominence = its L2 norm; a Parquet side table "
        "with keys + prominence, and a blt-burn v3 export.",
        dictionary_columns=("article_id",),
    )
)


# --- sh_basis (issue 4): one partition per band limit L ---------------------------------------
# <root>/sh_basis/L=<L>/basis.safetensors  (theta, phi, weights, legendre; layout in the
# safetensors metadata and sphere_assets.compute.sht) + part-0.parquet (one summary row; the
# band limit itself comes from the Hive key ``L``).

SH_BASIS_SCHEMA = pa.schema(
    [
        pa.field("n_theta", pa.int32(), nullable=False),
        pa.field("n_phi", pa.int32(), nullable=False),
        pa.field("n_coeffs", pa.int32(), nullable=False),
        pa.field("legendre_rows", pa.int64(), nullable=False),
        pa.field("grid", pa.string(), nullable=False),
        pa.field("convention", pa.string(), nullable=False),
        pa.field("tensor_file", pa.string(), nullable=False),
        pa.field("tensor_bytes", pa.int64(), nullable=False),
        pa.field("tensor_sha256", pa.string(), nullable=False),
        pa.field("max_gram_error", pa.float64(), nullable=False),
        pa.field("max_addition_error", pa.float64(), nullable=False),
        pa.field("n_zero_columns", pa.int64(), nullable=False),
        pa.field("n_nonfinite", pa.int64(), nullable=False),
    ]
)

SH_BASIS_COLUMN_DOCS = {
    "n_theta": "Colatitude rings 2L: theta_t = (2t+1) pi / (4L).",
    "n_phi": "Longitudes per ring (2L): phi_k = 2 pi k / n_phi.",
    "n_coeffs": "Real SH coefficients L*L (flat index l*l + l + m).",
    "legendre_rows": "Rows of the stored Legendre table (incl. zero padding of the m blocks).",
    "grid": "Grid and quadrature description.",
    "convention": "Real SH convention (scipy sph_harm_y, sqrt2 (-1)^m Re/Im).",
    "tensor_file": "safetensors file beside this row.",
    "tensor_bytes": "Size of the safetensors file in bytes.",
    "tensor_sha256": "SHA-256 of the safetensors file bytes.",
    "max_gram_error": "max |G - I| of the grid Gram matrix of all real Y_lm (quadrature).",
    "max_addition_error": "max relative error of the addition theorem sum_m Y_lm^2 = (2l+1)/4pi.",
    "n_zero_columns": "(l, m) Legendre rows identically zero on the grid (must be 0).",
    "n_nonfinite": "NaN/inf entries in the stored arrays (must be 0).",
}

register(
    AssetContract(
        name="sh_basis",
        partition_dim=BAND_LIMIT_DIM,
        schema=SH_BASIS_SCHEMA,
        tensors={
            "basis": {
                "theta": TensorSpec("float64", ("n_theta",)),
                "phi": TensorSpec("float64", ("n_phi",)),
                "weights": TensorSpec("float64", ("n_theta",)),
                "legendre": TensorSpec("float64", ("legendre_rows", "half_grid")),
            }
        },
        description="Real spherical-harmonic basis for band limit L: equiangular grid, exact "
        "quadrature weights and the orthonormal associated Legendre table (half grid).",
    )
)


# --- ngram_index / ngram_vocabulary / article_hllsets / adjacency / adjacency_merged (issue 5) --
# HLLSet n-gram system over BLT patches (sphere_assets.compute.{ngrams,hllset,adjacency,restore}).
# <root>/ngram_index/shard=<k>/part-0.parquet          distinct 1/2/3-grams of the shard
# <root>/ngram_vocabulary/part-0.parquet + lookup.safetensors   global merge + bit -> rows CSR
# <root>/article_hllsets/shard=<k>/part-0.parquet      HLLSet per article and per span
# <root>/adjacency/shard=<k>/part-0.parquet + csr.safetensors   node table + CSR (per shard)
#   + context.safetensors                                         n-gram context counts (3..N)
# <root>/adjacency_merged/part-0.parquet + csr.safetensors      the same, merged over shards

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
    "_START_/_END_-padded sequence with 0x00 (sphere_assets.compute.ngrams).",
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
    "csr": {
        "indptr": TensorSpec("int64", ("n_nodes_plus_1",)),
        "indices": TensorSpec("int64", ("n_edges",)),
        "counts": TensorSpec("int64", ("n_edges",)),
        "weights": TensorSpec("float64", ("n_edges",)),
    },
    # patch n-gram counts of order 3..N by context hash (compute/context_model.py): the corpus
    # memory restore uses to order a span whose n-gram set admits several orderings
    "context": {
        "hashes": TensorSpec("uint64", ("n_contexts",)),
        "counts": TensorSpec("int64", ("n_contexts",)),
    },
}

register(
    AssetContract(
        name="ngram_index",
        partition_dim=SHARD_DIM,
        schema=NGRAM_INDEX_SCHEMA,
        description="Distinct patch 1/2/3-grams of a shard with hash, register, run and count.",
        dictionary_columns=("n", "run"),
    )
)

register(
    AssetContract(
        name="ngram_vocabulary",
        partition_dim=None,
        schema=NGRAM_INDEX_SCHEMA,
        tensors={
            "lookup": {
                "indptr_1": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_1": TensorSpec("int64", ("v1",)),
                "indptr_2": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_2": TensorSpec("int64", ("v2",)),
                "indptr_3": TensorSpec("int64", ("n_bits_plus_1",)),
                "rows_3": TensorSpec("int64", ("v3",)),
            }
        },
        description="All shards' n-grams merged by key bytes (counts added), plus the lookup "
        "bit -> Parquet rows per layer (CSR over bit = reg*32+run).",
        dictionary_columns=("n", "run"),
    )
)

register(
    AssetContract(
        name="article_hllsets",
        partition_dim=SHARD_DIM,
        schema=ARTICLE_HLLSETS_SCHEMA,
        description="HLLSet (three uint32 layers) per article and per fixed-size patch span.",
        dictionary_columns=(),
    )
)

register(
    AssetContract(
        name="adjacency",
        partition_dim=SHARD_DIM,
        schema=ADJACENCY_NODES_SCHEMA,
        tensors=ADJACENCY_CSR,
        description="De Bruijn patch graph of a shard: 2-gram nodes (Parquet), 3-gram edges "
        "as CSR with counts and weights ln((F3+a)/(F2+a*outdeg)) (safetensors).",
        dictionary_columns=(),
    )
)

register(
    AssetContract(
        name="adjacency_merged",
        partition_dim=None,
        schema=ADJACENCY_NODES_SCHEMA,
        tensors=ADJACENCY_CSR,
        description="The shard adjacencies merged by adding counts (equal to one build over "
        "the whole corpus); weights recomputed.",
        dictionary_columns=(),
    )
)


# --- shell_placements (issue 6): water-filled places on the shell sphere, per shard ----------
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

register(
    AssetContract(
        name="shell_placements",
        partition_dim=SHARD_DIM,
        schema=SHELL_PLACEMENTS_SCHEMA,
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
        description="Every patch embedding's water-filled place (shell, r, theta, phi) on the "
        "shell sphere; coordinates, Librarian (bytes -> r, theta, phi) and LVM (5 patches -> "
        "next) training tensors in safetensors.",
        dictionary_columns=("article_id",),
    )
)


def contract_for(asset: str) -> AssetContract:
    try:
        return CONTRACTS[asset]
    except KeyError:
        raise KeyError(f"no data contract for asset '{asset}' in sphere_assets.contracts") from None


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_schema(contract: AssetContract, partition: str | None, schema: pa.Schema) -> None:
    """Check that ``schema`` has exactly the contract's fields, in order, with the same types."""
    if contract.schema is None:
        raise ContractError(contract.name, partition, "<rows>", "asset has no Parquet rows")
    expected = contract.schema
    got_names = list(schema.names)
    for f in expected:
        if f.name not in got_names:
            raise ContractError(contract.name, partition, f.name, "missing column")
        got = schema.field(f.name)
        if not got.type.equals(f.type):
            raise ContractError(
                contract.name, partition, f.name, f"type {got.type}, expected {f.type}"
            )
    extra = [n for n in got_names if n not in expected.names]
    if extra:
        raise ContractError(contract.name, partition, extra[0], "column not in the contract")
    if got_names != expected.names:
        raise ContractError(
            contract.name,
            partition,
            "<columns>",
            f"column order {got_names}, expected {expected.names}",
        )


def validate_nulls(contract: AssetContract, partition: str | None, table: pa.Table) -> None:
    for f in contract.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ContractError(
                contract.name,
                partition,
                f.name,
                f"{table.column(f.name).null_count} null value(s) in a non-nullable column",
            )


def conform_table(contract: AssetContract, partition: str | None, table: pa.Table) -> pa.Table:
    """Validate a table produced by an asset and attach the contract schema (nullability)."""
    validate_schema(contract, partition, table.schema)
    validate_nulls(contract, partition, table)
    return table.cast(contract.schema)


def validate_tensors(
    contract: AssetContract, partition: str | None, stem: str, arrays: Mapping[str, np.ndarray]
) -> None:
    specs = contract.tensors.get(stem)
    if specs is None:
        raise ContractError(contract.name, partition, stem, "tensor file not in the contract")
    sizes: dict[str, int] = {}
    for name, spec in specs.items():
        if name not in arrays:
            raise ContractError(contract.name, partition, f"{stem}.{name}", "missing tensor")
        arr = arrays[name]
        if np.dtype(arr.dtype) != np.dtype(spec.dtype):
            raise ContractError(
                contract.name,
                partition,
                f"{stem}.{name}",
                f"dtype {arr.dtype}, expected {spec.dtype}",
            )
        if len(arr.shape) != len(spec.shape):
            raise ContractError(
                contract.name,
                partition,
                f"{stem}.{name}",
                f"rank {len(arr.shape)} (shape {tuple(arr.shape)}), expected shape {spec.shape}",
            )
        for axis, (size, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if isinstance(want, int):
                if size != want:
                    raise ContractError(
                        contract.name,
                        partition,
                        f"{stem}.{name}",
                        f"axis {axis} has size {size}, expected {want}",
                    )
            elif sizes.setdefault(want, size) != size:
                raise ContractError(
                    contract.name,
                    partition,
                    f"{stem}.{name}",
                    f"axis {axis} ('{want}') has size {size}, but another tensor has {want}={sizes[want]}",
                )
    extra = sorted(set(arrays) - set(specs))
    if extra:
        raise ContractError(
            contract.name, partition, f"{stem}.{extra[0]}", "tensor not in the contract"
        )


def column_schema_metadata(schema: pa.Schema, docs: Mapping[str, str] | None = None):
    """Plain (name, type, description) triples; the Dagster layer wraps them in TableSchema."""
    docs = docs or {}
    return [(f.name, str(f.type), docs.get(f.name, "")) for f in schema]
