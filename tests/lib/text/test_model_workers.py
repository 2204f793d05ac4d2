"""Worker processes for entropy-model inference: same results as in-process, in order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text import model_workers as mw
from sphere_assets.lib.text import patch_embeddings as pe
from sphere_assets.lib.text import patcher as pt
from sphere_assets.lib.text.torch_runtime import torch_runtime

CONFIG = em.EntropyModelConfig.tiny(dim=32, n_layers=1, n_heads=2, window=8, seed=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(CONFIG.seed)
    return em.build_model(CONFIG).eval()


@pytest.fixture(scope="module")
def articles():
    rng = np.random.default_rng(7)
    texts = [
        b"",
        b"x",
        "naïve café — 東京 😀 ".encode() * 40,
        rng.integers(32, 127, 5000, dtype=np.uint8).tobytes(),
    ]
    texts += [
        rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 900, 12)
    ]
    return [(f"a{i}", data) for i, data in enumerate(texts)]


@pytest.fixture(scope="module")
def pool(model):
    with mw.ModelWorkers(model, 2, num_threads=1) as workers:
        yield workers


def assert_same_patches(a: pt.ArticlePatches, b: pt.ArticlePatches) -> None:
    for name in ("byte_start", "byte_len", "mean_entropy", "max_entropy", "first_entropy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.byte_entropy, b.byte_entropy)


def test_byte_batches_keep_order_and_reach_the_target():
    sizes = [3, 4, 10, 1, 1, 1, 2]
    batches = list(mw.byte_batches(sizes, lambda n: n, 5))
    assert batches == [[3, 4], [10], [1, 1, 1, 2]]
    assert [x for b in batches for x in b] == sizes
    assert list(mw.byte_batches([], len, 5)) == []
    assert list(mw.byte_batches([1, 1], lambda n: n, 5)) == [[1, 1]]  # short tail kept


def test_worker_count_and_batch_size_rules():
    assert mw.worker_count(3, 10) == 3  # explicit wins
    assert mw.worker_count(0, mw.PARALLEL_MIN_BYTES - 1) == 1  # small input: in-process
    assert mw.worker_count(0, mw.PARALLEL_MIN_BYTES) == mw.available_cores()
    assert mw.worker_count(0, None, threads_per_worker=mw.available_cores() + 1) == 1
    with pytest.raises(ValueError, match="workers must be >= 0"):
        mw.worker_count(-1, 10)
    assert mw.batch_bytes_for(None, 2) == mw.MAX_BATCH_BYTES
    assert mw.batch_bytes_for(1000, 2) == mw.MIN_BATCH_BYTES
    assert mw.batch_bytes_for(800_000, 2) == 25_000  # 16 batches per worker
    assert mw.batch_bytes_for(10**9, 2) == mw.MAX_BATCH_BYTES


@pytest.mark.slow
def test_patches_from_workers_equal_in_process(model, articles, pool):
    threshold = 3.0
    with torch_runtime(1):
        expected = [pt.patch_article(model, data, threshold, "global", 16) for _, data in articles]
        local = list(pt.patch_articles(model, articles, threshold, "global", 16, batch_bytes=700))
    remote = list(
        pt.patch_articles(model, articles, threshold, "global", 16, workers=pool, batch_bytes=700)
    )
    assert len(local) == len(remote) == len(articles)
    for e, a, b in zip(expected, local, remote, strict=True):
        assert_same_patches(e, a)
        assert_same_patches(e, b)
    assert remote[0].num_patches == 0 and remote[1].num_patches == 1
    slim = list(
        pt.patch_articles(
            model, articles, threshold, "global", 16, workers=pool, keep_byte_entropy=False
        )
    )
    for e, b in zip(expected, slim, strict=True):
        assert b.byte_entropy is None
        assert_same_patches(e, dataclasses.replace(b, byte_entropy=e.byte_entropy))
    assert pool.busy_seconds > 0


@pytest.mark.slow  # worker processes (the pool)
def test_pooled_vectors_from_workers_equal_in_process(model, articles, pool):
    with torch_runtime(1):
        patched = [pt.patch_article(model, data, 3.0, "global", 16) for _, data in articles]
    items = [
        (aid, data, p.byte_start, p.byte_len)
        for (aid, data), p in zip(articles, patched, strict=True)
    ]
    with torch_runtime(1):
        local = list(pe.pool_articles(model, items, batch_bytes=2000))
    remote = list(pe.pool_articles(model, items, workers=pool, batch_bytes=2000))
    for (_, data, starts, lens), a, b in zip(items, local, remote, strict=True):
        with torch_runtime(1):  # workers run 1 torch thread; reductions depend on it
            direct = pe.pool_patch_embeddings(model, data, starts, lens)
        for name in ("embeddings", "prominence", "patch_entropy", "byte_entropy"):
            np.testing.assert_array_equal(getattr(a, name), getattr(direct, name))
            np.testing.assert_array_equal(getattr(b, name), getattr(direct, name))


@pytest.mark.slow  # worker processes (the pool)
def test_errors_name_the_article_in_process_and_in_workers(model, pool):
    bad = [
        ("good", b"abc", np.array([0]), np.array([3])),
        ("broken", b"abcd", np.array([0]), np.array([3])),
    ]
    with pytest.raises(RuntimeError, match=r"pooling article 'broken' \(4 bytes\).*do not tile"):
        list(pe.pool_articles(model, bad))
    with pytest.raises(RuntimeError, match=r"pooling article 'broken' \(4 bytes\).*do not tile"):
        list(pe.pool_articles(model, bad, workers=pool))
    with pytest.raises(ValueError, match="patching mode"):
        list(pt.patch_articles(model, [("a", b"abc")], 1.0, "sideways"))


@pytest.mark.slow  # worker processes (the pool)
def test_imap_reads_input_lazily(pool):
    pulled = []

    def items():
        for i in range(50):
            pulled.append(i)
            yield bytes([65 + i % 26]) * 10

    results = pool.imap(pt.patch_article, items(), 2.0, "global", None, None)
    first = next(results)
    assert first.byte_len.sum() == 10
    assert len(pulled) <= pool.max_in_flight + 1  # bounded look-ahead, not the whole stream
    rest = list(results)
    assert len(rest) == 49 and len(pulled) == 50


def test_pool_refuses_bad_arguments(model):
    with pytest.raises(ValueError, match=">= 1"):
        mw.ModelWorkers(model, 0)


def _exit_worker(model, batch):
    import os

    os._exit(3)  # a worker killed mid-task (OOM killer, SIGKILL)


@pytest.mark.slow
def test_a_dead_worker_is_a_clear_error(model):
    with mw.ModelWorkers(model, 1) as workers:
        with pytest.raises(RuntimeError, match="worker process died"):
            list(workers.imap(_exit_worker, [[1]]))


# ---------------------------------------------------------------------------------------------
# A script without an `if __name__ == "__main__":` guard is not re-run by the workers
# ---------------------------------------------------------------------------------------------

UNGUARDED_SCRIPT = """
import os
with open(os.environ["MARKER"], "a") as fh:  # every import of this file leaves a line
    fh.write(f"{os.getpid()} {__name__}\\n")
import torch
from sphere_assets.lib.text import entropy_model as em, model_workers as mw, patcher as pt
torch.set_num_threads(1)
torch.manual_seed(0)
model = em.build_model(em.EntropyModelConfig.tiny(dim=16, n_layers=1, n_heads=2, window=8))
articles = [(f"a{i}", b"some text for the workers " * 40) for i in range(6)]
with mw.ModelWorkers(model.eval(), 2, 1) as pool:
    out = list(pt.patch_articles(model, articles, 1.0, workers=pool, batch_bytes=1))
    pids = set(pool._pool._processes)
print("patched", len(out), "workers", len(pids))
"""


@pytest.mark.slow
def test_workers_do_not_rerun_an_unguarded_script(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    marker = tmp_path / "imports.txt"
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "MARKER": str(marker), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "patched 6 workers 2" in proc.stdout
    # the script ran once, as __main__: the two workers imported neither it nor __mp_main__
    lines = marker.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" __main__"), lines


def test_clean_preparation_data_leaves_out_the_main_module():
    data = mw.clean_preparation_data("x")
    assert "init_main_from_path" not in data and "init_main_from_name" not in data
    assert data["sys_path"] and "dir" in data  # the rest of the child's setup is kept
