"""Examples read by row: texts and fields for snippets and /documents, vectors for exact
re-scoring, each costing a chunk read however large the index is.

``RowReader`` keeps recently decoded chunks of the row arrays (ids, doc_ids, text, n_tokens,
loss) in a cache bounded by bytes and shared by every thread: entries are read-only arrays,
inserted whole under a lock, so a reader never sees one half-filled, and evicting an entry a
thread still uses only drops the cache's reference. Concurrent misses on the same chunk wait
for the one load instead of decoding it twice.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from tda.store.codec import stored_dtype
from tda.store.index import IndexStore
from tda.store.rowtable import RowTable, source_digest

FIELDS = ("ids", "doc_ids", "text", "n_tokens", "loss")
CACHE_BYTES = 64 << 20
# row reads in flight at once: 1,000 random rows of the 21 GB index at 10^7, page cache dropped
# / cached, median of 20 sets over 3 runs (bench/scale.py rows): 8 threads 50.8 / 26.6 ms;
# 4: 68.0 / 20.1 ms; 16: 69.1 / 34.3 ms (more threads, more interpreter-lock handoffs)
READ_THREADS = 8


def _nbytes(values: np.ndarray) -> int:
    if values.dtype == object:
        return int(sum(len(v) for v in values.tolist())) + 56 * len(values)
    return int(values.nbytes)


def read_vectors(store: IndexStore, locs: np.ndarray, profile: str | None,
                 pool: ThreadPoolExecutor) -> np.ndarray:
    """Stored vectors [len(locs), d] (storage dtype) of ``locs`` [n, 2] (shard, row): one small
    read per row (``IndexStore.read_vectors_into``), in (shard, row) order, split into
    ``READ_THREADS`` runs on ``pool``'s threads so several reads are in flight. Not cached:
    re-scoring reads each candidate once."""
    locs = np.asarray(locs, dtype=np.int64).reshape(-1, 2)
    dtype = stored_dtype(store.manifest.layout.storage_dtype)
    out = np.empty((len(locs), store.manifest.dim), dtype=dtype)
    if not len(locs):
        return out
    order = np.lexsort((locs[:, 1], locs[:, 0]))
    sorted_out = np.empty_like(out)
    runs = [r for r in np.array_split(np.arange(len(locs)), READ_THREADS) if len(r)]

    def read(run):
        store.read_vectors_into(locs[order[run]], sorted_out[run[0]:run[-1] + 1], profile)
    for f in [pool.submit(read, r) for r in runs]:
        f.result()
    out[order] = sorted_out
    return out


class ChunkCache:
    """LRU of read-only arrays by key, bounded by ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict = OrderedDict()      # key -> (array, bytes)
        self._loading: dict = {}                        # key -> Future of a load in progress
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key, load) -> np.ndarray:
        """The cached array for ``key``, or ``load()``'s (once, whoever asks meanwhile)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key][0]
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                mine = True
                self.misses += 1
            else:
                mine = False
        if not mine:
            return pending.result()
        try:
            values = load()
            values.setflags(write=False)
        except BaseException as e:
            with self._lock:
                del self._loading[key]
            pending.set_exception(e)
            raise
        size = _nbytes(values)
        with self._lock:
            del self._loading[key]
            if size <= self.max_bytes:
                self._entries[key] = (values, size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (_, old) = self._entries.popitem(last=False)
                    self.bytes -= old
        pending.set_result(values)
        return values


class RowReader:
    """Fields and vectors of examples by (shard, row), and examples by id."""

    def __init__(self, store: IndexStore, cache_bytes: int = CACHE_BYTES):
        self.store = store
        self.cache = ChunkCache(cache_bytes)
        self._chunks: dict[tuple[int, str], int] = {}
        self._table: RowTable | None = None
        self._table_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="tda-rows")

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------ fields
    def _chunk_rows(self, shard: int, field: str) -> int:
        key = (shard, field)
        if key not in self._chunks:
            self._chunks[key] = self.store.chunk_rows(shard, field)
        return self._chunks[key]

    def _chunk(self, shard: int, field: str, c: int) -> np.ndarray:
        return self.cache.get((shard, field, c),
                              lambda: self.store.read_chunk(shard, field, c))

    def fields(self, locs: list[tuple[int, int]], names: tuple[str, ...] = FIELDS) -> list[dict]:
        """{name: value} of each (shard, row) in ``locs``, in order. The distinct chunks are
        read in parallel; each is decoded once and cached."""
        need = {}
        for shard, row in locs:
            for name in names:
                c = row // self._chunk_rows(shard, name)
                need[(shard, name, c)] = None
        if len(need) > 1:
            futures = {k: self._pool.submit(self._chunk, *k) for k in need}
            chunks = {k: f.result() for k, f in futures.items()}
        else:
            chunks = {k: self._chunk(*k) for k in need}
        out = []
        for shard, row in locs:
            rec = {}
            for name in names:
                size = self._chunk_rows(shard, name)
                v = chunks[(shard, name, row // size)][row % size]
                rec[name] = v.item() if hasattr(v, "item") else v
            out.append(rec)
        return out

    # ------------------------------------------------------------ vectors
    def vectors(self, locs: np.ndarray, profile: str | None = None) -> np.ndarray:
        """Stored vectors [len(locs), d] of ``locs`` [n, 2] (shard, row) (see read_vectors)."""
        return read_vectors(self.store, locs, profile, self._pool)

    # ------------------------------------------------------------ ids
    @property
    def table(self) -> RowTable:
        """The id -> (shard, row) table: stored, or built now from the shards' ids (once)."""
        with self._table_lock:
            if self._table is None:
                source = source_digest(self.store)
                self._table = RowTable.load(self.store, source) or RowTable.build(self.store)
            return self._table

    def locate(self, doc_id: str) -> tuple[int, int] | None:
        """(shard, row) of the example ``doc_id``, or None."""
        for shard, row in self.table.locate(doc_id):
            if self.fields([(shard, row)], ("ids",))[0]["ids"] == doc_id:
                return shard, row
        return None
