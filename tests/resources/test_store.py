import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sphere_assets.ingest.contract import RAW_ARTICLES_SCHEMA
from sphere_resources.contracts import AssetContract, ContractError, TensorSpec, register
from sphere_resources.store import Warehouse, canonical_safetensors, read_safetensors

TEST_CONTRACT = "test_vectors"
if TEST_CONTRACT not in __import__("sphere_resources.contracts", fromlist=["CONTRACTS"]).CONTRACTS:
    register(
        AssetContract(
            name=TEST_CONTRACT,
            partition_dim="shard",
            tensors={
                "vectors": {
                    "emb": TensorSpec("float32", ("P", 3)),
                    "norm": TensorSpec("float32", ("P",)),
                }
            },
        )
    )


def articles(n: int, tag: str = "a") -> pa.Table:
    return pa.Table.from_pydict(
        {
            "article_id": [f"{tag}{i}" for i in range(n)],
            "title": ["t"] * n,
            "text": ["hello"] * n,
            "source": ["test"] * n,
            "n_bytes": [5] * n,
            "url": [None] * n,
        },
        schema=RAW_ARTICLES_SCHEMA,
    )


def test_roundtrip_and_hive_layout(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.partition_writer("raw_articles", "2") as w:
        w.write_table(articles(3))
    path = tmp_path / "raw_articles" / "shard=2" / "part-0.parquet"
    assert path.exists()
    assert wh.read_table("raw_articles", "2").num_rows == 3
    assert wh.partitions("raw_articles") == ["2"]


def test_rewrite_replaces_partition_whole(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(3))
        w.write_bytes("extra.bin", b"old")
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(1))
    files = sorted(p.name for p in (tmp_path / "raw_articles" / "shard=0").iterdir())
    assert files == ["_manifest.json", "part-0.parquet"]
    assert wh.read_table("raw_articles", "0").num_rows == 1


def test_interrupted_write_keeps_previous_partition(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.partition_writer("raw_articles", "0") as w:
        w.write_table(articles(4))
    before = (tmp_path / "raw_articles" / "shard=0" / "part-0.parquet").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with wh.partition_writer("raw_articles", "0") as w:
            w.write_table(articles(1, "new"))
            raise RuntimeError("boom")
    assert (tmp_path / "raw_articles" / "shard=0" / "part-0.parquet").read_bytes() == before
    assert not any((wh.staging_root / "raw_articles").iterdir())


def test_killed_writer_process_leaves_previous_partition(tmp_path):
    """A process killed mid-write (no exception handling at all) must not damage the partition."""
    wh = Warehouse(tmp_path)
    with wh.partition_writer("raw_articles", "1") as w:
        w.write_table(articles(2))
    before = wh.read_table("raw_articles", "1")
    code = f"""
import os, pyarrow as pa
from sphere_resources.store import Warehouse
from tests.resources.test_store import articles
wh = Warehouse({str(tmp_path)!r})
with wh.partition_writer("raw_articles", "1") as w:
    w.write_table(articles(50, "x"))
    os._exit(9)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert wh.read_table("raw_articles", "1").equals(before)
    assert wh.clean_staging() == 1


def test_schema_mismatch_names_asset_partition_field(tmp_path):
    wh = Warehouse(tmp_path)
    bad = articles(2).set_column(4, "n_bytes", pa.array([1, 2], pa.int32()))
    with pytest.raises(
        ContractError, match=r"asset 'raw_articles', partition '0', field 'n_bytes'.*int32"
    ):
        with wh.partition_writer("raw_articles", "0") as w:
            w.write_table(bad)
    # a file written behind the warehouse's back (no manifest) is caught on read
    (tmp_path / "raw_articles" / "shard=3").mkdir(parents=True)
    pq.write_table(
        articles(2).drop_columns(["title"]),
        tmp_path / "raw_articles" / "shard=3" / "part-0.parquet",
    )
    with pytest.raises(ContractError, match=r"partition '3', field '_manifest.json'.*no manifest"):
        wh.read_table("raw_articles", "3")
    # ... and so is one that carries a manifest but not the contract's schema
    with wh.partition_writer("raw_articles", "3") as w:
        w.write_bytes("other.bin", b"x")
    pq.write_table(
        articles(2).drop_columns(["title"]),
        tmp_path / "raw_articles" / "shard=3" / "part-0.parquet",
    )
    from sphere_resources.integrity import manifest_bytes

    part = tmp_path / "raw_articles" / "shard=3"
    (part / "_manifest.json").write_bytes(
        manifest_bytes("raw_articles", "3", [part / "part-0.parquet", part / "other.bin"])
    )
    with pytest.raises(ContractError, match=r"partition '3', field 'title': missing column"):
        wh.read_table("raw_articles", "3")


def test_null_in_required_column_rejected(tmp_path):
    wh = Warehouse(tmp_path)
    t = articles(2).set_column(1, "title", pa.array(["x", None], pa.string()))
    with pytest.raises(ContractError, match="field 'title': 1 null"):
        with wh.partition_writer("raw_articles", "0") as w:
            w.write_table(t)


def test_tensor_contract_checks_dtype_and_shape(tmp_path):
    wh = Warehouse(tmp_path)
    good = {"emb": np.zeros((4, 3), np.float32), "norm": np.ones(4, np.float32)}
    with wh.partition_writer(TEST_CONTRACT, "0") as w:
        w.write_tensors("vectors", good, {"format": "test"})
    arrays, meta = wh.read_tensors(TEST_CONTRACT, "0", "vectors")
    assert meta["format"] == "test" and meta["partition"] == "0"
    np.testing.assert_array_equal(arrays["emb"], good["emb"])
    for bad, msg in [
        ({"emb": np.zeros((4, 3), np.float64), "norm": good["norm"]}, "dtype float64"),
        ({"emb": np.zeros((4, 2), np.float32), "norm": good["norm"]}, "axis 1 has size 2"),
        ({"emb": good["emb"], "norm": np.ones(5, np.float32)}, "'P'"),
        ({"emb": good["emb"]}, "vectors.norm'.*missing"),
    ]:
        with pytest.raises(ContractError, match=msg):
            with wh.partition_writer(TEST_CONTRACT, "1") as w:
                w.write_tensors("vectors", bad)


def test_safetensors_bytes_are_deterministic_across_processes(tmp_path):
    code = """
import sys, numpy as np
from sphere_resources.store import canonical_safetensors
meta = {k: str(i) for i, k in enumerate("zyxwvutsrqponm")}
sys.stdout.buffer.write(canonical_safetensors({"b": np.arange(3, dtype=np.float32), "a": np.ones(2)}, meta))
"""
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
        for _ in range(4)
    }
    assert len(outs) == 1
    path = tmp_path / "x.safetensors"
    path.write_bytes(outs.pop())
    arrays, meta = read_safetensors(path)
    np.testing.assert_array_equal(arrays["b"], np.arange(3, dtype=np.float32))
    assert meta["z"] == "0" and list(meta) == sorted(meta)
    # the library itself reads the canonical file
    from safetensors.numpy import load_file

    assert set(load_file(str(path))) == {"a", "b"}
    assert canonical_safetensors({"a": np.ones(1)}, {}) == canonical_safetensors(
        {"a": np.ones(1)}, {}
    )
