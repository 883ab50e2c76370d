"""Compressed approximate search with exact re-scoring, for indexes larger than memory.

A FAISS IVF-PQ index over a group of shards holds each vector as ``pq_bytes`` product-
quantization codes of its residual (d / 8 bytes by default: 128 at d = 1024, 1/16 of the
float16 vectors) in one of ``lists`` inverted lists (about sqrt(n) / 2). The lists' centroids
are found by spherical k-means in the top ``coarse_dim`` uncentered principal directions of a
sample (an orthonormal projection A: a vector's list is the best of q . A^T c over centroids
c, the same inner product as against the full-dimensional centroid A^T c, at coarse_dim / d
of the cost of assigning 10^7 vectors). It is trained on a uniform sample of the group's rows,
then filled shard by shard (each shard's vectors read once and checked against their
checksum); only the codes stay in memory. A query scans the lists nearest to it until
``scan`` codes are seen, keeps the ``candidates`` best by their approximate score, reads those
candidates' stored vectors by row, and re-scores them exactly (scoring.exact_scores): the
returned scores are exact, only the candidate set is approximate. When ``candidates`` covers
the group, the answer is the exact search's.

Built once and stored in the index under ``ann/<key>/`` (``index.faiss`` and ``marker.json``
written last, with a digest of the shards it was built from: a rebuilt shard invalidates it);
a searcher loads it when current, else builds it (and stores it when it can take the index's
writer lock).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import numpy as np

from tda.errors import ConfigError, CorruptShard
from tda.log import logger
from tda.schemas.options import AnnOptions
from tda.store.codec import from_storage
from tda.store.ann import load_ann, save_ann
from tda.store.index import IndexStore
from tda.searcher.scoring import exact_scores, order

log = logger(__name__)
FORMAT = 2
TRAIN_ITERATIONS = 15
PQ_ITERATIONS = 10
PQ_POINTS_PER_CENTROID = 64


def resolve(options: AnnOptions, n: int, d: int) -> AnnOptions:
    """``options`` with every 0 chosen for n vectors of dimension d."""
    lists = options.lists or int(min(4096, max(1, 2 ** round(math.log2(max(1.0, n ** 0.5
                                                                            / 2))))))
    lists = max(1, min(lists, n))
    m = options.pq_bytes or _divisor_at_most(d, max(1, d // 8))
    if d % m:
        raise ConfigError(f"ann pq_bytes={m} must divide d={d}")
    pq_bits = options.pq_bits or int(min(8, max(1, math.log2(max(n, 2)) - 2)))
    sample = options.train_sample or max(65536, 64 * lists)
    return dataclasses.replace(options, lists=lists, pq_bytes=m, pq_bits=pq_bits,
                               train_sample=max(1, min(sample, n)),
                               coarse_dim=min(options.coarse_dim, d))


def _divisor_at_most(d: int, m: int) -> int:
    return max(x for x in range(1, m + 1) if d % x == 0)


def _faiss():
    from tda.searcher.dense import load_faiss
    return load_faiss()


def group_source(store: IndexStore, shards: list[int], profile: str | None) -> str:
    """Digest of the shard markers a group's ANN index is built from."""
    h = hashlib.sha256()
    for s in shards:
        m = store.shard_marker(s, profile)
        h.update(json.dumps([s, m["rows"], m["checksum"]]).encode())
    return h.hexdigest()


