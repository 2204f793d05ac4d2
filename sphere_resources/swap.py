"""Atomic directory replacement and per-partition writer locks (pure: no Dagster).

* :func:`exchange` swaps two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so
  a partition path always names a complete directory — the old one or the new one, never
  nothing. Where the kernel or filesystem lacks it the caller falls back to two renames.
* :class:`PartitionLock` serializes writers of one partition with ``flock`` on a lock file; the
  kernel drops the lock when its holder dies (kill -9 included), so a lock is never stale. The
  holder writes its pid/host into the file for the error a timed-out waiter raises.
* :func:`retire` deletes a replaced version only after a grace period. A reader that resolved
  the partition path just before the swap holds the *old* directory; DuckDB's glob lists it and
  then opens the files by path (which by then name the new version). Deleting the old files at
  once made that listing come back empty ("No files found") once in a few thousand racing reads;
  the grace closes the window between a reader's ``opendir`` and its ``readdir``.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import os
import re
import shutil
import socket
import threading
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


RETIRE_GRACE_S = 0.5  # how long a replaced version outlives its swap (see the module docstring)
_RETIRED = re.compile(r"\.old-(\d+)$")  # <staged name>.old-<deadline, ms since the epoch>


def retired_name(name: str, now: float | None = None) -> str:
    """The name a replaced version is kept under until its deadline passes."""
    deadline_ms = int(((time.time() if now is None else now) + RETIRE_GRACE_S) * 1000)
    return f"{name}.old-{deadline_ms}"


def in_grace(name: str, now: float | None = None) -> bool:
    """Whether ``name`` is a retired version whose grace has not run out (cleaners skip it)."""
    m = _RETIRED.search(name)
    return bool(m) and int(m.group(1)) > (time.time() if now is None else now) * 1000


class _Reaper:
    """Deletes retired versions when their grace runs out, on one daemon thread per process.
    At interpreter exit it waits out what is pending (at most ``RETIRE_GRACE_S``) and deletes
    it; a process killed before that leaves them to the next writer or ``clean_staging``, which
    remove retired versions whose deadline has passed."""

    def __init__(self) -> None:
        self._pending: list[Path] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        atexit.register(self.flush)
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:  # a forked child does not own its parent's retirees
        self._pending, self._cv, self._thread = [], threading.Condition(), None

    def add(self, path: Path) -> None:
        with self._cv:
            self._pending.append(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sphere-reaper", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _due(self, now: float) -> tuple[list[Path], float | None]:
        due = [p for p in self._pending if not in_grace(p.name, now)]
        self._pending = [p for p in self._pending if in_grace(p.name, now)]
        wait = RETIRE_GRACE_S if self._pending else None
        return due, wait

    def _run(self) -> None:
        while True:
            with self._cv:
                due, wait = self._due(time.time())
                if not due:
                    self._cv.wait(timeout=wait)
                    continue
            for path in due:
                shutil.rmtree(path, ignore_errors=True)

    def flush(self) -> None:
        with self._cv:
            pending, self._pending = self._pending, []
        for path in pending:
            m = _RETIRED.search(path.name)
            left = int(m.group(1)) / 1000 - time.time() if m else 0.0
            if left > 0:
                time.sleep(min(left, RETIRE_GRACE_S))
            shutil.rmtree(path, ignore_errors=True)


_reaper = _Reaper()


def retire(path: Path) -> None:
    """Rename a replaced version (already outside the root) to its retired name and delete it
    after ``RETIRE_GRACE_S``."""
    target = path.with_name(retired_name(path.name))
    os.rename(path, target)
    _reaper.add(target)
