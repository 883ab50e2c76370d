"""Exact inner-product scoring: many queries against blocks of stored vectors, and the one
canonical score every search path reports.

``BlockScorer`` serves m queries with one matrix product per block of vectors
([rows, d] x [d, m], float32), keeping a running top c per query: each block is read from
memory once for all m queries, so its cost is bounded by compute, not by m passes over memory
(FAISS's scalar-quantizer scan goes query by query). Stored float16 (or bfloat16 bits) are
widened to float32 block by block into one reused buffer of BLOCK_ROWS rows (4 MB at d = 1024:
it stays in the last-level cache for the product that reads it). Widening and product are both
torch's, on its one pool of threads: widening with torch and multiplying with numpy's BLAS
made the two libraries' thread pools wait on each other at every block (README, "Search at
scale": 0.27 -> 0.66 of the matmul rate at m = 64, bench/scale.py ``batched``).

``exact_scores`` is the canonical score of a (query, stored vector) pair: the stored values
widened exactly to float64, the dot product accumulated in float64, rounded to float32. Every
path (FAISS, the block scorer, ANN candidates, streaming) ends by re-scoring its top
candidates with it and ordering by (score descending, shard, row), so the paths agree to the
bit, and ties break the same way everywhere.
"""
from __future__ import annotations

import numpy as np
import torch

BLOCK_ROWS = 1024


def widen(stored: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """A torch view of stored rows: float16 as is, bfloat16 bits (uint16) as bfloat16."""
    t = torch.from_numpy(np.ascontiguousarray(stored))
    return t.view(torch.bfloat16) if storage_dtype == "bfloat16" else t


class BlockScorer:
    """Running top ``c`` of the scores of ``queries`` [m, d] float32 over blocks of rows.

    Per block of ``block_rows`` rows: widen to float32, scores [rows, m] = block @ queries^T,
    then only the scores above each query's current c-th best are merged in (after the first
    blocks, a handful per block)."""

    def __init__(self, queries: np.ndarray, c: int, storage_dtype: str = "float16",
                 block_rows: int = BLOCK_ROWS):
        q = np.ascontiguousarray(queries, dtype=np.float32)
        self.m, self.d = q.shape
        self._qT = torch.from_numpy(np.ascontiguousarray(q.T))     # [d, m]
        self.c, self.storage_dtype = max(1, c), storage_dtype
        self.block_rows = block_rows
        self._buf = torch.empty((block_rows, self.d), dtype=torch.float32)
        self._out = torch.empty((block_rows, self.m), dtype=torch.float32)
        self.scores = np.full((self.m, self.c), -np.inf, dtype=np.float32)
        self.index = np.full((self.m, self.c), -1, dtype=np.int64)
        self._theta = np.full(self.m, -np.inf, dtype=np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0
        self.seen = 0

    def add(self, stored: np.ndarray, offset: int) -> None:
        """Score rows ``stored`` [rows, d] (storage dtype) numbered from ``offset``."""
        src = widen(stored, self.storage_dtype)
        for start in range(0, src.shape[0], self.block_rows):
            part = src[start:start + self.block_rows]
            rows = part.shape[0]
            buf, out = self._buf[:rows], self._out[:rows]
            buf.copy_(part)                                        # widen to float32
            torch.mm(buf, self._qT, out=out)                       # [rows, m]
            self._merge(out.numpy(), offset + start)
            self.seen += rows

    def _merge(self, s: np.ndarray, offset: int) -> None:
        """Keep the scores of ``s`` [rows, m] above each query's threshold (a lower bound of its
        current c-th best) as pending candidates; fold them into the top c when there are
        many (a sort of m c + pending entries per fold, not per block)."""
        flat = np.flatnonzero(s > self._theta)
        if flat.size == 0:
            return
        if flat.size > 4 * self.m * self.c:                        # early blocks: most pass
            kk = min(self.c, s.shape[0])
            r = np.argpartition(-s, kk - 1, axis=0)[:kk].T.ravel()  # [m * kk]
            q = np.repeat(np.arange(self.m), kk)
        else:
            r, q = np.divmod(flat, self.m)
        self._pending.append((q, s[r, q], r.astype(np.int64) + offset))
        self._n_pending += r.size
        if self._n_pending > 4 * self.m * self.c:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        qs, vs, idx = zip(*self._pending)
        self._pending, self._n_pending = [], 0
        all_q = np.concatenate([np.repeat(np.arange(self.m), self.c), *qs])
        all_s = np.concatenate([self.scores.ravel(), *vs])
        all_i = np.concatenate([self.index.ravel(), *idx])
        o = np.lexsort((-all_s, all_q))
        all_q, all_s, all_i = all_q[o], all_s[o], all_i[o]
        first = np.searchsorted(all_q, np.arange(self.m))
        keep = (np.arange(all_q.size) - first[all_q]) < self.c
        self.scores = all_s[keep].reshape(self.m, self.c)
        self.index = all_i[keep].reshape(self.m, self.c)
        self._theta = self.scores[:, -1].copy()                    # each query's c-th best

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores [m, c] float32, row numbers [m, c] int64: -inf / -1 beyond the rows seen),
        best first (re-score with exact_scores for the canonical order)."""
        self._fold()
        return self.scores, self.index


def exact_scores(queries: np.ndarray, stored: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Canonical scores [m, c] float32 of ``queries`` [m, d] against their own candidates
    ``stored`` [m, c, d] (storage dtype): float64 accumulation of exactly widened values."""
    v = widen(stored.reshape(-1, stored.shape[-1]), storage_dtype).to(torch.float64)
    v = v.reshape(stored.shape)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(torch.float64)
    return torch.einsum("md,mcd->mc", q, v).to(torch.float32).numpy()


def order(scores: np.ndarray, shards: np.ndarray, rows: np.ndarray, k: int):
    """Top ``k`` per query of candidates [m, c]: score descending, then shard, then row;
    -inf / -1 entries last. Returns (scores, shards, rows) [m, min(k, c)]."""
    if scores.shape[1] == 0:
        return scores, shards, rows
    idx = np.lexsort((rows, shards, -scores), axis=1)[:, :k]
    take = lambda a: np.take_along_axis(a, idx, axis=1)  # noqa: E731
    return take(scores), take(shards), take(rows)
