"""Data contract of the harmonics family: sh_basis (one partition per band limit L)."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import BAND_LIMIT_DIM, AssetContract, TensorSpec, register

# --- sh_basis: one partition per band limit L ------------------------------------------------
# <root>/sh_basis/L=<L>/basis.safetensors  (theta, phi, weights, legendre; layout in the
# safetensors metadata and sphere_assets.lib.sphere.sht) + part-0.parquet (one summary row; the
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

SH_BASIS = register(
    AssetContract(
        name="sh_basis",
        partition_dim=BAND_LIMIT_DIM,
        schema=SH_BASIS_SCHEMA,
        column_docs=SH_BASIS_COLUMN_DOCS,
        tensors={
            "basis": {
                "theta": TensorSpec("float64", ("n_theta",)),
                "phi": TensorSpec("float64", ("n_phi",)),
                "weights": TensorSpec("float64", ("n_theta",)),
                "legendre": TensorSpec("float64", ("legendre_rows", "half_grid")),
            }
        },
    )
)
