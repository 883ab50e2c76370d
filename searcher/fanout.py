"""Dense search fanned out over dask workers: each worker keeps some shard groups loaded and
answers with its top k; the caller merges.

A LocalCluster by default (worker processes on this machine), or an existing scheduler
(``tcp://HOST:PORT``) for many machines, whose workers need tda installed and the index path
readable. Group g always goes to the same worker, so its FAISS index is built once.
"""
from __future__ import annotations

import numpy as np

from tda.cluster import DaskCluster
from tda.errors import IndexIncomplete
from tda.store.index import IndexStore
from tda.searcher.dense import GroupResult, ShardGroup, merge

_LOADED: dict[tuple, ShardGroup] = {}       # per worker process: loaded shard groups


def _group(key: tuple) -> ShardGroup:
    """The worker's ShardGroup for ``key`` = (index, shards, faiss_index, memory budget in
    bytes, profile, allow_partial), loaded on first use."""
    if key not in _LOADED:
        index, shards, faiss_index, budget, profile, allow_partial = key
        _LOADED[key] = ShardGroup(index, list(shards), faiss_index, budget, profile=profile,
                                  allow_partial=allow_partial)
    return _LOADED[key]


def load_group(key: tuple) -> list[str]:
    """Load a group on this worker (verifies its shards, builds its FAISS index); returns the
    problems of the shards it skipped (with allow_partial)."""
    return _group(key).skipped


def search_group(key: tuple, queries: np.ndarray, k: int) -> GroupResult:
    """Top ``k`` of the group ``key`` for each of ``queries`` [m, d] float32."""
    return _group(key).search(queries, k)


def split(shards: list[int], groups: int) -> list[list[int]]:
    """Round-robin: shard s goes to group s mod groups (empty groups dropped)."""
    out = [shards[g::groups] for g in range(groups)]
    return [g for g in out if g]


class DenseSearch:
    """Exact (or approximate) inner-product search over every shard of an index: its own
    vectors, or a correction profile's transformed ones (loaded on first use).

    ``faiss_index``: 'exact', 'hnsw', 'ivfpq' or a FAISS factory string; ``memory_budget``:
    bytes per shard group above which a group is streamed from Zarr per query; ``groups``:
    shard groups (default: one per worker)."""

    def __init__(self, index: str, *, scheduler: str | None = None, workers: int = 2,
                 groups: int | None = None, faiss_index: str = "exact",
                 memory_budget: int = 4 << 30, allow_partial: bool = False):
        self.index, self.faiss_index, self.memory_budget = str(index), faiss_index, memory_budget
        self.allow_partial = allow_partial
        self.warnings: list[str] = []          # shards skipped as corrupt (allow_partial)
        self.store = IndexStore.open(self.index)
        self.dim = self.store.manifest.dim
        self.shards = sorted(self.store.complete_shards())
        self.cluster = DaskCluster(scheduler, workers)
        try:
            self.client = self.cluster.client
            self.addresses = self.cluster.workers
            self.n_groups = groups or len(self.addresses)
            self._placements: dict[str | None, dict[tuple, str]] = {}
            self.placement = self._placement(None)
        except BaseException:
            self.cluster.close()
            raise

    def _placement(self, profile: str | None) -> dict[tuple, str]:
        """Which worker holds which shard group of ``profile`` (loading them the first time)."""
        if profile not in self._placements:
            if profile is not None:
                done = set(self.store.complete_shards(profile))
                missing = [s for s in self.shards if s not in done]
                if missing:
                    raise IndexIncomplete(f"{self.index}: profile {profile!r} lacks shards "
                                          f"{missing[:5]}; rebuild it with tda precondition")
            keys = [(self.index, tuple(g), self.faiss_index, self.memory_budget, profile,
                     self.allow_partial) for g in split(self.shards, self.n_groups)]
            placement = {key: self.addresses[i % len(self.addresses)]
                         for i, key in enumerate(keys)}
            loading = [self.client.submit(load_group, key, workers=[w], pure=False)
                       for key, w in placement.items()]
            for skipped in self.client.gather(loading):
                self.warnings += [f"skipped {p}" for p in skipped]
            self._placements[profile] = placement
        return self._placements[profile]

    def search(self, queries: np.ndarray, k: int, profile: str | None = None) -> GroupResult:
        """Top ``k`` for each of ``queries`` [m, d] float32 over the whole index: scores
        (inner products) [m, k], shard and row [m, k] (-1 where fewer than k rows)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have d={queries.shape[1]}, the index {self.dim}")
        futures = [self.client.submit(search_group, key, queries, k, workers=[w], pure=False)
                   for key, w in self._placement(profile).items()]
        return merge(self.client.gather(futures), k)

    def close(self) -> None:
        """Close the dask client (and the LocalCluster it started)."""
        self.cluster.close()
