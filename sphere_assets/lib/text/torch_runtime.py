"""Torch runtime settings of one process: threads, deterministic algorithms, device, malloc.

Pure torch + the standard library (no Dagster, no file I/O).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_runtime(num_threads: int | None, deterministic: bool = True) -> Iterator[None]:
    """Set ``torch.set_num_threads`` and deterministic algorithms; restore both afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if num_threads:
            torch.set_num_threads(num_threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 1 << 25) -> bool:
    """Process-wide glibc malloc setting: keep freed memory instead of returning it to the OS.

    Each inference chunk allocates and frees activation buffers of several MB. With glibc's
    defaults those are handed back (heap trimming, munmap) and page-faulted in again by the
    next chunk: up to ~1,000 minor faults per 2048-token chunk, and on a VM such faults
    made the tiny model's forward pass (reference and entropy path alike) ~20% slower and
    their timings noisy. Equivalent to ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:
    glibc.malloc.mmap_threshold=...`` set at process start. Affects the whole process (it is
    an opt-in for benchmarks and worker processes, never called implicitly); returns whether
    it was applied (``False`` off glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    )


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available, else cpu)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch device '{device}' requested but CUDA is not available")
    return dev
