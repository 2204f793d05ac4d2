"""The restore index opened memory-mapped (io.load_restore_index with its cache): the same
arrays and the same restore results as the eager build, an open that reads headers only (the
process' read counter, not mocks) over arrays backed by the mapping, and damage to the
warehouse still a DamagedFileError (damage to the cache: rebuilt from the warehouse)."""

import mmap
import os
import shutil
import time

import numpy as np
import pytest

from sphere_assets.lib.sketch import ngrams as ng
from sphere_assets.lib.sketch import restore as rs
from sphere_assets.ngrams import io
from sphere_assets.ngrams.contract import ADJACENCY_MERGED, CONTEXT_STEM, NGRAM_VOCABULARY
from sphere_resources import mapped
from sphere_resources.contracts import PARQUET_PART_NAME
from sphere_resources.integrity import DamagedFileError
from sphere_resources.store import Warehouse
from tests.resources.test_mapped import flip_byte


def bytes_read() -> int:
    """Bytes this process has read through read() calls (page faults of a mapping are not)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def mapped_base(arr: np.ndarray) -> bool:
    """Whether ``arr`` is a view whose memory is an mmap (not a copy in the heap)."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)


def stored_spans(store: Warehouse, count: int) -> list:
    rows = [r for _, t in io.read_span_rows(store, 64) for r in t.to_pylist()][:count]
    return [(io.hllset_of_row(r), int(r["patch_count"])) for r in rows]


def same_result(a: rs.RestoreResult, b: rs.RestoreResult) -> None:
    ra, rb = a.report.as_dict(), b.report.as_dict()
    ra.pop("latency_ms"), rb.pop("latency_ms")
    assert ra == rb
    assert [
        (c.patches, c.score, c.confidence, c.edge_coverage, c.roundtrip) for c in a.candidates
    ] == [(c.patches, c.score, c.confidence, c.edge_coverage, c.roundtrip) for c in b.candidates]
    assert all(np.array_equal(x, y) for x, y in zip(a.cover, b.cover, strict=True))


def age_past_racy(*paths) -> None:
    """Wait until every path is older than mapped.RACY_S (younger files are not stamped)."""
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in paths)
    wait = mapped.RACY_S + 0.1 - (time.time_ns() - newest) / 1e9
    if wait > 0:
        time.sleep(wait)


def cache_files(store: Warehouse) -> list:
    return sorted((store.cache_root / io.RESTORE_CACHE_KIND).glob("*.safetensors"))


def test_mapped_index_equals_the_eager_build(materialized):
    root, _ = materialized
    store = Warehouse(root)
    eager = io.build_restore_index(store)
    io.load_restore_index(store)  # makes the cache when the check did not
    lazy = io.load_restore_index(store)
    assert mapped_base(lazy.weight3) and mapped_base(lazy.table.grams[2])
    assert not mapped_base(eager.weight3)
    want, want_meta = eager.arrays()
    got, got_meta = lazy.arrays()
    assert want_meta == got_meta and sorted(want) == sorted(got)
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    spans = stored_spans(store, 12)
    assert len(spans) == 12
    for h, length in spans:
        for kwargs in ({"length": length}, {}, {"use_context": False}, {"open_ends": True}):
            same_result(
                rs.restore(h, eager, verify=True, **kwargs),
                rs.restore(h, lazy, verify=True, **kwargs),
            )
    # another P: its own cache file, still equal to the eager build at that P
    eager12, lazy12 = io.build_restore_index(store, 12), io.load_restore_index(store, 12)
    lazy12 = io.load_restore_index(store, 12)
    seq = eager12.token_bytes[2:40]
    h12 = ng.hllset_of_patches(seq, 12)
    same_result(rs.restore(h12, eager12), rs.restore(h12, lazy12))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")
def test_open_reads_headers_only_and_queries_touch_pages(materialized):
    root, _ = materialized
    store = Warehouse(root)
    io.load_restore_index(store)
    context = store.partition_dir(ADJACENCY_MERGED.name, None) / f"{CONTEXT_STEM}.safetensors"
    files = [*cache_files(store), context]
    age_past_racy(*files)
    io.load_restore_index(store)  # verifies once, records the stamps
    big = sum(p.stat().st_size for p in files)
    before = bytes_read()
    index = io.load_restore_index(store)
    opened = bytes_read() - before
    assert opened < big // 20, (opened, big)  # manifests, headers and the vocabulary's header
    h, length = stored_spans(store, 1)[0]
    out = rs.restore(h, index, length=length)
    assert out.ok and mapped_base(index.context._hashes)


def test_damaged_warehouse_file_is_still_detected(materialized, tmp_path):
    root, _ = materialized
    copy = tmp_path / "warehouse"
    shutil.copytree(root, copy)
    store = Warehouse(copy)
    io.load_restore_index(store)  # the cache of this copy
    context = store.partition_dir(ADJACENCY_MERGED.name, None) / f"{CONTEXT_STEM}.safetensors"
    age_past_racy(context, *cache_files(store))
    io.load_restore_index(store)  # stamps recorded
    flip_byte(context, context.stat().st_size - 3)
    with pytest.raises(DamagedFileError, match="context.safetensors"):
        io.load_restore_index(store)
    shutil.copy2(root / ADJACENCY_MERGED.name / context.name, context)  # repaired
    vocab = store.partition_dir(NGRAM_VOCABULARY.name, None) / PARQUET_PART_NAME
    flip_byte(vocab, vocab.stat().st_size // 2)
    with pytest.raises(DamagedFileError, match="ngram_vocabulary"):
        io.load_restore_index(store)


def test_damaged_cache_is_rebuilt_from_the_warehouse(materialized, tmp_path):
    root, _ = materialized
    copy = tmp_path / "warehouse"
    shutil.copytree(root, copy)
    store = Warehouse(copy)
    eager = io.build_restore_index(store)
    io.load_restore_index(store)
    (cache,) = cache_files(store)
    flip_byte(cache, cache.stat().st_size - 11)
    with pytest.warns(UserWarning, match="checksum mismatch.*rebuilding"):
        rebuilt = io.load_restore_index(store)
    h, length = stored_spans(store, 1)[0]
    same_result(rs.restore(h, eager, length=length), rs.restore(h, rebuilt, length=length))
    lazy = io.load_restore_index(store)  # the rewritten cache opens mapped again
    assert mapped_base(lazy.weight3)
    same_result(rs.restore(h, eager, length=length), rs.restore(h, lazy, length=length))
