"""Maximum-inner-product search over a group of shards.

Kinds of group (``kind``):

- ``exact``: the stored float16 (or bfloat16) vectors in memory, as the codes of a FAISS
  scalar-quantizer index filled straight from the shards (no float32 copy; each vector byte
  read once, checked against its checksum as it loads). Up to BLOCK_MIN_QUERIES - 1 queries:
  FAISS's scan; more: ``scoring.BlockScorer``, one matrix product per block for all of them. Needs the group's
  storage bytes within the memory budget.
- ``stream``: exact, without loading: each query batch reads the vectors block by block from
  the shards (memory: one shard). For groups larger than memory when exact answers matter
  more than time.
- ``ann``: compressed IVF-PQ codes in memory, candidates re-scored exactly from the stored
  vectors read by row (searcher/ann.py).
- ``hnsw``, ``ivfpq`` or a FAISS factory string: a FAISS index in memory, FAISS's scores.

Every exact path ends the same way: its best candidates (a few more than k) are re-scored with
``scoring.exact_scores`` and ordered by (score, shard, row); the candidate list is widened
until the k-th score is clear of the last candidate's, so all paths return the same answer
to the bit. With ``device`` (a GPU number, FAISS GPU present) an exact group is a float16
FAISS GPU index of its own shards, added shard by shard; a k above FAISS GPU's limit is
answered by a CPU scan of the shards instead, with a warning.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tda.errors import ConfigError, CorruptShard, IndexIncomplete
from tda.schemas.options import AnnOptions
from tda.searcher.ann import AnnGroup
from tda.store.codec import from_storage, stored_dtype
from tda.store.index import IndexStore
from tda.searcher.scoring import BlockScorer, exact_scores, order

# "np": no polysemous training. FAISS does it by default for PQ codes, but it only serves
# polysemous (Hamming-filtered) search, which is never enabled here; it permutes the PQ
# centroids without changing any distance, so results are identical and the build of
# IVF-PQ at d = 1024 is ~10x faster (bench/search.py).
APPROX = {"hnsw": "HNSW32,{sq}", "ivfpq": "IVF{nlist},PQ{m}x8np"}
EXACT_KINDS = ("exact", "stream", "ann")
MARGIN = 8                 # extra candidates re-scored beyond k
EPS = 1e-5                 # bound on |fast score - canonical score| (float32 rounding, d <= 1e5)
GPU_MAX_K = 2048           # FAISS GPU's largest k (k-selection limit)
# Fewer queries than this are FAISS's scan (parallel over the queries), more the block scorer:
# at 10^6 x 1024 FAISS serves ~23 queries/s for 2-32 queries at once, the blocks 2.9 (2),
# 10.2 (8), 42.3 (16), 54.4 (32) and 72 (64) on this machine's 2 AMD cores.
BLOCK_MIN_QUERIES = 16


def load_faiss():
    """The faiss module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("FAISS is not installed: pip install 'tda[cpu]' (faiss-cpu) or "
                          "'tda[gpu]' (faiss-gpu)") from None
    return faiss


