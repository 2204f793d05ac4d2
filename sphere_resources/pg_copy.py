"""PostgreSQL binary ``COPY`` encoding of Arrow columns, vectorized with numpy (no per-row Python).

``COPY t (c1, …, cK) FROM STDIN (FORMAT BINARY)`` reads (PostgreSQL docs, "Binary Format")::

    header   b"PGCOPY\\n\\xff\\r\\n\\x00" + int32 flags (0) + int32 extension length (0)
    tuple    int16 field count K, then per field: int32 byte length (-1 = NULL) + the bytes
    trailer  int16 -1

All integers are big-endian. Field bytes are each type's ``send`` form:

* ``int2/int4/int8`` big-endian two's complement; ``float4/float8`` big-endian IEEE 754;
  ``bool`` one byte 0/1; ``text`` the UTF-8 bytes (the server rejects NUL and invalid UTF-8);
  ``bytea`` the raw bytes.
* one-dimensional arrays (``_float4`` = ``real[]`` etc.): int32 ndim (1), int32 has-nulls flag (0),
  int32 element type OID, int32 length D, int32 lower bound (1), then D × (int32 4|8 + element).

Encoding a batch of N rows without a Python loop: every row is a sequence of *segments* that
alternate between a fixed-width run and a variable-length payload. The fixed run holds the field
count (first run only), every fixed-width field up to the next variable field, and that field's
int32 length; it is one record of a big-endian numpy structured array. The payload is the
variable field's bytes, read straight from the Arrow data buffer. With segment sizes ``S`` (N×K,
row-major) the output position of segment j is ``out_j = cumsum(S)_j − S_j`` and its source
position (in one concatenated source buffer) ``src_j``; the whole batch is one gather,
``out[t] = source[t + (src_j − out_j)]`` for t in segment j, built with ``np.repeat``.

The output is byte-identical to PostgreSQL's own ``COPY … TO STDOUT (FORMAT BINARY)`` for the
same values and column types (the tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"

# typname -> (numpy big-endian dtype, Arrow type) for fixed-width scalar types
SCALAR_TYPES: dict[str, tuple[str, pa.DataType]] = {
    "int2": (">i2", pa.int16()),
    "int4": (">i4", pa.int32()),
    "int8": (">i8", pa.int64()),
    "float4": (">f4", pa.float32()),
    "float8": (">f8", pa.float64()),
    "bool": ("u1", pa.bool_()),
}
VARLENA_TYPES = {
    "text": pa.large_string(),
    "varchar": pa.large_string(),
    "bytea": pa.large_binary(),
}
# array typname -> element OID (pg_type.oid, fixed for built-in types) and element typname
ARRAY_TYPES: dict[str, tuple[int, str]] = {
    "_int2": (21, "int2"),
    "_int4": (23, "int4"),
    "_int8": (20, "int8"),
    "_float4": (700, "float4"),
    "_float8": (701, "float8"),
}
SUPPORTED_TYPES = (*SCALAR_TYPES, *VARLENA_TYPES, *ARRAY_TYPES)


class CopyEncodeError(ValueError):
    """A column cannot be encoded as the target Postgres type (names the column; ``row`` is the
    row in the encoded batch when one row is to blame)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def _as_array(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.Array):
        return column
    return pa.array(column)


def _scalar_field(name: str, typname: str, column) -> tuple[list[tuple], dict, np.ndarray | None]:
    """Structured fields (length + value) for a fixed-width column; None values => nulls."""
    np_dtype, arrow_type = SCALAR_TYPES[typname]
    if isinstance(column, np.ndarray) and column.dtype == np.dtype(np_dtype).newbyteorder("="):
        values = column  # already the target type: no cast, no nulls
        nulls = None
    else:
        arr = _as_array(column)  # numpy too: pyarrow's safe cast rejects overflow/truncation
        try:
            arr = pc.cast(arr, arrow_type) if not arr.type.equals(arrow_type) else arr
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise CopyEncodeError(
                f"column '{name}': cannot encode {arr.type} as {typname}: {exc}"
            ) from None
        nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
        filled = arr.fill_null(False if typname == "bool" else 0) if nulls is not None else arr
        values = filled.to_numpy(zero_copy_only=False)
    width = np.dtype(np_dtype).itemsize
    return (
        [(f"{name}__len", ">i4"), (f"{name}__val", np_dtype)],
        {f"{name}__len": width, f"{name}__val": values.astype(np_dtype, copy=False)},
        nulls,
    )


