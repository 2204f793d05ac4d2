"""Binary COPY encoding against hand-written bytes and against PostgreSQL's own encoder."""

import struct

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from sphere_resources.pg_copy import (
    COPY_HEADER,
    COPY_TRAILER,
    CopyEncodeError,
    encode_rows,
)


def test_hand_encoded_rows():
    got = encode_rows(
        ["int4", "text", "float4", "bytea"],
        [
            pa.array([7, None], pa.int32()),
            pa.array(["é", ""]),
            pa.array([1.5, -2.0]),
            pa.array([None, b"\x00"]),
        ],
    )
    row1 = (
        struct.pack(">h", 4)
        + struct.pack(">ii", 4, 7)
        + struct.pack(">i", 2)
        + "é".encode()
        + struct.pack(">if", 4, 1.5)
        + struct.pack(">i", -1)
    )
    row2 = (
        struct.pack(">h", 4)
        + struct.pack(">i", -1)
        + struct.pack(">i", 0)
        + struct.pack(">if", 4, -2.0)
        + struct.pack(">i", 1)
        + b"\x00"
    )
    assert got == row1 + row2
    arr = encode_rows(["_float4"], [np.array([[1.0, 2.0]], np.float32)])
    assert arr == struct.pack(">h", 1) + struct.pack(">i", 36) + struct.pack(
        ">iiiii", 1, 0, 700, 2, 1
    ) + struct.pack(">ifif", 4, 1.0, 4, 2.0)
    assert encode_rows(["int8"], [pa.array([], pa.int64())]) == b""


def test_rejects_values_that_do_not_fit():
    with pytest.raises(CopyEncodeError, match="'n'.*int4"):
        encode_rows(["int4"], [pa.array([2**40])], ["n"])
    with pytest.raises(CopyEncodeError, match="'v'.*row 1 has 1 elements"):
        encode_rows(["_float4"], [pa.array([[1.0, 2.0], [3.0]])], ["v"])
    with pytest.raises(CopyEncodeError, match="'b'.*binary data for text"):
        encode_rows(["text"], [pa.array([b"\xff"])], ["b"])
    with pytest.raises(CopyEncodeError, match="'a' has 1 rows, expected 2"):
        encode_rows(["int4", "int4"], [pa.array([1, 2]), pa.array([1])], ["b", "a"])
    with pytest.raises(CopyEncodeError, match="not supported"):
        encode_rows(["jsonb"], [pa.array(["{}"])], ["j"])


COLUMNS = [
    ("i2", "int2", "smallint", pa.array([1, -2, None, 32767, 0], pa.int16())),
    ("i4", "int4", "integer", pa.array([1, None, -(2**31), 5, 6], pa.int32())),
    ("i8", "int8", "bigint", pa.array([2**40, -1, 0, None, 7], pa.int64())),
    ("f4", "float4", "real", pa.array([0.5, float("inf"), None, -0.0, 1e-30], pa.float32())),
    ("f8", "float8", "double precision", pa.array([1 / 3, None, 2.0, 3.0, -1e300])),
    ("b", "bool", "boolean", pa.array([True, False, None, True, False])),
    ("t", "text", "text", pa.array(["a", "héllo wörld ✓", None, "", "x" * 5000])),
    ("lt", "text", "text", pa.array(["x", "y", "z", None, "🌍"], pa.large_string())),
    ("by", "bytea", "bytea", pa.array([b"\x00\xff", b"", None, b"abc", b"\x01" * 300])),
    ("v4", "_float4", "real[]", np.arange(15, dtype=np.float32).reshape(5, 3) - 7),
    ("v8", "_float8", "double precision[]", pa.array([[1.0, 2.0]] * 5, pa.list_(pa.float64(), 2))),
    ("vi", "_int4", "integer[]", pa.array([[1], [2], [3], [4], [-5]], pa.list_(pa.int32()))),
]


def server_binary(conn, table) -> bytes:
    buf = bytearray()
    with conn.cursor().copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as copy:
        for chunk in copy:
            buf += chunk
    return bytes(buf)


@pytest.mark.postgres
@pytest.mark.parametrize("offset", [0, 2])
def test_bytes_equal_postgres_own_binary_copy(postgres_url, pg_schema, offset):
    """Round trip: our bytes load, and the server's COPY TO gives back exactly our bytes."""
    names = [c[0] for c in COLUMNS]
    columns = [c[3].slice(offset) if isinstance(c[3], pa.Array) else c[3][offset:] for c in COLUMNS]
    data = COPY_HEADER + encode_rows([c[1] for c in COLUMNS], columns, names) + COPY_TRAILER
    table = f'"{pg_schema}".enc'
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            f"CREATE TABLE {table} ({', '.join(f'{n} {c[2]}' for n, c in zip(names, COLUMNS, strict=True))})"
        )
        with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)
        assert server_binary(conn, table) == data
        got = conn.execute(f"SELECT t, by, v4, i8 FROM {table}").fetchall()
    expect = zip(
        columns[6].to_pylist(),
        columns[8].to_pylist(),
        columns[9].tolist(),
        columns[2].to_pylist(),
        strict=True,
    )
    assert [(t, None if b is None else bytes(b), v, i) for t, b, v, i in got] == list(expect)


@pytest.mark.postgres
def test_nul_in_text_is_refused_by_the_encoder_and_the_server(postgres_url, pg_schema):
    # the encoder names the row (PostgreSQL text cannot hold U+0000) ...
    with pytest.raises(CopyEncodeError, match=r"column 't': row 1 .*NUL") as err:
        encode_rows(["text"], [pa.array(["ok", "a\x00b"])], ["t"])
    assert err.value.row == 1
    # ... where the server would reject the whole COPY: the same tuple, encoded by hand
    tuple_ = b"\x00\x01" + (3).to_bytes(4, "big") + b"a\x00b"
    data = COPY_HEADER + tuple_ + COPY_TRAILER
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f'CREATE TABLE "{pg_schema}".t (t text)')
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire, match="0x00"):
            with conn.cursor().copy(f'COPY "{pg_schema}".t FROM STDIN (FORMAT BINARY)') as copy:
                copy.write(data)
