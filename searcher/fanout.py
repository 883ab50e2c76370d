"""Dense search fanned out over dask workers: each worker keeps some shard groups loaded and
answers with its top k; the caller merges.

A LocalCluster by default (worker processes on this machine), or an existing scheduler
(``tcp://HOST:PORT``) for many machines, whose workers need tda installed and the index path
readable. Group g always goes to the same worker, so its FAISS index is built once.
"""
from __future__ import annotations

import numpy as np

from tda.indexer.store import IndexStore
from tda.searcher.dense import GroupResult, ShardGroup, merge

_LOADED: dict[tuple, ShardGroup] = {}       # per worker process: loaded shard groups


def _group(key: tuple) -> ShardGroup:
    if key not in _LOADED:
        index, shards, kind, budget = key
        _LOADED[key] = ShardGroup(index, list(shards), kind, budget)
    return _LOADED[key]


def load_group(key: tuple) -> int:
    """Load a group on this worker (builds its FAISS index); returns its row count."""
    return _group(key).n


def search_group(key: tuple, queries: np.ndarray, k: int) -> GroupResult:
    return _group(key).search(queries, k)


def split(shards: list[int], groups: int) -> list[list[int]]:
    """Round-robin: shard s goes to group s mod groups (empty groups dropped)."""
    out = [shards[g::groups] for g in range(groups)]
    return [g for g in out if g]


class DenseSearch:
    """Exact (or approximate) inner-product search over every complete shard of an index."""

    def __init__(self, index: str, *, scheduler: str | None = None, workers: int = 2,
                 groups: int | None = None, kind: str = "exact", memory_budget: int = 4 << 30):
        import logging

        import dask
        from dask.distributed import Client, LocalCluster

        dask.config.set({"distributed.logging.distributed": "error",
                         "distributed.admin.system-monitor.gil.enabled": False})
        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.index = str(index)
        store = IndexStore.open(self.index)
        self.dim = store.manifest.dim
        shards = sorted(store.complete_shards())
        if scheduler:
            self.cluster = None
            self.client = Client(scheduler, timeout="30s")
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        addresses = sorted(self.client.scheduler_info()["workers"])
        if not addresses:
            raise RuntimeError(f"the dask cluster at {scheduler} has no workers")
        n_groups = groups or len(addresses)
        self.keys = [(self.index, tuple(g), kind, memory_budget) for g in split(shards, n_groups)]
        self.placement = {key: addresses[i % len(addresses)] for i, key in enumerate(self.keys)}
        loading = [self.client.submit(load_group, key, workers=[w], pure=False)
                   for key, w in self.placement.items()]
        self.rows = sum(self.client.gather(loading))

    def search(self, queries: np.ndarray, k: int) -> GroupResult:
        """Top ``k`` for each of ``queries`` [m, d] float32 over the whole index."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have d={queries.shape[1]}, the index {self.dim}")
        futures = [self.client.submit(search_group, key, queries, k, workers=[w], pure=False)
                   for key, w in self.placement.items()]
        return merge(self.client.gather(futures), k)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