def _array_matrix(name: str, typname: str, column) -> np.ndarray:
    """A (N, D) numpy matrix for a one-dimensional array column (uniform length, no nulls)."""
    _, elem = ARRAY_TYPES[typname]
    np_dtype = SCALAR_TYPES[elem][0]
    if isinstance(column, np.ndarray):
        matrix = column
    else:
        arr = _as_array(column)
        if arr.null_count:
            raise CopyEncodeError(f"column '{name}': {arr.null_count} null array(s)")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
        elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != width).any():
                bad = int(np.flatnonzero(lengths != width)[0])
                raise CopyEncodeError(
                    f"column '{name}': row {bad} has {int(lengths[bad])} elements, row 0 has {width}"
                )
        else:
            raise CopyEncodeError(f"column '{name}': {arr.type} is not a list type for {typname}")
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
        if flat.dtype == object:
            raise CopyEncodeError(f"column '{name}': array elements contain nulls")
        matrix = flat.reshape(len(arr), width)
    if matrix.ndim != 2:
        raise CopyEncodeError(f"column '{name}': expected a 2-D array, got shape {matrix.shape}")
    if np.issubdtype(np.dtype(np_dtype), np.integer) and not np.issubdtype(
        matrix.dtype, np.integer
    ):
        raise CopyEncodeError(f"column '{name}': {matrix.dtype} values for {typname}")
    return matrix.astype(np_dtype, copy=False)


