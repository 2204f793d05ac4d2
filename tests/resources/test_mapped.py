"""Memory-mapped safetensors reads (Warehouse.open_tensors_mmap, derived files): equal to the
verified eager read, zero-copy and read-only, hashed once per file identity (checked through
the process' read counter, not mocks), and damage is still a DamagedFileError."""

import os
import time

import numpy as np
import pytest

from sphere_resources import mapped
from sphere_resources.contracts import AssetContract, TensorSpec, register
from sphere_resources.integrity import DamagedFileError
from sphere_resources.store import Warehouse

MAPPED_CONTRACT = "test_mapped"
if (
    MAPPED_CONTRACT
    not in __import__("sphere_resources.contracts", fromlist=["CONTRACTS"]).CONTRACTS
):
    register(
        AssetContract(
            name=MAPPED_CONTRACT,
            partition_dim="shard",
            tensors={
                "big": {
                    "ids": TensorSpec("int64", ("n",)),
                    "flags": TensorSpec("bool", ("n",)),
                    "grid": TensorSpec("float32", ("m", 4)),
                }
            },
        )
    )


def bytes_read() -> int:
    """Bytes this process has read through read() calls (page faults of a mapping are not)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def write_big(store: Warehouse, n: int = 4_000_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "ids": rng.integers(-(2**40), 2**40, n),
        "flags": rng.random(n) < 0.3,
        "grid": rng.random((1000, 4), dtype=np.float32),
    }
    with store.partition_writer(MAPPED_CONTRACT, "0") as writer:
        writer.write_tensors("big", arrays, {"what": "test"})
    return arrays


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_mapped_read_equals_eager_and_is_a_readonly_view(tmp_path):
    store = Warehouse(tmp_path / "warehouse")
    want = write_big(store, 10_000)
    eager, eager_meta = store.read_tensors(MAPPED_CONTRACT, "0", "big")
    got, meta = store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")
    assert meta == eager_meta and meta["what"] == "test"
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and np.array_equal(got[name], arr)
        assert np.array_equal(got[name], eager[name])
        assert not got[name].flags.writeable and not got[name].flags.owndata
    with pytest.raises(ValueError):
        got["ids"][0] = 1


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")
def test_hashed_once_per_identity_then_opened_without_reading(tmp_path):
    store = Warehouse(tmp_path / "warehouse")
    want = write_big(store)
    path = store.partition_dir(MAPPED_CONTRACT, "0") / "big.safetensors"
    size = path.stat().st_size
    time.sleep(mapped.RACY_S + 0.1)  # a file changed in the last RACY_S seconds is not stamped
    before = bytes_read()
    store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")
    first = bytes_read() - before
    assert first >= size  # the first open hashed every byte
    before = bytes_read()
    got, _ = store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")
    assert bytes_read() - before < size // 50  # the stamp: header and manifest only
    assert np.array_equal(got["ids"], want["ids"])  # the pages are read when touched
    # a byte flipped after the stamp changes the file's ctime: hashed again, damage found
    flip_byte(path, size - 5)
    with pytest.raises(DamagedFileError, match="checksum mismatch"):
        store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")


def test_damage_is_detected_on_first_open(tmp_path):
    store = Warehouse(tmp_path / "warehouse")
    write_big(store, 1000)
    path = store.partition_dir(MAPPED_CONTRACT, "0") / "big.safetensors"
    flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(DamagedFileError) as err:
        store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")
    assert err.value.asset == MAPPED_CONTRACT and "big.safetensors" in str(err.value)
    # a truncated file: the size check, before any hashing
    with open(path, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(DamagedFileError, match="truncated"):
        store.open_tensors_mmap(MAPPED_CONTRACT, "0", "big")


def test_tensor_views_reject_bad_headers():
    arrays = {"a": np.arange(5, dtype=np.int64)}
    good = mapped._header(arrays, {}) + arrays["a"].tobytes()
    got, _ = mapped.tensor_views(good)
    assert np.array_equal(got["a"], arrays["a"])
    with pytest.raises(ValueError, match="too short"):
        mapped.tensor_views(b"\x01\x02")
    with pytest.raises(ValueError, match="runs past"):
        mapped.tensor_views((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="do not fit"):
        mapped.tensor_views(good[:-8])  # one element short


def test_derived_files_round_trip_keep_and_damage(tmp_path):
    store = Warehouse(tmp_path / "warehouse")
    arrays = {"x": np.arange(1000, dtype=np.int32), "y": np.linspace(0, 1, 7)}
    assert store.open_derived_tensors_mmap("thing", "v1") is None
    path = store.write_derived_tensors("thing", "v1", arrays, {"k": "v"})
    assert path is not None and path.parent.parent == store.cache_root
    assert store.cache_root == tmp_path / ".warehouse.cache"  # beside the root, not in it
    got, meta = store.open_derived_tensors_mmap("thing", "v1")
    assert meta == {"k": "v"} and all(np.array_equal(got[k], v) for k, v in arrays.items())
    # only the `keep` newest files of a kind stay
    for name in ("v2", "v3"):
        time.sleep(0.01)
        store.write_derived_tensors("thing", name, arrays, {}, keep=2)
    assert sorted(p.stem for p in path.parent.glob("*.safetensors")) == ["v2", "v3"]
    flip_byte(path.parent / "v3.safetensors", 200)
    with pytest.raises(DamagedFileError, match="cache:thing"):
        store.open_derived_tensors_mmap("thing", "v3")
