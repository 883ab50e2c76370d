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
from tda.searcher import heap
from tda.searcher.background import Background
from tda.searcher.fusion import rrf
from tda.searcher.rows import RowReader
from tda.store.bm25 import BM25
from tda.store.index import IndexStore
from tda.store.lock import ensure_not_busy
from tda.store.profiles import complete_profiles

SNIPPET_CHARS = 300
FUSION_DEPTH = 50


class Searcher:
    """Attribution search over one index: TrackStar (FAISS over Zarr shards, in this process
    or fanned out with dask), BM25 (Lucene) and their reciprocal-rank fusion.

    ``options`` (``SearchOptions``, or its fields as keyword arguments): the model for query
    vectors (default: the index's, checked by fingerprint); ``workers`` (dask worker processes
    on this machine) or ``scheduler`` (an existing dask scheduler's address): neither searches
    in this process on threads (no cluster to start; works from any script, notebook or
    standard input), unless the index is larger than this process's ``memory_budget_gb`` and
    the machine has room for enough workers. ``faiss_index``: 'auto' (exact in memory when it
    fits the budget, else 'ann' with a warning), 'exact', 'stream' (exact, reading the shards
    per query), 'ann' (compressed IVF-PQ, candidates re-scored exactly; ``ann``: AnnOptions),
    'hnsw', 'ivfpq' or a FAISS factory string. Every shard's vectors are checked against their
    checksum as they load: a corrupt one is a CorruptShard, or with ``allow_partial`` it is
    left out and each response carries a warning. The query model goes on loading in the
    background after open, once its fingerprint is checked (a different model is
    ModelMismatch at open): the first query that needs it waits for it (``ready()`` waits
    now). ``load_model=False`` opens a BM25-only searcher (no query vectors, no generated
    targets). Refuses an index that another process is writing (IndexBusy) or that is
    unfinished (IndexIncomplete).
    """

    def __init__(self, index: str | Path, options: SearchOptions | None = None, *,
                 load_model: bool = True, **changes):
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
        # the three slow parts start together and overlap (searcher/background.py): the query
        # model and BM25 (the JVM) on threads of their own, the vectors on this one; no
        # collections meanwhile (searcher/heap.py)
        heap.pause()
        self._encoder: Background | None = None
        self._model_checked = threading.Event()
        self._model_refused: BaseException | None = None
        if load_model:
            heap.pause()                     # resumed by the loading thread when it ends
            self._encoder = Background(self._load_encoder, "encoder")
        else:
            self._model_checked.set()
        status = self.store.bm25_status
        bm25 = None
        if status and status.get("complete"):
            bm25_path = self.store.bm25_path
            bm25 = Background(lambda: BM25(bm25_path), "bm25")
        self._bm25_lock = threading.Lock()
        self.rows = RowReader(self.store)
        o = self.options
        try:
            from tda.searcher.fanout import DenseSearch
            self.dense = DenseSearch(self.index, scheduler=o.scheduler, workers=o.workers,
                                     faiss_index=o.faiss_index,
                                     memory_budget=int(o.memory_budget_gb * 2**30),
                                     allow_partial=o.allow_partial, ann=o.ann,
                                     timeout_s=o.timeout_s)
            self.bm25 = bm25.result() if bm25 is not None else None
            self._model_checked.wait()       # a model that is not the index's is refused here
            if self._model_refused is not None:
                raise self._model_refused
        except BaseException:
            for load in (self._encoder, bm25):   # no thread left starting a JVM or a model
                if load is not None:
                    load.wait()
            self.rows.close()
            if getattr(self, "dense", None) is not None:
                self.dense.close()
            raise
        finally:
            heap.resume()
        self.default_mode = "both" if self.bm25 is not None else "trackstar"
        self._profiles: dict[str, object] = {}
        self._profiles_lock = threading.Lock()
        heap.hold()                    # the loaded heap out of GC walks (searcher/heap.py)
        self._holds_heap = True

    def _load_encoder(self):
        """The query model (runs on its own thread from open): checks the model's fingerprint
        (then sets ``_model_checked``, whatever happened), then imports and loads it; ends the
        collector pause open started for it."""
        try:
            try:
                from tda.searcher.encoder import QueryEncoder
                source = QueryEncoder.check(self.store, self.options.model_dir)
            except BaseException as e:
                self._model_refused = e
                raise
            finally:
                self._model_checked.set()
            encoder = QueryEncoder(self.store, self.options.model_dir, source=source)
        finally:
            heap.resume()
        heap.refreeze()                # loaded after open: into the held heap too
        return encoder

    @property
    def encoder(self):
        """The query model (``QueryEncoder``), None when opened with ``load_model=False``. It
        loads in the background from open (the vectors and BM25 do not wait for it), once its
        fingerprint has been checked: the first use waits for it and raises what loading
        raised, every time."""
        return None if self._encoder is None else self._encoder.result()

    def ready(self) -> "Searcher":
        """Wait until everything has loaded (the query model included); raises what loading
        raised. ``tda serve`` calls it before it listens."""
        _ = self.encoder
        return self

    # ------------------------------------------------------------------ API
    def search(self, prompt: str, target: str | None = None, k: int = 10,
               mode: str | None = None, profile: str | None = None,
               explain: bool = False) -> SearchResponse:
        """Which training examples made the model say ``target`` after ``prompt``?

        ``target`` None: the model's greedy continuation (``target_generated`` in the
        response). ``k``: results per list; ``mode``: 'trackstar' (cosine of TrackStar
        vectors, in [-1, 1]), 'bm25' (BM25 over prompt + target), 'both' (the two lists and
        their fusion) or 'fused' (reciprocal-rank fusion only); default: 'both' when the index
        has BM25, else 'trackstar'. ``profile``: a correction profile (``tda precondition``),
        None for the vectors as indexed. ``explain``: each TrackStar hit also gets its token
        salience (``hit.salience``: per-token contributions that sum to its score,
        engine/salience.py). The response holds, per list, up to ``k`` Hits (example id,
        document id, snippet, score, 1-based ranks in every list) and timings in
        milliseconds. QueryError for a request that cannot be answered (empty target, too
        long, unknown profile, no BM25 index)."""
        return self.search_many([SearchRequest(prompt=prompt, target=target, k=k, mode=mode,
                                               profile=profile, explain=explain)])[0]

    def search_many(self, requests: list[SearchRequest]) -> list[SearchResponse]:
        """Answer several requests with one batched query encoding and one dense pass per
        profile (one matrix product per block of vectors for all of them); each response
        equals the one ``search`` gives for its request alone. The TrackStar hits of every
        request with ``explain`` get their salience from one forward and backward over all
        of them together, with the query vectors exactly as scored."""
        t0 = time.perf_counter()
        modes = [self._mode(r) for r in requests]
        for r, mode in zip(requests, modes):
            if r.profile and not self._has_profile(r.profile):
                raise ProfileMissing(f"{self.index}: no profile {r.profile!r} "
                                     f"(profiles: {self.profiles() or 'none'})")
        targets, generated = self._targets(requests, modes)
        t1 = time.perf_counter()
        dense_rows = [i for i, mode in enumerate(modes) if mode != "bm25"]
        dense: dict[int, list[tuple[float, int, int]]] = {}
        scored: dict[int, np.ndarray] = {}
        if dense_rows:
            if self.encoder is None:
                raise QueryError("this Searcher was opened without a model: BM25 only")
            q = self.encoder.encode([(requests[i].prompt, targets[i]) for i in dense_rows])
            dense = self._dense(q, [requests[i] for i in dense_rows],
                                [modes[i] for i in dense_rows], dense_rows, scored)
        t2 = time.perf_counter()
        out = []
        for i, r in enumerate(requests):
            bm = self._bm25(r.prompt + targets[i], max(r.k, FUSION_DEPTH)) \
                if modes[i] != "trackstar" else []
            out.append(self._response(r, modes[i], targets[i], generated[i], dense.get(i, []),
                                      bm))
        t3 = time.perf_counter()
        notes = self._explain(requests, out, dense, scored)
        t4 = time.perf_counter()
        for i, (r, resp) in enumerate(zip(requests, out)):
            resp.warnings = list(self.dense.warnings) + notes.get(i, [])
            resp.timings_ms = {"target": round((t1 - t0) * 1e3, 2),
                               "trackstar": round((t2 - t1) * 1e3, 2),
                               "bm25_and_merge": round((t3 - t2) * 1e3, 2)}
            if r.explain:
                resp.timings_ms["explain"] = round((t4 - t3) * 1e3, 2)
        return out

    def _explain(self, requests, responses, dense, scored) -> dict[int, list[str]]:
        """Salience on the TrackStar hits of the requests that ask for it: one batch over
        all of them (searcher/explain.py); per request, the warnings about its own hits."""
        from tda.searcher.explain import Job, explain
        jobs, request_of = [], []
        for i, (r, resp) in enumerate(zip(requests, responses)):
            if not r.explain or not resp.trackstar:
                continue
            profile = None if r.profile is None else self._profile(r.profile)
            for hit, (_, sh, rw) in zip(resp.trackstar, dense[i]):
                jobs.append(Job(hit, sh, rw, scored[i], profile))
                request_of.append(i)
        out: dict[int, list[str]] = {}
        if not jobs:
            return out
        for i, job_notes in zip(request_of, explain(self.encoder, self.rows, jobs)):
            for note in job_notes:
                if note not in out.setdefault(i, []):
                    out[i].append(note)
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
        modes = [self._mode(r) for r in requests]
        rows = [i for i, mode in enumerate(modes) if mode != "bm25"]
        if not rows:
            return out
        if self.encoder is None:
            raise QueryError("this Searcher was opened without a model: BM25 only")
        targets, _ = self._targets([requests[i] for i in rows], [modes[i] for i in rows])
        q = self.encoder.encode([(requests[i].prompt, t) for i, t in zip(rows, targets)])
        for profile in dict.fromkeys(requests[i].profile for i in rows):
            sel = [j for j, i in enumerate(rows) if requests[i].profile == profile]
            qp = q[sel] if profile is None else self._profile(profile).transform(q[sel])
            res = self.dense.search(-qp, n, profile)
            for row, j in enumerate(sel):
                out[rows[j]] = self._ranked_hits(res, row, "opponents", sign=-1.0)
        return out

    def search_vectors(self, vectors: np.ndarray, k: int = 10,
                       profile: str | None = None) -> list[list[Hit]]:
        """The TrackStar top ``k`` of query vectors you computed yourself ([m, d] float32,
        unit rows as the index's), with snippets: one list of hits per row."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if profile is not None:
            if not self._has_profile(profile):
                raise ProfileMissing(f"{self.index}: no profile {profile!r} "
                                     f"(profiles: {self.profiles() or 'none'})")
            vectors = self._profile(profile).transform(vectors)
        res = self.dense.search(vectors, k, profile)
        return [self._ranked_hits(res, row, "trackstar", empty=("bm25", "fused"))
                for row in range(vectors.shape[0])]

    def _ranked_hits(self, res, row: int, name: str, sign: float = 1.0,
                     empty: tuple[str, ...] = ()) -> list[Hit]:
        """Hits of row ``row`` of a dense result, in its order, with their texts read by row;
        ``ranks``: 1-based position under ``name`` (None under each of ``empty``); scores
        times ``sign`` (the opponents' search negates the query)."""
        found = [(sign * float(s), int(sh), int(rw)) for s, sh, rw in
                 zip(res.scores[row], res.shards[row], res.rows[row]) if sh >= 0]
        recs = self.rows.fields([(sh, rw) for _, sh, rw in found], ("ids", "doc_ids", "text"))
        return [self._hit(rec["ids"], rec["doc_ids"], rec["text"], sc,
                          {name: i + 1, **dict.fromkeys(empty)})
                for i, ((sc, _, _), rec) in enumerate(zip(found, recs))]

    def document(self, doc_id: str) -> IndexedExample:
        """One indexed example by its example id (DOCID or DOCID#N): text, tokens and loss
        (nats); O(1) reads whatever the index size. KeyError when unknown."""
        loc = self._locate(doc_id)
        if loc is None:
            raise KeyError(doc_id)
        rec = self.rows.fields([loc])[0]
        return IndexedExample(id=str(rec["ids"]), doc_id=str(rec["doc_ids"]),
                              text=str(rec["text"]), n_tokens=int(rec["n_tokens"]),
                              loss=float(rec["loss"]))

    def profiles(self) -> list[str]:
        """The complete correction profiles of the index."""
        return complete_profiles(self.store)

    def _profile(self, name: str):
        with self._profiles_lock:
            if name not in self._profiles:
                from tda.searcher.profiles import Profile
                self._profiles[name] = Profile.load(self.store, name)
            return self._profiles[name]

    def info(self) -> dict:
        """What the index holds (``tda info``)."""
        from tda.store.info import index_info
        return index_info(self.index)

    def close(self) -> None:
        """Stop the dense search (its threads or dask cluster) and the row readers; waits for
        a query model still loading."""
        if self._encoder is not None:
            self._encoder.wait()
        self.dense.close()
        self.rows.close()
        if getattr(self, "_holds_heap", False):
            self._holds_heap = False
            heap.release()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _mode(self, r: SearchRequest) -> str:
        mode = r.mode or self.default_mode
        if mode in ("bm25", "both", "fused") and self.bm25 is None:
            raise QueryError(f"{self.index}: no BM25 index (built with --no-bm25); use "
                             f"mode='trackstar'")
        return mode

    def _has_profile(self, name: str) -> bool:
        return name in self.profiles()

    def _dense(self, q: np.ndarray, requests, modes, positions,
               scored: dict | None = None) -> dict:
        """{request position: [(score, shard, row)]}: one dense pass per profile; ``scored``
        gets {request position: its query vector as scored [d]} (profile applied)."""
        out = {}
        for profile in dict.fromkeys(r.profile for r in requests):
            rows = [j for j, r in enumerate(requests) if r.profile == profile]
            qp = q[rows] if profile is None else self._profile(profile).transform(q[rows])
            depth = max(max(requests[j].k for j in rows), FUSION_DEPTH)
            res = self.dense.search(qp, depth, profile)
            for row, j in enumerate(rows):
                if scored is not None:
                    scored[positions[j]] = qp[row]
                # a request's list does not depend on the others' k: cut to its own depth
                want = requests[j].k if modes[j] == "trackstar" else \
                    max(requests[j].k, FUSION_DEPTH)
                out[positions[j]] = [(float(s), int(sh), int(rw)) for s, sh, rw in
                                     zip(res.scores[row][:want], res.shards[row][:want],
                                         res.rows[row][:want]) if sh >= 0]
        return out

    def _targets(self, requests, modes) -> tuple[list[str], list[bool]]:
        targets, generated = [], []
        for r, mode in zip(requests, modes):
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

    def _bm25_record(self, doc: str) -> dict | None:
        with self._bm25_lock:
            return self.bm25.record(doc)

    def _locate(self, doc_id: str) -> tuple[int, int] | None:
        """(shard, row) of an example id: the BM25 index's stored location, else the row
        table (both O(1) in the index size)."""
        if self.bm25 is not None:
            rec = self._bm25_record(doc_id)
            return None if rec is None else (int(rec["shard"]), int(rec["row"]))
        return self.rows.locate(doc_id)

    def _hit(self, doc: str, doc_id: str, text: str, score: float, ranks: dict) -> Hit:
        snippet = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 1] + "…"
        return Hit(id=doc, doc_id=doc_id, snippet=snippet, score=score, ranks=ranks)

    def _response(self, r: SearchRequest, mode: str, target: str, generated: bool, dense,
                  bm) -> SearchResponse:
        fusion = mode in ("both", "fused")
        # ids of the dense hits a list needs: its top k, or the fusion depth
        shown = dense if fusion else dense[:r.k]
        ids = [rec["ids"] for rec in self.rows.fields([(sh, rw) for _, sh, rw in shown],
                                                      ("ids",))]
        dense_ids = ids
        dense_at = {doc: (sh, rw, sc) for doc, (sc, sh, rw) in zip(ids, shown)}
        bm_ids = [d for d, _ in bm]
        bm_scores = dict(bm)
        lists = {}
        if dense_ids:
            lists["trackstar"] = dense_ids
        if bm_ids:
            lists["bm25"] = bm_ids
        fused = rrf(lists) if fusion else []
        rank = {"trackstar": {d: i + 1 for i, d in enumerate(dense_ids)},
                "bm25": {d: i + 1 for i, d in enumerate(bm_ids)},
                "fused": {d: i + 1 for i, (d, _) in enumerate(fused)}}
        wanted = (dense_ids[:r.k] if mode in ("trackstar", "both") else []) + \
            (bm_ids[:r.k] if mode in ("bm25", "both") else []) + \
            ([d for d, _ in fused[:r.k]] if fusion else [])
        wanted = list(dict.fromkeys(wanted))
        from_rows = [d for d in wanted if d in dense_at]
        recs = self.rows.fields([dense_at[d][:2] for d in from_rows], ("doc_ids", "text"))
        details = {d: (rec["doc_ids"], rec["text"]) for d, rec in zip(from_rows, recs)}
        for d in wanted:
            if d not in details:
                rec = self._bm25_record(d)
                details[d] = (rec["doc_id"], rec["contents"])

        def ranks_of(doc):
            return {name: rank[name].get(doc) for name in rank}

        resp = SearchResponse(prompt=r.prompt, target=target, target_generated=generated,
                              mode=mode, profile=r.profile, k=r.k)
        if mode in ("trackstar", "both"):
            resp.trackstar = [self._hit(d, *details[d], dense_at[d][2], ranks_of(d))
                              for d in dense_ids[:r.k]]
        if mode in ("bm25", "both"):
            resp.bm25 = [self._hit(d, *details[d], bm_scores[d], ranks_of(d))
                         for d in bm_ids[:r.k]]
        if fusion:
            resp.fused = [self._hit(d, *details[d], sc, ranks_of(d)) for d, sc in fused[:r.k]]
        return resp