def factory_string(kind: str, d: int, n: int, storage_dtype: str) -> str:
    """The FAISS factory string for ``kind``: 'exact', 'hnsw', 'ivfpq' or a factory string
    (returned as it is), for n vectors of dimension d."""
    sq = {"float16": "SQfp16", "bfloat16": "SQbf16"}.get(storage_dtype, "Flat")
    if kind == "exact":
        return sq
    if kind == "hnsw":
        return APPROX["hnsw"].format(sq=sq)
    if kind == "ivfpq":
        nlist = max(1, min(4096, int(4 * np.sqrt(n))))
        m = max(1, next(mm for mm in (d // 16, d // 8, d // 4, d // 2, d) if d % mm == 0))
        return APPROX["ivfpq"].format(nlist=nlist, m=m)
    return kind


def storage_bytes(n: int, d: int, storage_dtype: str) -> int:
    """Bytes of n stored vectors (float16 and bfloat16: 2 per value, float32: 4)."""
    return n * d * stored_dtype(storage_dtype).itemsize


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
    return GroupResult(*order(scores, shards, rows, k))


def read_rows_parallel(store: IndexStore, locs: np.ndarray, profile: str | None,
                       pool: ThreadPoolExecutor) -> np.ndarray:
    """Stored vectors [r, d] of ``locs`` [r, 2] (shard, row), read by row, in parallel."""
    from tda.searcher.rows import read_vectors
    return read_vectors(store, locs, profile, pool)


class ShardGroup:
    """The vectors of some shards of one index, searchable (one per worker and group)."""

    def __init__(self, index: str, shards: list[int], kind: str = "exact",
                 memory_budget: int = 4 << 30, nprobe: int = 16, ef_search: int = 64,
                 profile: str | None = None, allow_partial: bool = False,
                 ann: AnnOptions = AnnOptions(), device: int | None = None,
                 threads: int | None = None, persist: bool = True):
        if kind == "auto":
            raise ConfigError("faiss_index 'auto' is resolved by the caller (DenseSearch)")
        self.index, self.kind, self.profile = index, kind, profile
        self.allow_partial = allow_partial
        self.store = IndexStore.open(index)
        manifest = self.store.manifest
        self.dim = manifest.dim
        self.storage_dtype = manifest.layout.storage_dtype
        status = self.store.complete_shards(profile)
        missing = [s for s in shards if s not in status]
        if missing:
            raise IndexIncomplete(f"{index}: shards {missing[:5]} are not complete")
        self.skipped: list[str] = []
        self.warnings: list[str] = []
        self.shards = list(shards)
        self.rows_per_shard = [status[s] for s in self.shards]
        self.n = sum(self.rows_per_shard)
        self.bytes = storage_bytes(self.n, self.dim, self.storage_dtype)
        self.nprobe, self.ef_search = nprobe, ef_search
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="tda-group")
        self.faiss_index = None
        self.codes = None                    # [n, d] stored values (exact kind, CPU)
        self.ann = None
        if kind == "exact" and self.bytes > memory_budget:
            raise ConfigError(
                f"{index}: a group of {self.n} vectors holds {self.bytes / 2**30:.2f} GiB, over "
                f"the memory budget of {memory_budget / 2**30:.2f} GiB: use --faiss-index ann "
                f"(compressed, exact re-scoring), stream (exact, reads the shards per "
                f"query), more workers, or a larger budget")
        if kind == "exact":
            self._load_exact()
        elif kind == "stream":
            self._check_all()
        elif kind == "ann":
            self.ann = AnnGroup(self.store, self.shards, profile, ann, allow_partial,
                                persist=persist)
            self.skipped = self.ann.skipped
            self._drop([s for s in self.shards if s not in self.ann.shards])
        else:
            self._load_faiss()
        self._locs()

    # ------------------------------------------------------------ loading
    def _drop(self, bad: list[int]) -> None:
        if bad:
            keep = [i for i, s in enumerate(self.shards) if s not in bad]
            self.shards = [self.shards[i] for i in keep]
            self.rows_per_shard = [self.rows_per_shard[i] for i in keep]
            self.n = sum(self.rows_per_shard)

    def _locs(self) -> None:
        """Row i of the group -> (shard, row)."""
        self.starts = np.cumsum([0] + self.rows_per_shard)[:-1].astype(np.int64)
        self.owner = np.repeat(np.asarray(self.shards, dtype=np.int64), self.rows_per_shard)
        self.row = np.arange(self.n, dtype=np.int64) - np.repeat(self.starts,
                                                                  self.rows_per_shard)

    def _load_each(self, fill) -> None:
        """Read every shard's vectors once (checked), ``fill(i, stored)``; in parallel over
        the shards. A corrupt shard is an error, or skipped with allow_partial."""
        def one(i):
            try:
                fill(i, self.store.load_vectors(self.shards[i], self.profile, verify=True))
                return None
            except CorruptShard as e:
                return str(e)
        with ThreadPoolExecutor(self.threads) as pool:
            problems = list(pool.map(one, range(len(self.shards))))
        bad = [self.shards[i] for i, p in enumerate(problems) if p]
        if bad and not self.allow_partial:
            first = next(p for p in problems if p)
            raise CorruptShard(f"{first}; repair it with `tda index` (the same command) or "
                               f"search with --allow-partial to skip it")
        self.skipped += [p for p in problems if p]
        return bad

    def _load_exact(self) -> None:
        if self.device is not None:
            return self._load_gpu()
        faiss = load_faiss()
        index = faiss.index_factory(self.dim, factory_string("exact", self.dim, self.n,
                                                             self.storage_dtype),
                                    faiss.METRIC_INNER_PRODUCT)
        size = self.n * index.code_size
        index.codes.resize(size)
        flat = faiss.rev_swig_ptr(index.codes.data(), size) if size else \
            np.zeros(0, np.uint8)
        codes = flat.view(stored_dtype(self.storage_dtype)).reshape(self.n, self.dim)
        starts = np.cumsum([0] + self.rows_per_shard)

        def fill(i, stored):
            codes[starts[i]:starts[i + 1]] = stored
        bad = self._load_each(fill)
        if bad:          # the skipped shards' rows leave: the kept ones move down in place
            at = 0
            for i, sh in enumerate(self.shards):
                if sh not in bad:
                    rows = starts[i + 1] - starts[i]
                    codes[at:at + rows] = codes[starts[i]:starts[i + 1]]
                    at += rows
            self._drop(bad)
            index.codes.resize(self.n * index.code_size)     # shrinking keeps the buffer
            codes = codes[:self.n]
        index.ntotal = self.n
        self.faiss_index, self.codes = index, codes

    def _load_gpu(self) -> None:
        """A float16 FAISS GPU flat index on ``device``, added shard by shard (each shard
        widened to float32 on the host alone: no float32 copy of the group)."""
        faiss = load_faiss()
        gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        if not 0 <= int(self.device) < gpus:
            raise ConfigError(f"GPU {self.device} asked for, but FAISS GPU sees {gpus} GPU(s) "
                             f"here (install faiss-gpu, or search on the CPU)")
        self._gpu_resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = int(self.device)
        config.useFloat16 = True
        index = faiss.GpuIndexFlatIP(self._gpu_resources, self.dim, config)
        kept = []
        # shards are added in order, one at a time (GPU adds are not thread-safe)
        for i, s in enumerate(self.shards):
            try:
                stored = self.store.load_vectors(s, self.profile, verify=True)
            except CorruptShard as e:
                if not self.allow_partial:
                    raise CorruptShard(f"{e}; repair it with `tda index` (the same command) "
                                       f"or search with --allow-partial to skip it") from None
                self.skipped.append(str(e))
                continue
            index.add(from_storage(stored, self.storage_dtype))
            kept.append(s)
        self._drop([s for s in self.shards if s not in kept])
        self.faiss_index = index

    def _check_all(self) -> None:
        """Streaming groups check each shard once at start-up (reading it), like a load."""
        bad = self._load_each(lambda i, stored: None)
        self._drop(bad)

    def _load_faiss(self) -> None:
        faiss = load_faiss()
        index = faiss.index_factory(self.dim, factory_string(self.kind, self.dim, self.n,
                                                             self.storage_dtype),
                                    faiss.METRIC_INNER_PRODUCT)
        vectors = []
        bad = self._load_each(lambda i, stored: vectors.append((i, stored)))
        vectors = [from_storage(v, self.storage_dtype) for _, v in sorted(vectors,
                                                                           key=lambda x: x[0])]
        self._drop(bad)
        if not index.is_trained and self.n:
            index.train(np.concatenate(vectors))
        for v in vectors:
            index.add(v)
        params = faiss.ParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search)):
            try:
                params.set_index_parameter(index, name, value)
            except RuntimeError:
                pass
        self.faiss_index = index

    # ------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> GroupResult:
        """Top ``k`` rows of the group for each of ``queries`` [m, d] float32."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = queries.shape[0]
        if self.n == 0:
            return GroupResult(np.full((m, 0), -np.inf, np.float32), np.zeros((m, 0), np.int64),
                               np.zeros((m, 0), np.int64))
        if self.kind == "ann":
            return GroupResult(*self.ann.search(queries, k, self._read_rows))
        if self.kind == "exact":
            return self._exact(queries, k)
        if self.kind == "stream":
            return self._exact(queries, k, stream=True)
        kk = min(k, self.n)
        scores, idx = self._faiss_search(queries, kk)
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        return GroupResult(np.where(valid, scores, -np.inf).astype(np.float32),
                           np.where(valid, self.owner[safe], -1),
                           np.where(valid, self.row[safe], -1))

    def _read_rows(self, locs: np.ndarray) -> np.ndarray:
        return read_rows_parallel(self.store, locs, self.profile, self._pool)

    def _exact(self, queries: np.ndarray, k: int, stream: bool = False) -> GroupResult:
        """Candidates by the fast path, canonical re-scoring, widened until the k-th score is
        clear of the candidates' last (so no row left out could belong in the top k)."""
        m = queries.shape[0]
        c = min(self.n, k + MARGIN)
        gpu = self.device is not None and not stream
        if gpu and c > GPU_MAX_K:
            self._warn(f"k={k} is above FAISS GPU's limit ({GPU_MAX_K}): answered by a CPU "
                       f"scan of the group's shards")
            gpu, stream = False, True
        while True:
            fast, idx = self._candidates(queries, c, stream, gpu)
            valid = idx >= 0
            safe = np.where(valid, idx, 0)
            if self.codes is not None:
                stored = self.codes[safe]                                    # [m, c, d]
            else:
                locs = np.stack([self.owner[safe].ravel(), self.row[safe].ravel()], axis=1)
                stored = self._read_rows(locs).reshape(m, c, self.dim)
            scores = np.where(valid, exact_scores(queries, stored, self.storage_dtype),
                              -np.inf).astype(np.float32)
            top = order(scores, np.where(valid, self.owner[safe], -1),
                        np.where(valid, self.row[safe], -1), k)
            if c >= self.n:
                return GroupResult(*top)
            kth = top[0][:, -1] if top[0].shape[1] >= k else np.full(m, -np.inf)
            last = np.where(valid, fast, np.inf).min(axis=1)        # c-th fast score
            if np.all(last < kth - 2 * EPS):
                return GroupResult(*top)
            c = min(self.n, 2 * c)

    def _candidates(self, queries, c: int, stream: bool, gpu: bool):
        """(fast scores [m, c], group rows [m, c]; -1 where none)."""
        if gpu or (not stream and queries.shape[0] < BLOCK_MIN_QUERIES):
            return self._faiss_search(queries, c)
        scorer = BlockScorer(queries, c, self.storage_dtype)
        if not stream:
            scorer.add(self.codes, 0)
        else:
            for i, s in enumerate(self.shards):
                scorer.add(self.store.load_vectors(s, self.profile, verify=False),
                           int(self.starts[i]))
        return scorer.result()

    def _faiss_search(self, queries: np.ndarray, k: int):
        """FAISS search; one query on one OpenMP thread. FAISS parallelizes over queries, but
        its flat scalar-quantizer scan opens a parallel region even for one query, whose
        barrier waits for every thread: on a busy machine that is a scheduler time slice
        (median 10 ms instead of 1 ms at 1e4 x 1024, bench/search.py). The setting is per
        calling thread, so concurrent searches are unaffected."""
        faiss = load_faiss()
        threads = faiss.omp_get_max_threads()
        if queries.shape[0] > 1 or threads == 1:
            return self.faiss_index.search(queries, k)
        faiss.omp_set_num_threads(1)
        try:
            return self.faiss_index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
