"""The id -> (shard, row) table of an index: where each example lives, found in O(log n)
without reading any shard.

Stored in ``rows/`` of the index group (store/layout.py): ``key`` [n] uint64, the sorted
64-bit BLAKE2b keys of the example ids, and ``loc`` [n] int64, shard << 32 | row in the same
order. The group's
attribute ``complete`` ({"rows", "source"}) is written last; ``source`` is a digest of the
shard markers the table was built from, so a table older than its shards is never used.
A key can be shared by two ids (about 3e-6 at 1e7 ids): a lookup returns every location with
the key and the caller confirms the id it reads there.

Written by rank 0 at the end of ``tda index`` (after the shards, like BM25); for an index
built before the table existed (tda 0.1.0), built in memory on first use by the searcher, or
stored by ``write_row_table``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from tda.store.index import IndexStore
from tda.store.layout import COMPLETE_KEY, ROWS

CHUNK = 1 << 20


def id_keys(ids) -> np.ndarray:
    """64-bit keys [n] uint64 of example ids (BLAKE2b of the UTF-8, little endian)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8)
                                       .digest(), "little") for i in ids),
                       dtype=np.uint64, count=len(ids))


def source_digest(store: IndexStore) -> str:
    """sha256 over the complete shards' (index, rows, checksum): what a table must match."""
    h = hashlib.sha256()
    for s, marker in sorted(store.shard_status().items()):
        if marker:
            h.update(json.dumps([s, marker["rows"], marker["checksum"]]).encode())
    return h.hexdigest()


class RowTable:
    """Sorted id keys [n] uint64 and their locations [n] int64 (shard << 32 | row)."""

    def __init__(self, keys: np.ndarray, loc: np.ndarray):
        self.keys, self.loc = keys, loc

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.loc.nbytes

    def locate(self, doc_id: str) -> list[tuple[int, int]]:
        """Every (shard, row) whose id has the key of ``doc_id`` (usually one, or none)."""
        key = id_keys([doc_id])[0]
        lo = int(np.searchsorted(self.keys, key, side="left"))
        hi = int(np.searchsorted(self.keys, key, side="right"))
        return [(int(v >> 32), int(v & 0xFFFFFFFF)) for v in self.loc[lo:hi].tolist()]

    # ------------------------------------------------------------ building and storing
    @classmethod
    def build(cls, store: IndexStore) -> "RowTable":
        """From the ids of every complete shard (reads each shard's ids once)."""
        keys, loc = [], []
        for s, n in sorted(store.complete_shards().items()):
            ids = store.read_shard(s, ("ids",))["ids"]
            keys.append(id_keys(ids.tolist()))
            loc.append((np.int64(s) << 32) | np.arange(n, dtype=np.int64))
        keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        loc = np.concatenate(loc) if loc else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], loc[order])

    def write(self, store: IndexStore, source: str) -> None:
        """Store as ``rows/`` (replacing any older table), marker last."""
        root = store.root
        if ROWS in root:
            del root[ROWS]
        g = root.create_group(ROWS)
        n = len(self)
        for name, values in (("key", self.keys), ("loc", self.loc)):
            a = g.create_array(name, shape=(n,), dtype=values.dtype,
                               chunks=(max(1, min(CHUNK, n)),))
            a[:] = values
        g.attrs[COMPLETE_KEY] = {"rows": n, "source": source}

    @classmethod
    def load(cls, store: IndexStore, source: str | None = None) -> "RowTable | None":
        """The stored table, or None when there is none, it is unfinished, or it was built
        from other shards than ``source`` (default: the index's current shards)."""
        try:
            g = store.root[ROWS]
            marker = g.attrs.get(COMPLETE_KEY)
        except KeyError:
            return None
        if not marker or marker.get("source") != (source or source_digest(store)):
            return None
        keys, loc = g["key"][:], g["loc"][:]
        if len(keys) != marker["rows"] or len(loc) != marker["rows"]:
            return None
        return cls(keys, loc)


def write_row_table(store: IndexStore) -> int:
    """Build and store the table of a complete index (rank 0, after the shards); returns its
    rows. Skipped when a current table is already there."""
    source = source_digest(store)
    table = RowTable.load(store, source)
    if table is None:
        table = RowTable.build(store)
        table.write(store, source)
    return len(table)


def row_table_problems(store: IndexStore, rows: int) -> list[str]:
    """`tda verify`'s check of the stored table (none stored is no problem: it is built when
    first needed): it must match the shards and hold every row."""
    try:
        marker = store.root[ROWS].attrs.get(COMPLETE_KEY)
    except KeyError:
        return []
    if not marker:
        return ["rows: the id table is unfinished (rerun tda index)"]
    if marker.get("source") != source_digest(store):
        return ["rows: the id table was built from other shards (rerun tda index)"]
    try:
        table = RowTable.load(store, marker["source"])
    except Exception as e:  # noqa: BLE001 - any failure to read is the problem to report
        return [f"rows: unreadable ({type(e).__name__}: {e})"]
    if table is None or len(table) != rows:
        return [f"rows: the id table holds {0 if table is None else len(table)} rows, the "
                f"shards {rows}"]
    return []
