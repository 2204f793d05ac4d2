"""Data-parallel entropy-model inference: worker processes, each with its own model copy.

Pure compute (torch + the standard library, no Dagster).

Why processes, not torch threads
    The entropy model is tiny (dim 64): on 2 cores, torch's intra-op threads speed its forward
    pass up only ~1.7x, and everything between two torch ops runs on one core while the
    other core's OpenMP worker spin-waits. Entropy patching adds such serial work per chunk
    (the compiled entropy kernel, the patch rule, Python): with 2 torch threads it cost +11-13%
    over the raw forward pass, against +5% on 1 thread. Giving each core a whole article
    instead keeps every step single-threaded inside its own process: the patching overhead
    stays at its 1-thread level and the throughput on 2 cores is higher (bench/patching.py).

Determinism
    Every worker runs the same code with the same number of torch threads as the in-process
    path, on whole articles, so results are bit-identical to computing them in this process
    (tests compare the Parquet bytes).

Workers are spawned (not forked: forking a process whose OpenMP pool is running can hang the
child) and each loads torch, so a pool costs ~1-3 s to start; :func:`worker_count` keeps small
inputs in-process.

A clean main module in the workers (:class:`CleanMainContext`)
    Python's spawn start method re-imports the parent's ``__main__`` in every child (as
    ``__mp_main__``, to find functions defined there). A user script that materializes assets
    without an ``if __name__ == "__main__":`` guard then runs again in every worker: it queues a
    second run that waits forever on the ``heavy`` pool, and a Dagster step's main module
    (the CLI) costs each worker seconds of imports. Everything the workers run is importable
    from ``sphere_assets`` (module-level functions), so the workers are spawned with the main
    module left out of the child's preparation data: the child starts from a bare interpreter,
    imports only what unpickling the work needs, and never re-runs the parent's script.

An asset's run over its shards (:func:`article_run`): the torch runtime, the pool (or this
process), the batch size and a progress meter, set up once and shut down at the end;
:func:`in_partition` adds the asset and partition to a per-article error.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import context as mp_context
from multiprocessing import popen_spawn_posix, reduction, spawn, util
from typing import Any, TypeVar

import numpy as np
import torch

from sphere_assets.lib.text import entropy_model as em
from sphere_assets.lib.text.corpus import ProgressMeter
from sphere_assets.lib.text.torch_runtime import keep_freed_memory, torch_runtime

Item = TypeVar("Item")
Result = TypeVar("Result")

# Inputs below this many bytes stay in-process when the worker count is automatic. Starting and
# stopping a pool of 2 inside a Dagster step took ~4 s when every worker also imported the
# step's main module (the Dagster CLI); with CleanMainContext a worker imports only torch and
# the model code (~1.5-2 s, both in parallel, plus process exit). One core runs the tiny
# model at ~0.25 MB/s, two workers at ~0.49 MB/s (BENCHMARKS.md, patching): for a start+stop
# cost c, workers pay off above c / (1/0.25 - 1/0.49) ≈ c / 2 MB, i.e. ~1.25 MB at c = 2.5 s.
PARALLEL_MIN_BYTES = 1_500_000
# Batches per worker the input is cut into when its size is known: enough that the last batch
# leaves no core idle for long (results come back in order, so the tail is where a core
# can idle), few enough that per-task IPC (~0.1 ms against ~30 ms of compute for 8 KB) is
# negligible.
BATCHES_PER_WORKER = 16
MAX_BATCH_BYTES = 256 * 1024
MIN_BATCH_BYTES = 8 * 1024

_worker_model: em.ByteEntropyModel | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(requested: int, total_bytes: int | None, threads_per_worker: int = 1) -> int:
    """Worker processes to use: ``requested`` when >= 1 (1 = in this process); 0 = automatic:
    as many as the available cores hold at ``threads_per_worker`` torch threads each, when the
    input has at least :data:`PARALLEL_MIN_BYTES` (else 1)."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0 = automatic), got {requested}")
    if requested:
        return requested
    if total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES:
        return 1
    return max(1, available_cores() // max(1, threads_per_worker))


def batch_bytes_for(total_bytes: int | None, workers: int) -> int:
    """Target batch size: ~:data:`BATCHES_PER_WORKER` batches per worker, clamped to
    [:data:`MIN_BATCH_BYTES`, :data:`MAX_BATCH_BYTES`] (the maximum when the total is unknown)."""
    if not total_bytes:
        return MAX_BATCH_BYTES
    share = total_bytes // max(1, workers * BATCHES_PER_WORKER)
    return int(min(MAX_BATCH_BYTES, max(MIN_BATCH_BYTES, share)))


def byte_batches(
    items: Iterable[Item], size_of: Callable[[Item], int], target: int
) -> Iterator[list[Item]]:
    """Consecutive items grouped into lists of at least ``target`` bytes (the last may be
    smaller; an item larger than ``target`` is a batch of its own). Order is kept."""
    batch: list[Item] = []
    filled = 0
    for item in items:
        batch.append(item)
        filled += size_of(item)
        if filled >= target:
            yield batch
            batch, filled = [], 0
    if batch:
        yield batch


def clean_preparation_data(name: str) -> dict:
    """``multiprocessing.spawn.get_preparation_data`` without the parent's main module: the
    child neither runs the parent's script nor imports its main module."""
    data = spawn.get_preparation_data(name)
    data.pop("init_main_from_path", None)
    data.pop("init_main_from_name", None)
    return data


class _CleanMainPopen(popen_spawn_posix.Popen):
    """The POSIX spawn launcher of CPython 3.11 (``popen_spawn_posix.Popen._launch``) with
    :func:`clean_preparation_data` in place of the full preparation data."""

    def _launch(self, process_obj) -> None:
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        prep_data = clean_preparation_data(process_obj._name)
        fp = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            mp_context.set_spawning_popen(None)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, fds_to_close)
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _CleanMainProcess(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        return _CleanMainPopen(process_obj)


class CleanMainContext(mp_context.SpawnContext):
    """The spawn start method, with children that do not import the parent's ``__main__``
    (see the module docstring)."""

    Process = _CleanMainProcess


def _start_worker(config_json: str, state: dict[str, np.ndarray], num_threads: int) -> None:
    """Worker initializer: rebuild the exact model, fix the torch runtime for the process."""
    global _worker_model
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # a worker process is ours alone: keep freed activation buffers (see keep_freed_memory)
    keep_freed_memory()
    model = em.ByteEntropyModel(em.EntropyModelConfig.from_json(config_json))
    model.load_state_dict({name: torch.from_numpy(arr) for name, arr in state.items()}, strict=True)
    _worker_model = model.eval()


def _run_in_worker(fn: Callable, item: Any, args: tuple) -> tuple[Any, float]:
    if _worker_model is None:
        raise RuntimeError("model worker used before its initializer ran")
    started = time.perf_counter()
    result = fn(_worker_model, item, *args)
    return result, time.perf_counter() - started


class ModelWorkers:
    """A pool of ``workers`` spawned processes, each holding a copy of ``model`` (CPU) and
    running torch with ``num_threads`` threads.

    :meth:`imap` applies a module-level function ``fn(model, item, *args)`` to a stream of
    items and yields the results in input order, with at most ``max_in_flight`` items
    submitted ahead of the consumer (memory stays bounded for any input length).
    ``busy_seconds`` sums the workers' compute time. Use as a context manager.
    """

    def __init__(
        self,
        model: em.ByteEntropyModel,
        workers: int,
        num_threads: int = 1,
        max_in_flight: int | None = None,
    ):
        if workers < 1 or num_threads < 1:
            raise ValueError(f"workers and num_threads must be >= 1, got {workers}, {num_threads}")
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("model workers run on CPU; use workers=1 for an accelerator")
        self.workers = workers
        self.num_threads = num_threads
        self.max_in_flight = max_in_flight or 2 * workers
        self.busy_seconds = 0.0
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=CleanMainContext(),
            initializer=_start_worker,
            initargs=(model.config.to_json(), em.model_state_arrays(model), num_threads),
        )

    def imap(self, fn: Callable[..., Result], items: Iterable, *args: Any) -> Iterator[Result]:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(self._pool.submit(_run_in_worker, fn, item, args))
                if len(pending) >= self.max_in_flight:
                    yield self._collect(pending.popleft())
            while pending:
                yield self._collect(pending.popleft())
        finally:
            for future in pending:
                future.cancel()

    def _collect(self, future) -> Any:
        try:
            result, seconds = future.result()
        except BrokenProcessPool as exc:
            raise RuntimeError(
                "an entropy-model worker process died (out of memory or killed); "
                "rerun with workers=1 to run in-process"
            ) from exc
        self.busy_seconds += seconds
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ModelWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _each_article(
    model: em.ByteEntropyModel, batch: Sequence[tuple], fn: Callable, action: str, args: tuple
) -> list:
    """``fn(model, *article[1:], *args)`` for each article ``(article_id, bytes, ...)`` of
    ``batch``; an error names the article."""
    results = []
    for article in batch:
        try:
            results.append(fn(model, *article[1:], *args))
        except Exception as exc:
            raise RuntimeError(
                f"{action} article '{article[0]}' ({len(article[1])} bytes): {exc}"
            ) from exc
    return results


