"""Maximum-inner-product search over a group of shards with FAISS.

Exact by default: a scalar-quantizer index holding the stored float16 (or bfloat16) values as
they are, so scores equal an exact float32 scan of the stored vectors. Approximate indexes
(HNSW, IVF-PQ, or any FAISS factory string) trade recall for speed. GPU FAISS is used when
``faiss.get_num_gpus() > 0``. A group larger than the memory budget is not loaded: each query
streams its shards' vectors from Zarr in blocks and keeps a running top k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tda.errors import CorruptShard, IndexIncomplete
from tda.store.index import IndexStore

STREAM_ROWS = 65536
# "np": no polysemous training. FAISS does it by default for PQ codes, but it only serves
# polysemous (Hamming-filtered) search, which is never enabled here; it permutes the PQ
# centroids without changing any distance, so results are identical and the build of
# IVF-PQ at d = 1024 is ~10x faster (bench/search.py).
APPROX = {"hnsw": "HNSW32,{sq}", "ivfpq": "IVF{nlist},PQ{m}x8np"}


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("FAISS is not installed: pip install 'tda[cpu]' (faiss-cpu) or "
                          "'tda[gpu]' (faiss-gpu)") from None
    return faiss


def factory_string(faiss_index: str, d: int, n: int, storage_dtype: str) -> str:
    """The FAISS factory string for ``faiss_index``: 'exact', 'hnsw', 'ivfpq' or a factory
    string (returned as it is), for n vectors of dimension d."""
    sq = {"float16": "SQfp16", "bfloat16": "SQbf16"}.get(storage_dtype, "Flat")
    if faiss_index == "exact":
        return sq
    if faiss_index == "hnsw":
        return APPROX["hnsw"].format(sq=sq)
    if faiss_index == "ivfpq":
        nlist = max(1, min(4096, int(4 * np.sqrt(n))))
        m = max(1, next(mm for mm in (d // 16, d // 8, d // 4, d // 2, d) if d % mm == 0))
        return APPROX["ivfpq"].format(nlist=nlist, m=m)
    return faiss_index


@dataclass
class GroupResult:
    """Top k of one shard group for m queries: ``scores`` [m, k] float32 (-inf where fewer
    than k rows), ``shards`` and ``rows`` [m, k] int64 (-1 there)."""

    scores: np.ndarray
    shards: np.ndarray
    rows: np.ndarray


def merge(results: list[GroupResult], k: int) -> GroupResult:
    """Top k over several groups' results: by score, ties by (shard, row)."""
    scores = np.concatenate([r.scores for r in results], axis=1)
    shards = np.concatenate([r.shards for r in results], axis=1)
    rows = np.concatenate([r.rows for r in results], axis=1)
    order = np.lexsort((rows, shards, -scores), axis=1)[:, :k] if scores.size else \
        np.zeros((scores.shape[0], 0), dtype=np.int64)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return GroupResult(take(scores), take(shards), take(rows))