def _varlena(name: str, typname: str, column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data bytes, start offsets, lengths with -1 for null) of a text/bytea column."""
    arr = _as_array(column)
    target = VARLENA_TYPES[typname]
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        if typname == "bytea":
            arr = arr.cast(pa.large_binary()) if pa.types.is_large_string(arr.type) else arr
    elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        if typname != "bytea":
            raise CopyEncodeError(f"column '{name}': binary data for {typname} (needs UTF-8 text)")
    elif pa.types.is_dictionary(arr.type):
        return _varlena(name, typname, arr.dictionary_decode())
    elif pa.types.is_null(arr.type):
        arr = pa.nulls(len(arr), target)
    else:
        raise CopyEncodeError(f"column '{name}': cannot encode {arr.type} as {typname}")
    offsets_type = np.int64 if arr.type in (pa.large_string(), pa.large_binary()) else np.int32
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=offsets_type)[arr.offset : arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if typname != "bytea":
        _reject_nul(name, data[offsets[0] : offsets[-1]], offsets)
    if arr.null_count:
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, lengths)
    return data, starts, lengths


def _reject_nul(name: str, data: np.ndarray, offsets: np.ndarray) -> None:
    """PostgreSQL ``text`` cannot hold U+0000: name the first row holding one, instead of the
    server failing the whole COPY with 'invalid byte sequence for encoding "UTF8": 0x00'."""
    nul = np.flatnonzero(data == 0)
    if len(nul):
        row = int(np.searchsorted(offsets, offsets[0] + nul[0], side="right")) - 1
        raise CopyEncodeError(
            f"column '{name}': row {row} of the batch contains NUL (U+0000), which PostgreSQL "
            "text cannot store (raw_articles rejects such articles as contains_nul)",
            row=row,
        )


def encode_rows(typnames: Sequence[str], columns: Sequence, names: Sequence[str] | None = None):
    """Binary COPY tuples (no header/trailer) for N rows.

    ``typnames[i]`` is the target column's ``pg_type.typname`` (int4, text, _float4, ...);
    ``columns[i]`` an Arrow array (or a numpy array: 1-D for scalars, 2-D (N, D) for arrays).
    """
    if len(typnames) != len(columns):
        raise ValueError(f"{len(typnames)} types for {len(columns)} columns")
    names = list(names) if names is not None else [f"c{i}" for i in range(len(columns))]
    n_rows = len(columns[0]) if columns else 0
    for name, col in zip(names, columns, strict=True):
        if len(col) != n_rows:
            raise CopyEncodeError(f"column '{name}' has {len(col)} rows, expected {n_rows}")
    for name, typname in zip(names, typnames, strict=True):
        if typname not in SUPPORTED_TYPES:
            raise CopyEncodeError(f"column '{name}': Postgres type {typname} is not supported")

    # Split the row into runs: fixed fields up to (and including the length of) a varlena field.
    runs: list[tuple[list[tuple], dict]] = [([("__nfields", ">i2")], {"__nfields": len(columns)})]
    payloads: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for name, typname, col in zip(names, typnames, columns, strict=True):
        fields, values = runs[-1]
        if typname in SCALAR_TYPES:
            f, v, nulls = _scalar_field(name, typname, col)
            if nulls is None:
                fields.extend(f)
                values.update(v)
            else:
                # A nullable scalar becomes a varlena payload: length -1 and no bytes when null.
                val = np.ascontiguousarray(v[f"{name}__val"]).view(np.uint8)
                width = np.dtype(f[1][1]).itemsize
                lengths = np.where(nulls, -1, width).astype(np.int64)
                fields.append((f"{name}__len", ">i4"))
                values[f"{name}__len"] = lengths
                payloads.append((val, np.arange(n_rows, dtype=np.int64) * width, lengths))
                runs.append(([], {}))
        elif typname in ARRAY_TYPES:
            oid, elem = ARRAY_TYPES[typname]
            matrix = _array_matrix(name, typname, col)
            dim = matrix.shape[1]
            esize = np.dtype(SCALAR_TYPES[elem][0]).itemsize
            elem_dtype = np.dtype([("len", ">i4"), ("val", SCALAR_TYPES[elem][0])])
            fields.extend(
                [
                    (f"{name}__len", ">i4"),
                    (f"{name}__hdr", ">i4", (5,)),
                    (f"{name}__elems", elem_dtype, (dim,)),
                ]
            )
            values[f"{name}__len"] = 20 + dim * (4 + esize)
            values[f"{name}__hdr"] = np.array([1, 0, oid, dim, 1], dtype=">i4")
            values[f"{name}__elems"] = matrix
        else:
            data, starts, lengths = _varlena(name, typname, col)
            fields.append((f"{name}__len", ">i4"))
            values[f"{name}__len"] = lengths
            payloads.append((data, starts, lengths))
            runs.append(([], {}))

    blocks: list[np.ndarray] = []  # per run: (N, width) uint8
    for fields, values in runs:
        if not fields:
            blocks.append(np.zeros((n_rows, 0), np.uint8))
            continue
        rec = np.empty(n_rows, dtype=np.dtype(fields))
        for key, val in values.items():
            if key.endswith("__elems"):
                rec[key]["len"] = rec.dtype[key].base["val"].itemsize
                rec[key]["val"] = val
            else:
                rec[key] = val
        blocks.append(rec.view(np.uint8).reshape(n_rows, rec.dtype.itemsize))

    if not payloads:  # every field fixed-width: the record array is the output
        return blocks[0].tobytes()

    # Segment table: run 0, payload 0, run 1, payload 1, ..., run K (maybe empty).
    n_seg = len(blocks) + len(payloads)
    sizes = np.zeros((n_rows, n_seg), np.int64)
    src = np.zeros((n_rows, n_seg), np.int64)
    sources: list[np.ndarray] = []
    base = 0
    for k, block in enumerate(blocks):
        width = block.shape[1]
        sizes[:, 2 * k] = width
        src[:, 2 * k] = base + np.arange(n_rows, dtype=np.int64) * width
        sources.append(block.reshape(-1))
        base += block.size
    for k, (data, starts, lengths) in enumerate(payloads):
        sizes[:, 2 * k + 1] = np.maximum(lengths, 0)
        src[:, 2 * k + 1] = base + starts
        sources.append(data)
        base += data.size
    flat_sizes = sizes.reshape(-1)
    out_start = np.cumsum(flat_sizes) - flat_sizes
    total = int(flat_sizes.sum())
    shift = np.repeat(src.reshape(-1) - out_start, flat_sizes)
    shift += np.arange(total, dtype=np.int64)
    return np.concatenate(sources)[shift].tobytes()