def map_articles(
    model: em.ByteEntropyModel,
    fn: Callable[..., Result],
    articles: Iterable[tuple],
    *args: Any,
    action: str,
    workers: ModelWorkers | None = None,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[Result]:
    """``fn(model, *article[1:], *args)`` over a stream of articles ``(article_id, bytes,
    ...)``, results in input order: in this process (``workers`` None) or on the pool, in
    batches of whole articles of ~``batch_bytes`` bytes. ``fn`` must be a module-level function
    (workers import it); an error names the article (``"<action> article '<id>' ..."``)."""
    batches = byte_batches(articles, lambda article: len(article[1]), batch_bytes)
    yield from map_batches(model, _each_article, batches, fn, action, args, workers=workers)


def map_batches(
    model: em.ByteEntropyModel,
    fn: Callable[..., list[Result]],
    batches: Iterable[Sequence],
    *args: Any,
    workers: ModelWorkers | None = None,
) -> Iterator[Result]:
    """``fn(model, batch, *args)`` (a list per batch) over ``batches``, flattened in order: in
    this process when ``workers`` is None, else on the pool (the pool's own model copies)."""
    results = (
        (fn(model, batch, *args) for batch in batches)
        if workers is None
        else workers.imap(fn, batches, *args)
    )
    for batch_results in results:
        yield from batch_results


def in_partition(asset: str, key: str, results: Iterator) -> Iterator:
    """``results`` with per-article errors (which name the article) also naming the asset and
    partition."""
    try:
        yield from results
    except RuntimeError as exc:
        raise RuntimeError(f"asset '{asset}', partition '{key}': {exc}") from exc


@dataclass
class ArticleRun:
    """How an asset run spreads its articles over the cores."""

    pool: ModelWorkers | None  # None: in this process
    workers: int
    batch_bytes: int
    progress: ProgressMeter

    @property
    def busy_seconds(self) -> float | None:
        """The workers' summed compute time (None in this process)."""
        return None if self.pool is None else self.pool.busy_seconds


@contextlib.contextmanager
def article_run(
    log: Callable[[str], None],
    asset: str,
    model: em.ByteEntropyModel,
    requested: int,
    threads: int | None,
    total_bytes: int,
) -> Iterator[ArticleRun]:
    """Torch runtime, worker pool (shut down afterwards), batch size and progress meter of an
    asset run over ``total_bytes`` of articles; the final progress line when it ends."""
    per_worker = threads or 1
    on_cpu = next(model.parameters()).device.type == "cpu"
    # an accelerator is used from this process (automatic count) or refused (explicit count)
    workers = worker_count(requested, total_bytes, per_worker) if on_cpu or requested else 1
    where = "in this process" if workers <= 1 else f"{workers} worker processes x"
    log(f"{asset}: {total_bytes / 1e6:.2f} MB {where} {per_worker} torch thread(s)")
    progress = ProgressMeter(lambda msg: log(f"{asset}: {msg}"), total_bytes)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_runtime(threads))
        pool = (
            stack.enter_context(ModelWorkers(model, workers, per_worker)) if workers > 1 else None
        )
        yield ArticleRun(pool, workers, batch_bytes_for(total_bytes, workers), progress)
    progress.maybe_log(progress.records, progress.nbytes, force=True)
