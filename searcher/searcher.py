"""`tda.Searcher`: the in-process search API (the HTTP server wraps one)."""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np

from tda.errors import CorruptShard, IndexIncomplete, ProfileMissing, QueryError
from tda.schemas.options import SearchOptions
from tda.schemas.search import Hit, IndexedExample, SearchRequest, SearchResponse
from tda.searcher.fusion import rrf
from tda.store.bm25 import BM25
from tda.store.index import IndexStore
from tda.store.lock import ensure_not_busy
from tda.store.profiles import complete_profiles

SNIPPET_CHARS = 300
FUSION_DEPTH = 50


class Searcher:
    """Attribution search over one index: TrackStar (FAISS over Zarr shards, fanned out with
    dask), BM25 (Lucene) and their reciprocal-rank fusion.

    ``options`` (``SearchOptions``, or its fields as keyword arguments): the model for query
    vectors (default: the index's, checked by fingerprint), the dask scheduler or local
    workers, the FAISS index type, the memory budget, and whether corrupt shards may be left
    out. Every shard is checked against its checksum when loaded: a corrupt one is a
    CorruptShard, or with ``allow_partial`` it is left out and each response carries a
    warning. ``load_model=False`` opens a BM25-only searcher (no query vectors, no generated
    targets). Refuses an index that another process is writing (IndexBusy) or that is
    unfinished (IndexIncomplete).
    """

    def __init__(self, index: str | Path, options: SearchOptions | None = None, *,
                 load_model: bool = True, **changes):
        from tda.searcher.fanout import DenseSearch

        self.options = dataclasses.replace(options or SearchOptions(), **changes)
        self.index = str(index)
        ensure_not_busy(self.index)
        self.store = IndexStore.open(self.index)
        self.manifest = self.store.manifest
        unreadable = self.store.unreadable_shards()
        if unreadable:
            shard, why = min(unreadable.items())
            raise CorruptShard(f"{self.index}: shard {shard:06d}: metadata unreadable ({why}); "
                               f"repair it with `tda index` (the same command)")
        missing = self.store.unfinished_shards()
        if missing:
            raise IndexIncomplete(f"{self.index}: the index is unfinished (shards "
                                  f"{missing[:10]}); rerun `tda index` to complete it")
        self.encoder = None
        if load_model:
            from tda.searcher.encoder import QueryEncoder
            self.encoder = QueryEncoder(self.store, self.options.model_dir)
        bm25_path = self.store.bm25_path
        status = self.store.bm25_status
        self.bm25 = BM25(bm25_path) if status and status.get("complete") else None
        self._bm25_lock = threading.Lock()
        self.dense = DenseSearch(self.index, scheduler=self.options.scheduler,
                                 workers=self.options.workers,
                                 faiss_index=self.options.faiss_index,
                                 memory_budget=int(self.options.memory_budget_gb * 2**30),
                                 allow_partial=self.options.allow_partial)
        self._text_cache: dict[int, dict] = {}
        self._profiles: dict[str, object] = {}

    # ------------------------------------------------------------------ API
    def search(self, prompt: str, target: str | None = None, k: int = 10, mode: str = "both",
               profile: str | None = None) -> SearchResponse:
        """Which training examples made the model say ``target`` after ``prompt``?

        ``target`` None: the model's greedy continuation (``target_generated`` in the
        response). ``k``: results per list; ``mode``: 'trackstar' (cosine of TrackStar
        vectors, in [-1, 1]), 'bm25' (BM25 over prompt + target), 'both' (the two lists and
        their fusion) or 'fused' (reciprocal-rank fusion only); ``profile``: a correction
        profile (``tda precondition``), None for the vectors as indexed. The response holds,
        per list, up to ``k`` Hits (example id, document id, snippet, score, 1-based ranks in
        every list) and timings in milliseconds. QueryError for a request that cannot be
        answered (empty target, too long, unknown profile, no BM25 index)."""
        return self.search_many([SearchRequest(prompt=prompt, target=target, k=k, mode=mode,
                                               profile=profile)])[0]

    def search_many(self, requests: list[SearchRequest]) -> list[SearchResponse]:
        """Answer several requests (as ``search``) with one batched query encoding and one
        dense fan-out per profile; responses in request order."""
        t0 = time.perf_counter()
        for r in requests:
            if r.profile and not self._has_profile(r.profile):
                raise ProfileMissing(f"{self.index}: no profile {r.profile!r} "
                                     f"(profiles: {self.profiles() or 'none'})")
            if r.mode in ("bm25", "both", "fused") and self.bm25 is None:
                raise QueryError(f"{self.index}: no BM25 index (built with --no-bm25); use "
                                 f"mode='trackstar'")
        targets, generated = self._targets(requests)
        t1 = time.perf_counter()
        dense_rows = [i for i, r in enumerate(requests) if r.mode != "bm25"]
        dense: dict[int, list[tuple[str, float, int, int]]] = {}
        if dense_rows:
            if self.encoder is None:
                raise QueryError("this Searcher was opened without a model: BM25 only")
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

    def opponents(self, requests: list[SearchRequest], n: int = 10) -> list[list[Hit]]:
        """Per request, the ``n`` examples with the lowest TrackStar scores (most negative:
        training on them lowers the target's probability most, to first order), lowest first:
        the opponents of the paper's released results. The same query vectors, profile and
        exact scan as ``search_many``'s proponents, with the vector negated; ``ranks`` are
        1-based positions in the opponent list. Requests in ``bm25`` mode get an empty list."""
        for r in requests:
            if r.profile and not self._has_profile(r.profile):
                raise ProfileMissing(f"{self.index}: no profile {r.profile!r} "
                                     f"(profiles: {self.profiles() or 'none'})")
        out: list[list[Hit]] = [[] for _ in requests]
        rows = [i for i, r in enumerate(requests) if r.mode != "bm25"]
        if not rows:
            return out
        if self.encoder is None:
            raise QueryError("this Searcher was opened without a model: BM25 only")
        targets, _ = self._targets([requests[i] for i in rows])
        q = self.encoder.encode([(requests[i].prompt, t) for i, t in zip(rows, targets)])
        for profile in dict.fromkeys(requests[i].profile for i in rows):
            sel = [j for j, i in enumerate(rows) if requests[i].profile == profile]
            qp = q[sel] if profile is None else self._profile(profile).transform(q[sel])
            res = self.dense.search(-qp, n, profile)
            for row, j in enumerate(sel):
                hits = []
                for s, sh, rw in zip(res.scores[row], res.shards[row], res.rows[row]):
                    if sh < 0:
                        continue
                    data = self._shard_rows(int(sh))
                    hits.append(self._hit(str(data["ids"][rw]), str(data["doc_ids"][rw]),
                                          str(data["text"][rw]), -float(s),
                                          {"opponents": len(hits) + 1}))
                out[rows[j]] = hits
        return out

    def document(self, doc_id: str) -> IndexedExample:
        """One indexed example by its example id (DOCID or DOCID#N): text, tokens and loss
        (nats). KeyError when unknown."""
        loc = self._locate(doc_id)
        if loc is None:
            raise KeyError(doc_id)
        data = self._shard_rows(loc[0])
        r = loc[1]
        return IndexedExample(id=str(data["ids"][r]), doc_id=str(data["doc_ids"][r]),
                        text=str(data["text"][r]), n_tokens=int(data["n_tokens"][r]),
                        loss=float(data["loss"][r]))

    def profiles(self) -> list[str]:
        """The complete correction profiles of the index."""
        return complete_profiles(self.store)

    def _profile(self, name: str):
        if name not in self._profiles:
            from tda.searcher.profiles import Profile
            self._profiles[name] = Profile.load(self.store, name)
        return self._profiles[name]

    def info(self) -> dict:
        """What the index holds (``tda info``)."""
        from tda.store.info import index_info
        return index_info(self.index)

    def close(self) -> None:
        """Stop the dense search's dask cluster."""
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
                raise QueryError("target is empty: give a target or leave it out to use the "
                                 "model's own continuation")
            else:
                if self.encoder is None:
                    raise QueryError("no target given and no model loaded to generate one")
                from tda.searcher.generate import greedy_continuation
                with self.encoder.lock:
                    targets.append(greedy_continuation(self.encoder.model, self.encoder.tokenizer,
                                                       r.prompt, self.encoder.config.max_len))
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

    def _response(self, r: SearchRequest, target: str, generated: bool, dense,
                  bm) -> SearchResponse:
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
