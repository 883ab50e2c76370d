"""One writer per index: an exclusive ``flock`` on a file beside the index.

The kernel drops the lock when its holder dies, even by SIGKILL, so a crashed build never
blocks the next one. Writers (``tda index``, ``tda precondition``) hold it for their whole run;
readers (search, info, verify) check at open that no writer holds it (``ensure_not_busy``),
because what they would read is changing. Remote (fsspec URL) indexes are not locked.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from tda.errors import IndexBusy
from tda.store.location import local_path


def lock_path(index: str | Path) -> Path:
    """The lock file of a local index: ``.<name>.tda-lock`` in the same directory."""
    path = local_path(index).resolve()
    return path.with_name(f".{path.name}.tda-lock")


class IndexLock:
    """Context manager: hold the write lock of ``index`` (local paths), or raise IndexBusy
    naming the holder. ``what`` (e.g. "tda index") is recorded for the next one to read."""

    def __init__(self, index: str | Path, what: str):
        self.index, self.what = str(index), what
        self._fd: int | None = None

    def __enter__(self) -> "IndexLock":
        if local_path(self.index) is None:
            return self
        path = lock_path(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise IndexBusy(_busy_message(self.index, holder)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "what": self.what}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def ensure_not_busy(index: str | Path) -> None:
    """Raise IndexBusy (naming the writer) when a process holds ``index``'s write lock. A
    shared lock is taken and released at once: it never blocks, and fails only while a
    writer holds the exclusive one."""
    path = local_path(index)
    if path is None or not lock_path(index).is_file():
        return
    try:
        fd = os.open(lock_path(index), os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise IndexBusy(_busy_message(str(index), _read_holder(fd))) from None
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy_message(index: str, holder: str) -> str:
    return (f"{index} is being written by another process ({holder}); wait for it to finish "
            f"or stop it")


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{info.get('what', '?')}, pid {info.get('pid')} on {info.get('host')} since " \
               f"{info.get('since')}"
    except (OSError, ValueError):
        return "unknown holder"
