"""Stored compressed ANN indexes of shard groups: ``ann/<key>/`` in a local index directory
(store/layout.py).

``index.faiss`` (the serialized FAISS index, written by the searcher's callback) goes first,
``marker.json`` (``{"format", "source", "rows", ...}``) last, each by an atomic rename, under
the index's writer lock: a reader trusts only a directory whose marker has the format and the
source (digest of the shard markers) it expects, so an ANN index older than its shards is
never used. Remote indexes store none (the searcher builds it in memory each time).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tda.errors import IndexBusy
from tda.store.index import IndexStore
from tda.store.layout import ANN_DIR
from tda.store.lock import IndexLock

BLOB = "index.faiss"
MARKER = "marker.json"


def ann_directory(store: IndexStore, key: str) -> Path | None:
    """Where the ANN index ``key`` lives (local indexes), else None."""
    local = store.local_path
    return None if local is None else local / ANN_DIR / key


def save_ann(store: IndexStore, key: str, marker: dict,
             write_blob: Callable[[Path], None]) -> str | None:
    """Store ANN index ``key``: ``write_blob(path)`` writes the FAISS index to ``path``, then
    the marker goes last. Returns None when stored, else why not (remote index, another
    writer holds the lock, a disk error): the caller builds it again next time."""
    directory = ann_directory(store, key)
    if directory is None:
        return "a remote index stores no ANN index"
    try:
        with IndexLock(store.url, "storing an ANN index"):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / MARKER).unlink(missing_ok=True)
            tmp = directory / (BLOB + ".partial")
            write_blob(tmp)
            os.replace(tmp, directory / BLOB)
            (directory / (MARKER + ".partial")).write_text(json.dumps(marker))
            os.replace(directory / (MARKER + ".partial"), directory / MARKER)
    except (IndexBusy, OSError) as e:
        return str(e)
    return None


def load_ann(store: IndexStore, key: str, expect: dict) -> tuple[Path, dict] | None:
    """(path of the FAISS blob, marker) of ANN index ``key`` when its marker holds every
    item of ``expect`` (format, source), else None."""
    directory = ann_directory(store, key)
    if directory is None or not (directory / MARKER).is_file():
        return None
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if any(marker.get(k) != v for k, v in expect.items()) or not (directory / BLOB).is_file():
        return None
    return directory / BLOB, marker
