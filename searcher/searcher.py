"""`tda.Searcher`: the in-process search API (the HTTP server wraps one)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from tda.indexer.lucene import BM25
from tda.indexer.store import IndexStore
from tda.schemas.search import Document, Hit, SearchRequest, SearchResponse
from tda.searcher.fusion import rrf

SNIPPET_CHARS = 300
FUSION_DEPTH = 50


class SearchError(ValueError):
    """A request that cannot be answered (bad query, unknown profile, missing BM25)."""


class Searcher:
    """Attribution search over one index: TrackStar (FAISS over Zarr shards, fanned out with
    dask), BM25 (Lucene) and their reciprocal-rank fusion.

    ``model_dir``: the model for query vectors (default: the index's, checked by fingerprint).
    ``scheduler``: an existing dask scheduler address; default a LocalCluster of ``workers``.
    ``kind``: 'exact' (default), 'hnsw', 'ivfpq' or a FAISS factory string.
    Every shard is checked against its checksum when loaded: a corrupt one is an error, or with
    ``allow_partial`` it is left out and each response carries a warning.
    """

    def __init__(self, index: str | Path, *, model_dir: str | Path | None = None,
                 scheduler: str | None = None, workers: int = 2, kind: str = "exact",
                 memory_budget_gb: float = 4.0, load_model: bool = True,
                 allow_partial: bool = False):
        from tda.searcher.fanout import DenseSearch

        self.index = str(index)
        self.store = IndexStore.open(self.index)
        self.manifest = self.store.manifest
        missing = self._unfinished()
        if missing:
            raise SearchError(f"{self.index}: the index is unfinished (shards {missing[:10]}); "
                              f"rerun `tda index` to complete it")
        self.encoder = None
        if load_model:
            from tda.indexer.encoder import QueryEncoder
            self.encoder = QueryEncoder(self.store, model_dir)
        bm25_path = self.store.bm25_path
        status = self.store.bm25_status
        self.bm25 = BM25(bm25_path) if status and status.get("complete") else None
        self._bm25_lock = threading.Lock()
        self.dense = DenseSearch(self.index, scheduler=scheduler, workers=workers, kind=kind,
                                 memory_budget=int(memory_budget_gb * 2**30),
                                 allow_partial=allow_partial)
        self._text_cache: dict[int, dict] = {}
        self._profiles: dict[str, object] = {}

    def _unfinished(self) -> list[int]:
        n_docs = self.manifest.corpus["documents"]
        n_shards = -(-n_docs // self.manifest.layout["shard_size"])
        return sorted(set(range(n_shards)) - set(self.store.complete_shards()))

    # ------------------------------------------------------------------ API
    def search(self, prompt: str, target: str | None = None, k: int = 10, mode: str = "both",
               profile: str | None = None) -> SearchResponse:
        return self.search_many([SearchRequest(prompt=prompt, target=target, k=k, mode=mode,
                                               profile=profile)])[0]

    def search_many(self, requests: list[SearchRequest]) -> list[SearchResponse]:
        """Answer several requests with one batched query encoding and one dense fan-out."""
        t0 = time.perf_counter()
        for r in requests:
            if r.profile and not self._has_profile(r.profile):
                raise SearchError(f"{self.index}: no profile {r.profile!r} "
                                  f"(profiles: {self.profiles() or 'none'})")
            if r.mode in ("bm25", "both", "fused") and self.bm25 is None:
                raise SearchError(f"{self.index}: no BM25 index (built with --no-bm25); use "
                                  f"mode='trackstar'")
        targets, generated = self._targets(requests)
        t1 = time.perf_counter()
        dense_rows = [i for i, r in enumerate(requests) if r.mode != "bm25"]
        dense: dict[int, list[tuple[str, float, int, int]]] = {}
        if dense_rows:
            if self.encoder is None:
                raise SearchError("this Searcher was opened without a model: BM25 only")
            q = self.encoder.encode([(requests[i].prompt, targets[i]) for i in dense_rows])
            for profile in dict.fromkeys(requests[i].profile for i in dense_rows):
                rows = [j for j, i in enumerate(dense_rows) if requests[i].profile == profile]
                qp = q[rows] if profile is None else self._profile(profile).transform(q[rows])
                depth = max(max(requests[dense_rows[j]].k for j in rows), FUSION_DEPTH)
                res = self.dense.search(qp, depth, profile)
                for row, j in enumerate(rows):
                    dense[dense_rows[j]] = [(None, float(s), int(sh), int(rw)) for s, sh, rw in
                                            zip(res.scores[row], res.shards[row], res.rows[row])
                                            if sh >= 0]
        t2 = time.perf_counter()
        out = []
        for i, r in enumerate(requests):
            bm = self._bm25(r.prompt + targets[i], max(r.k, FUSION_DEPTH)) \
                if r.mode != "trackstar" else []
            out.append(self._response(r, targets[i], generated[i], dense.get(i, []), bm))
        t3 = time.perf_counter()
        for resp in out:
            resp.warnings = list(self.dense.warnings)
            resp.timings_ms = {"target": round((t1 - t0) * 1e3, 2),
                               "trackstar": round((t2 - t1) * 1e3, 2),
                               "bm25_and_merge": round((t3 - t2) * 1e3, 2)}
        return out

    def document(self, doc_id: str) -> Document:
        """One example by id (KeyError when unknown)."""
        loc = self._locate(doc_id)
        if loc is None:
            raise KeyError(doc_id)
        data = self._shard_rows(loc[0])
        r = loc[1]
        return Document(id=str(data["ids"][r]), doc_id=str(data["doc_ids"][r]),
                        text=str(data["text"][r]), n_tokens=int(data["n_tokens"][r]),
                        loss=float(data["loss"][r]))

    def profiles(self) -> list[str]:
        """The complete correction profiles of the index."""
        from tda.indexer.profiles import complete_profiles
        return complete_profiles(self.store)

    def _profile(self, name: str):
        if name not in self._profiles:
            from tda.indexer.profiles import Profile
            self._profiles[name] = Profile.load(self.store, name)
        return self._profiles[name]

    def info(self) -> dict:
        from tda.indexer.info import index_info
        return index_info(self.index)

    def close(self) -> None:
        self.dense.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _has_profile(self, name: str) -> bool:
        return name in self.profiles()

    def _targets(self, requests) -> tuple[list[str], list[bool]]:
        targets, generated = [], []
        for r in requests:
            if r.target is not None and r.target.strip():
                targets.append(r.target)
                generated.append(False)
            elif r.target is not None:
                raise SearchError("target is empty: give a target or leave it out to use the "
                                  "model's own continuation")
            else:
                if self.encoder is None:
                    raise SearchError("no target given and no model loaded to generate one")
                targets.append(self.encoder.continuation(r.prompt))
                generated.append(True)
        return targets, generated

    def _bm25(self, text: str, depth: int) -> list[tuple[str, float]]:
        with self._bm25_lock:
            return self.bm25.search(text, depth)

    def _shard_rows(self, shard: int) -> dict:
        if shard not in self._text_cache:
            if len(self._text_cache) > 64:
                self._text_cache.clear()
            self._text_cache[shard] = self.store.read_shard(
                shard, ("ids", "doc_ids", "text", "n_tokens", "loss"))
        return self._text_cache[shard]

    def _locate(self, doc_id: str) -> tuple[int, int] | None:
        """(shard, row) of an example id, through the BM25 index's stored location or a scan."""
        if self.bm25 is not None:
            with self._bm25_lock:
                rec = self.bm25.record(doc_id)
            return None if rec is None else (int(rec["shard"]), int(rec["row"]))
        for shard in sorted(self.store.complete_shards()):
            ids = self._shard_rows(shard)["ids"]
            hit = np.flatnonzero(ids == doc_id)
            if hit.size:
                return shard, int(hit[0])
        return None

    def _hit(self, doc: str, doc_id: str, text: str, score: float, ranks: dict) -> Hit:
        snippet = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 1] + "…"
        return Hit(id=doc, doc_id=doc_id, snippet=snippet, score=score, ranks=ranks)

    def _response(self, r: SearchRequest, target: str, generated: bool, dense, bm) -> SearchResponse:
        dense_ids = []
        dense_info = {}
        for _, score, shard, row in dense:
            data = self._shard_rows(shard)
            doc = str(data["ids"][row])
            dense_ids.append(doc)
            dense_info[doc] = (str(data["doc_ids"][row]), str(data["text"][row]), score)
        bm_ids = [d for d, _ in bm]
        bm_scores = dict(bm)
        lists = {}
        if dense_ids:
            lists["trackstar"] = dense_ids
        if bm_ids:
            lists["bm25"] = bm_ids
        fused = rrf(lists) if r.mode in ("both", "fused") else []
        rank = {"trackstar": {d: i + 1 for i, d in enumerate(dense_ids)},
                "bm25": {d: i + 1 for i, d in enumerate(bm_ids)},
                "fused": {d: i + 1 for i, (d, _) in enumerate(fused)}}

        def ranks_of(doc):
            return {name: rank[name].get(doc) for name in rank}

        def details(doc):
            if doc in dense_info:
                return dense_info[doc][:2]
            with self._bm25_lock:
                rec = self.bm25.record(doc)
            return rec["doc_id"], rec["contents"]

        resp = SearchResponse(prompt=r.prompt, target=target, target_generated=generated,
                              mode=r.mode, profile=r.profile, k=r.k)
        if r.mode in ("trackstar", "both"):
            resp.trackstar = [self._hit(d, *dense_info[d][:2], dense_info[d][2], ranks_of(d))
                              for d in dense_ids[:r.k]]
        if r.mode in ("bm25", "both"):
            resp.bm25 = [self._hit(d, *details(d), bm_scores[d], ranks_of(d)) for d in bm_ids[:r.k]]
        if r.mode in ("both", "fused"):
            resp.fused = [self._hit(d, *details(d), s, ranks_of(d)) for d, s in fused[:r.k]]
        return resp