class AnnGroup:
    """The compressed ANN index of some shards of one index (or of one profile's shards)."""

    def __init__(self, store: IndexStore, shards: list[int], profile: str | None = None,
                 settings: AnnOptions = AnnOptions(), allow_partial: bool = False,
                 persist: bool = True):
        self.store, self.profile = store, profile
        self.dim = store.manifest.dim
        self.storage_dtype = store.manifest.layout.storage_dtype
        self.skipped: list[str] = []
        complete = store.complete_shards(profile)
        self.shards = [s for s in shards if s in complete]
        self.rows_per_shard = [complete[s] for s in self.shards]
        self.n = sum(self.rows_per_shard)
        self.settings = resolve(settings, self.n, self.dim)
        self.source = group_source(store, self.shards, profile)
        self.built_s = 0.0
        self.loaded_from_disk = False
        self.index = self._load() if persist else None
        if self.index is None:
            start = time.perf_counter()
            self.index = self._build(allow_partial)
            self.built_s = time.perf_counter() - start
            if persist and not self.skipped:
                self._store()
        self.memory_bytes = self._memory()

    # ------------------------------------------------------------ build
    def _key(self) -> str:
        s = self.settings
        text = json.dumps([FORMAT, self.profile, self.shards, s.lists, s.pq_bytes, s.pq_bits,
                           s.train_sample, s.seed, s.coarse_dim])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _train(self, sample: np.ndarray):
        """The untrained-PQ, trained-lists IVF-PQ index, then trained on ``sample`` [s, d]."""
        faiss = _faiss()
        st = self.settings
        dc = st.coarse_dim
        if dc < self.dim:          # top dc uncentered principal directions: A [dc, d]
            second = sample.astype(np.float64).T @ sample.astype(np.float64)
            _, vecs = np.linalg.eigh(second)
            a = np.ascontiguousarray(vecs[:, ::-1][:, :dc].T, dtype=np.float32)
            projection = faiss.LinearTransform(self.dim, dc, False)
            faiss.copy_array_to_vector(a.ravel(), projection.A)
            projection.is_orthonormal = True
            projection.is_trained = True
            coarse = sample @ a.T
        else:
            projection, coarse = None, sample
        kmeans = faiss.Kmeans(dc, st.lists, niter=TRAIN_ITERATIONS, spherical=True,
                              seed=st.seed + 1, max_points_per_centroid=1 << 30,
                              verbose=False)
        kmeans.train(np.ascontiguousarray(coarse))
        flat = faiss.IndexFlatIP(dc)
        flat.add(kmeans.centroids)
        quantizer = flat if projection is None else faiss.IndexPreTransform(projection, flat)
        index = faiss.IndexIVFPQ(quantizer, self.dim, st.lists, st.pq_bytes, st.pq_bits,
                                 faiss.METRIC_INNER_PRODUCT)
        # k-means of each PQ codebook: 64 points per centroid and 10 iterations (FAISS: 256
        # and 25) train ~16x faster; the codes only rank candidates, which are re-scored
        index.pq.cp.niter = PQ_ITERATIONS
        index.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
        index.train(sample)                       # the lists are trained: only the PQ is
        self._keep = (quantizer, flat, projection)   # Python owners of the C++ objects
        return index

    def _sample(self) -> np.ndarray:
        """A uniform sample [s, d] float32 of the group's rows (seeded), read by row."""
        s = min(self.settings.train_sample, self.n)
        rng = np.random.default_rng(self.settings.seed)
        pick = np.sort(rng.choice(self.n, size=s, replace=False))
        starts = np.cumsum([0] + self.rows_per_shard)
        shard_of = np.searchsorted(starts, pick, side="right") - 1
        parts = []
        for g in np.unique(shard_of):
            rows = pick[shard_of == g] - starts[g]
            parts.append(self.store.read_vector_rows(self.shards[g], rows, self.profile))
        return from_storage(np.concatenate(parts), self.storage_dtype)

    def _build(self, allow_partial: bool):
        if self.n == 0:
            return None
        t = time.perf_counter()
        index = self._train(self._sample())
        st = self.settings
        log.info(f"ann: trained {st.lists} lists ({st.coarse_dim} dims), PQ {st.pq_bytes} "
                 f"bytes on {st.train_sample} rows in {time.perf_counter() - t:.0f} s")
        kept, kept_rows = [], []
        for i, (s, rows) in enumerate(zip(self.shards, self.rows_per_shard)):
            try:
                stored = self.store.load_vectors(s, self.profile, verify=True)
            except CorruptShard as e:
                if not allow_partial:
                    raise CorruptShard(f"{e}; repair it with `tda index` (the same command) "
                                       f"or search with --allow-partial to skip it") from None
                self.skipped.append(str(e))
                continue
            ids = (np.int64(s) << 32) | np.arange(rows, dtype=np.int64)
            index.add_with_ids(from_storage(stored, self.storage_dtype), ids)
            kept.append(s)
            kept_rows.append(rows)
            if (i + 1) % 100 == 0:
                log.info(f"ann: {i + 1}/{len(self.shards)} shards added")
        self.shards, self.rows_per_shard = kept, kept_rows
        return index

    def _store(self) -> None:
        """Keep the built index in the index directory (store/ann.py), for the next start."""
        if self.index is None:
            return
        marker = {"format": FORMAT, "source": self.source, "rows": int(self.index.ntotal),
                  "profile": self.profile, "shards": self.shards,
                  "settings": dataclasses.asdict(self.settings)}
        why = save_ann(self.store, self._key(), marker,
                       lambda path: _faiss().write_index(self.index, str(path)))
        if why:
            log.warning(f"ann: not stored ({why}); it will be rebuilt next time")

    def _load(self):
        found = load_ann(self.store, self._key(), {"format": FORMAT, "source": self.source})
        if found is None:
            return None
        path, marker = found
        try:
            index = _faiss().read_index(str(path))
        except (OSError, RuntimeError):
            return None
        if index is None or index.ntotal != marker.get("rows") or index.ntotal != self.n:
            return None
        self.loaded_from_disk = True
        return index

    def _memory(self) -> int:
        if self.index is None:
            return 0
        return int(self.index.ntotal) * (self.index.code_size + 8)

    # ------------------------------------------------------------ search
    def candidates(self, queries: np.ndarray, c: int) -> np.ndarray:
        """[m, c] locations (shard << 32 | row) by approximate score; -1 where fewer."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF()
        params.nprobe = self.index.nlist
        params.max_codes = max(self.settings.scan, c)
        _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), c,
                                   params=params)
        return ids

    def search(self, queries: np.ndarray, k: int, read_rows) -> tuple[np.ndarray, ...]:
        """Top k per query, exactly re-scored: (scores [m, k] float32, shards, rows [m, k]
        int64; -inf / -1 where fewer). ``read_rows(locs [r, 2]) -> stored [r, d]``."""
        c = max(k, self.settings.candidates)
        ids = self.candidates(queries, min(c, max(self.n, 1)))
        valid = ids >= 0
        uniq, inverse = np.unique(ids[valid], return_inverse=True)
        locs = np.stack([uniq >> 32, uniq & 0xFFFFFFFF], axis=1)
        stored = read_rows(locs) if len(uniq) else np.zeros((0, self.dim), np.float16)
        per = np.zeros(ids.shape + (self.dim,), dtype=stored.dtype)
        per[valid] = stored[inverse]
        scores = np.where(valid, exact_scores(queries, per, self.storage_dtype), -np.inf)
        shards = np.where(valid, ids >> 32, -1)
        rows = np.where(valid, ids & 0xFFFFFFFF, -1)
        return order(scores.astype(np.float32), shards, rows, k)
