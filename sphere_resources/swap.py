"""Atomic directory replacement and per-partition writer locks (pure: no Dagster).

* :func:`exchange` swaps two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so
  a partition path always names a complete directory — the old one or the new one, never
  nothing. Where the kernel or filesystem lacks it the caller falls back to two renames.
* :class:`PartitionLock` serializes writers of one partition with ``flock`` on a lock file; the
  kernel drops the lock when its holder dies (kill -9 included), so a lock is never stale. The
  holder writes its pid/host into the file for the error a timed-out waiter raises.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2

_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap directories ``a`` and ``b``; False when the system cannot (the caller
    then falls back), OSError for any other failure."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


class LockTimeout(TimeoutError):
    pass


class PartitionLock:
    """Exclusive ``flock`` on ``path``; waits up to ``timeout_s`` (polling), then LockTimeout
    naming the holder. ``timeout_s=0`` tries once."""

    def __init__(self, path: Path, timeout_s: float, what: str):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.what = what
        self._fd: int | None = None

    def try_acquire(self, record: bool = True) -> bool:
        """Take the lock if it is free; ``record`` writes who holds it into the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if record:
            os.ftruncate(fd, 0)
            os.write(
                fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.time():.0f}".encode()
            )
        self._fd = fd
        return True

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.005
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.what}: another writer ({self.holder()}) holds {self.path}; "
                    f"gave up after {self.timeout_s:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def holder(self) -> str:
        try:
            return self.path.read_text() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PartitionLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def staging_root_for(root: Path) -> Path:
    """Where partitions are staged: a sibling of the warehouse root (``.<root>.staging``) so
    that no user glob under the root (``warehouse/**/*.parquet``) ever sees a file being written;
    inside the root (``.staging``) only when the sibling cannot be made on the same filesystem
    (e.g. the root is a mount point), because the final swap must be a rename."""
    root.mkdir(parents=True, exist_ok=True)
    sibling = root.parent / f".{root.name}.staging"
    try:
        sibling.mkdir(exist_ok=True)
        if sibling.stat().st_dev == root.stat().st_dev:
            return sibling
    except OSError:
        pass
    return root / ".staging"