class ShardGroup:
    """The vectors of some shards of one index, searchable (one per dask worker and group)."""

    def __init__(self, index: str, shards: list[int], faiss_index: str = "exact",
                 memory_budget: int = 4 << 30, nprobe: int = 16, ef_search: int = 64,
                 profile: str | None = None, allow_partial: bool = False):
        self.index, self.faiss_index, self.profile = index, faiss_index, profile
        self.store = IndexStore.open(index)
        manifest = self.store.manifest
        self.dim = manifest.dim
        self.storage_dtype = manifest.layout.storage_dtype
        status = self.store.complete_shards(profile)
        missing = [s for s in shards if s not in status]
        if missing:
            raise IndexIncomplete(f"{index}: shards {missing[:5]} are not complete")
        # every shard is read back and checked against its checksum before it is searched
        self.skipped: list[str] = []
        self.shards = []
        for s in shards:
            problem = self.store.verify_shard(s, profile)
            if problem is None:
                self.shards.append(s)
            elif allow_partial:
                self.skipped.append(problem)
            else:
                raise CorruptShard(f"{problem}; repair it with `tda index` (the same command) "
                                   f"or search with --allow-partial to skip it")
        self.rows_per_shard = [status[s] for s in self.shards]
        self.n = sum(self.rows_per_shard)
        self.streaming = self.n * self.dim * 4 > memory_budget
        self.nprobe, self.ef_search = nprobe, ef_search
        self.faiss_index = None if self.streaming else self._build()

    def _build(self):
        faiss = _faiss()
        owner = np.concatenate([np.full(n, s, dtype=np.int64)
                                for s, n in zip(self.shards, self.rows_per_shard)]) \
            if self.shards else np.zeros(0, dtype=np.int64)
        self.owner = owner
        self.row = np.concatenate([np.arange(n, dtype=np.int64) for n in self.rows_per_shard]) \
            if self.shards else np.zeros(0, dtype=np.int64)
        index = faiss.index_factory(self.dim, factory_string(self.faiss_index, self.dim, self.n,
                                                             self.storage_dtype),
                                    faiss.METRIC_INNER_PRODUCT)
        vectors = [self.store.read_shard(s, ("vectors",), self.profile)["vectors"]
                   for s in self.shards]
        if not index.is_trained and self.n:
            index.train(np.concatenate(vectors))
        for v in vectors:
            index.add(np.ascontiguousarray(v, dtype=np.float32))
        self._tune(index)
        if faiss.get_num_gpus() > 0 and self.faiss_index == "exact":
            flat = faiss.IndexFlatIP(self.dim)
            for v in vectors:
                flat.add(np.ascontiguousarray(v, dtype=np.float32))
            options = faiss.GpuMultipleClonerOptions()
            options.useFloat16 = True
            index = faiss.index_cpu_to_all_gpus(flat, options)
        return index

    def _tune(self, index) -> None:
        faiss = _faiss()
        params = faiss.ParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search)):
            try:
                params.set_index_parameter(index, name, value)
            except RuntimeError:
                pass

    def search(self, queries: np.ndarray, k: int) -> GroupResult:
        """Top ``k`` rows of the group for each of ``queries`` [m, d] float32."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = queries.shape[0]
        if self.n == 0:
            return GroupResult(np.full((m, 0), -np.inf, np.float32), np.zeros((m, 0), np.int64),
                               np.zeros((m, 0), np.int64))
        if self.streaming:
            return self._stream(queries, k)
        kk = min(k, self.n)
        scores, idx = self._faiss_search(queries, kk)
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        return GroupResult(np.where(valid, scores, -np.inf).astype(np.float32),
                           np.where(valid, self.owner[safe], -1),
                           np.where(valid, self.row[safe], -1))

    def _faiss_search(self, queries: np.ndarray, k: int):
        """FAISS search; one query on one OpenMP thread. FAISS parallelizes over queries, but
        its flat scalar-quantizer scan opens a parallel region even for one query, whose
        barrier waits for every thread: on a busy machine that is a scheduler time slice
        (median 10 ms instead of 1 ms at 1e4 x 1024, bench/search.py). The setting is per
        calling thread, so concurrent searches are unaffected."""
        faiss = _faiss()
        threads = faiss.omp_get_max_threads()
        if queries.shape[0] > 1 or threads == 1:
            return self.faiss_index.search(queries, k)
        faiss.omp_set_num_threads(1)
        try:
            return self.faiss_index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def _stream(self, queries: np.ndarray, k: int) -> GroupResult:
        """Exact top k by reading vectors block by block (memory: one block)."""
        parts = []
        for shard, n in zip(self.shards, self.rows_per_shard):
            arr = self.store.shard_array(shard, "vectors", self.profile)
            for start in range(0, n, STREAM_ROWS):
                block = self.store.decode_vectors(arr[start:start + STREAM_ROWS])
                scores = queries @ block.T                                # [m, rows]
                kk = min(k, scores.shape[1])
                top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
                parts.append(GroupResult(np.take_along_axis(scores, top, 1),
                                         np.full(top.shape, shard, np.int64), top + start))
        return merge(parts, k)
