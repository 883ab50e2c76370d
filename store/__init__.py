"""The index on disk: the one owner of its format (docs/design.md, "The index on disk").

Layout names in ``layout``; values (vector dtypes, compression, checksums) in ``codec``; the
reader and writer of shards, second moments, BM25 status and profiles is ``IndexStore``
(``index``), with each profile a ``StoredProfile`` (``profiles``); the Lucene part in ``bm25``
(its Java set-up in ``java``); the writer lock in ``lock``; what an index holds in ``info``;
the full check in ``verify``; crash points for fault-injection tests in ``faults``.
Everything above this layer (indexer, searcher, evaluation) reads and writes an index only
through these.
"""
from tda.store.index import IndexStore, ShardRows
from tda.store.lock import IndexLock, ensure_not_busy
from tda.store.profiles import StoredProfile

__all__ = ["IndexStore", "ShardRows", "IndexLock", "ensure_not_busy", "StoredProfile"]
