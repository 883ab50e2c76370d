"""One writer per index: an exclusive ``flock`` on a file beside the index.

The kernel drops the lock when its holder dies, even by SIGKILL, so a crashed build never
blocks the next one. Remote (fsspec URL) indexes are not locked.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path


class IndexBusy(RuntimeError):
    """Another live process is writing this index."""


def lock_path(index: str | Path) -> Path:
    path = Path(index).resolve()
    return path.with_name(f".{path.name}.tda-lock")


class IndexLock:
    """Context manager: hold the write lock of ``index`` (local paths), or raise IndexBusy
    naming the holder."""

    def __init__(self, index: str | Path, what: str):
        self.index, self.what = str(index), what
        self._fd: int | None = None

    def __enter__(self) -> "IndexLock":
        if "://" in self.index and not self.index.startswith("file://"):
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
                raise IndexBusy(f"{self.index} is being written by another process ({holder}); "
                                f"wait for it to finish or stop it") from None
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


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{info.get('what', '?')}, pid {info.get('pid')} on {info.get('host')} since " \
               f"{info.get('since')}"
    except (OSError, ValueError):
        return "unknown holder"
