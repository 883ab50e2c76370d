"""Search at 10^6 - 10^7 examples on this machine: the data set and every figure of issue 12.

Each section is its own command (run one at a time under the bench lock), prints JSON and
writes it to ``bench/results/scale-<section>.json`` (``--out`` to change):

- ``data``: a synthetic index of ``--n`` examples at d = ``--dim``, written through the real
  store (``IndexStore.write_shard``, float16, ``--shard-size`` rows per shard) with real texts
  (the sentences of ../shared/data: LAMA T-REx evidence and FewRel, recycled in order), kept
  under ``--data-dir`` and reused (a rerun writes only missing shards). Vectors are clustered
  unit vectors, not uniform noise: ``--topics`` topic centers t; each shard is a run of
  families (sizes geometric, mean ``--family-size``: a document's chunks, or one fact's
  sentences) with a topic and a direction f of their own; an example is
  x = normalize(t + beta f + sigma g / sqrt(d)), g standard normal. A query is drawn the same
  way from a random existing family with fresh g: its nearest examples are its family, then
  its topic. Family-mates have cosine ~ (1 + beta^2) / (1 + beta^2 + sigma^2), topic-mates
  ~ 1 / (1 + beta^2 + sigma^2), others ~ 0 (``score_profile`` in the JSON shows the real
  top-1 / top-10 / top-100 / median scores of the queries).
- ``flops``: this machine's float32 matrix-multiply rate: the best of numpy (OpenBLAS) and
  torch (MKL) on a 2048^3 product (GFLOP/s = 2 n^3 / s), best of ``--rounds``.
- ``batched``: exact search at ``--n`` (default 1e6) in memory (``ShardGroup(kind="exact")``,
  k = 10) for m = 1, 8, 64, 512 queries in one call: queries/s, and GFLOP/s counted as
  2 m n d / s against ``flops`` measured in the same run, interleaved round by round (best of
  ``--rounds`` each); ``per_query_faiss_m64``: the previous path (FAISS's scan, one query at
  a time, 64 queries) for comparison; ``equal_to_per_query``: the batched ids and scores equal
  the one-query path's.
- ``truth``: exact top-100 of ``--queries`` generator queries over the whole ``--n`` set (the
  streaming exact path), cached beside the data for ``ann``.
- ``ann``: the compressed index with exact re-scoring (``ShardGroup(kind="ann")``, built once
  and stored in the index; ``build_s`` when built in this run) answering the ``truth``
  queries one at a time: latency p50 / p99 (ms, the whole group search: list scan, candidate
  reads by row from the shards, exact re-scoring, order), ``recall_at_10`` against the exact
  top 10, and the process's peak RSS (ru_maxrss) and current RSS; ``page_cache``: the share of
  the vectors' pages resident in memory before the timed queries (mincore; most candidate
  reads go to the disk when low).
- ``e2e``: at ``--n`` (1e6): one query through ``Searcher.search_vectors`` (dense search in
  process, candidates re-scored, ids, snippets and ranks read by row) against the bare FAISS
  scan of the same vectors (an ``IndexScalarQuantizer`` SQfp16, one query), interleaved;
  ``ratio`` = median end-to-end / median bare scan (target <= 1.2). The query's encoding is
  not included (the synthetic index has no model; ``timings_ms`` of a real query shows it).
- ``rows``: the candidate reads of ``ann`` alone: ``--queries`` sets of ``--candidates``
  random rows read by row with 4, 8 and 16 reads in flight, page cache dropped first (as root)
  and then cached; median ms per set.
- ``documents``: GET /documents/{id} through the HTTP server (the FastAPI app over a
  ``Searcher`` of the ``--n`` set, uvicorn on 127.0.0.1 in this process), ``--requests``
  random ids one after the other: p50 / p99 ms (target p50 <= 10 ms at 1e7).
- ``startup``: loading an exact in-memory group of the ``--n`` set (every vector read once,
  checked against its checksum, into the FAISS codes): seconds, stored bytes / s, and
  ``rchar`` / ``read_bytes`` (this process's bytes read through syscalls / from the device,
  /proc/self/io) over the vector bytes; ``cold`` after dropping the set's pages from the page
  cache (posix_fadvise DONTNEED), ``warm`` right after; against the memory read bandwidth
  (bench/search.py's) and the disk's sequential read rate (a cold read of the largest chunk
  files) measured in the same run.
- ``real``: recall@10 of the compressed ANN (default settings, exact re-scoring) against exact
  search on a real TrackStar index (``--index``: e.g. all of lama-trex's sentences and the
  FewRel distractors, ~70k texts, /work/artifacts/real70k), for ``--queries`` query vectors
  encoded by the index's own model from corpus texts (prompt: a text but its last word,
  target: the last word; seeded sample).
- ``small``: ``tda search`` once on the demo index (wall time of the whole process, median of
  ``--rounds``) and ``tda.Searcher(index)`` open (median of ``--rounds``, fresh process each;
  the query model goes on loading after it returns), interleaved round by round with
  ``model_load_floor``: a process that only imports torch and transformers and loads the
  index's model (``AutoModelForCausalLM`` and its tokenizer), which any query vector needs; its
  ratio to ``tda search`` says how much of the wall time tda adds on this machine, as it runs
  (``import_torch_s``: a process that only imports torch).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda import __version__  # noqa: E402
from tda.errors import SchemaVersionMismatch  # noqa: E402
from tda.schemas.config import TrackStarConfig  # noqa: E402
from tda.schemas.corpus import CorpusOptions  # noqa: E402
from tda.schemas.index import (CorpusRecord, EngineRecord, Layout, Manifest,  # noqa: E402
                               ModelRecord)
from tda.store.index import IndexStore, ShardRows  # noqa: E402
from tda.store.layout import shard_name  # noqa: E402

RESULTS = common.REPO / "bench" / "results"
DATA_DIR = Path(os.environ.get("TDA_SCALE_DIR", "/work/artifacts/scale"))


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Clustered:
    """The synthetic generator (see the module docstring); deterministic per shard."""

    def __init__(self, d: int = 1024, topics: int = 2000, family_size: float = 6.0,
                 beta: float = 1.0, sigma: float = 1.0, seed: int = 0):
        self.d, self.family_size, self.beta, self.sigma, self.seed = \
            d, family_size, beta, sigma, seed
        self.topics = unit(np.random.default_rng([seed, 1]).standard_normal(
            (topics, d), dtype=np.float32))

    def config(self) -> dict:
        return {"synthetic": "clustered-families", "d": self.d, "topics": len(self.topics),
                "family_size": self.family_size, "beta": self.beta, "sigma": self.sigma,
                "seed": self.seed}

    def families(self, shard: int, rows: int):
        """The families of one shard: sizes [f] (summing to ``rows``), topics [f], unit
        directions [f, d]."""
        rng = np.random.default_rng([self.seed, 2, shard])
        sizes = rng.geometric(1.0 / self.family_size, size=rows)
        ends = np.cumsum(sizes)
        f = int(np.searchsorted(ends, rows)) + 1
        sizes = sizes[:f].copy()
        sizes[-1] -= int(ends[f - 1] - rows)
        topics = rng.integers(0, len(self.topics), f)
        directions = unit(rng.standard_normal((f, self.d), dtype=np.float32))
        return sizes, topics, directions

    def _mix(self, topics, directions, rng) -> np.ndarray:
        g = rng.standard_normal(directions.shape, dtype=np.float32)
        return unit(self.topics[topics] + self.beta * directions
                    + self.sigma * g / np.sqrt(self.d, dtype=np.float32))

    def shard(self, shard: int, rows: int):
        """(vectors [rows, d] float32, family of each row [rows])."""
        sizes, topics, directions = self.families(shard, rows)
        family = np.repeat(np.arange(len(sizes)), sizes)
        rng = np.random.default_rng([self.seed, 3, shard])
        return self._mix(topics[family], directions[family], rng), family

    def queries(self, m: int, n_shards: int, shard_rows, seed: int = 7) -> np.ndarray:
        """[m, d] float32: each from a random family of a random shard, fresh noise."""
        rng = np.random.default_rng([self.seed, 4, seed])
        out = np.empty((m, self.d), np.float32)
        for i in range(m):
            s = int(rng.integers(n_shards))
            sizes, topics, directions = self.families(s, shard_rows(s))
            j = int(rng.integers(len(sizes)))
            out[i] = self._mix(topics[j:j + 1], directions[j:j + 1], rng)[0]
        return out


def real_texts() -> list[str]:
    """Real sentences to recycle as texts: the real70k corpus when present, else LAMA."""
    corpus = Path("/work/artifacts/real70k/corpus.jsonl")
    if corpus.is_file():
        with corpus.open() as f:
            return [json.loads(line)["text"] for line in f]
    return common.sentences(60_000)


def data_path(gen: Clustered, n: int, shard_size: int, data_dir: Path) -> Path:
    c = gen.config()
    return data_dir / (f"clustered-n{n}-d{c['d']}-t{c['topics']}-f{c['family_size']:g}"
                       f"-b{c['beta']:g}-s{c['sigma']:g}-seed{c['seed']}-sh{shard_size}")


def manifest_for(gen: Clustered, n: int, shard_size: int) -> Manifest:
    return Manifest(
        model=ModelRecord(path="synthetic", fingerprint="synthetic", architecture="none",
                          tokenizer="none"),
        engine=EngineRecord(config=TrackStarConfig(correction="none"), dim=gen.d, tracked=(),
                            second_moments=None),
        corpus=CorpusRecord(files=(), options=CorpusOptions(), documents=n),
        layout=Layout(shard_size=shard_size, storage_dtype="float16", vector_codec="raw"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__, extra={"synthetic": gen.config()})


def _typed_manifest(path: Path, gen: Clustered, n: int, shard_size: int) -> None:
    """A data set written before the manifest was typed (its synthetic settings inside the
    engine config) gets the typed manifest of the same set; its shards are unchanged."""
    import zarr
    from tda.store.layout import MANIFEST_KEY
    try:
        IndexStore.open(path)
    except SchemaVersionMismatch:
        log(f"{path.name}: rewriting the manifest as typed records (shards unchanged)")
        zarr.open_group(str(path), mode="r+").attrs[MANIFEST_KEY] = \
            manifest_for(gen, n, shard_size).to_dict()


def write_data(gen: Clustered, n: int, shard_size: int, data_dir: Path,
               limit_s: float | None = None) -> dict:
    """Write (or finish) the synthetic index; returns what was done."""
    path = data_path(gen, n, shard_size, data_dir)
    n_shards = -(-n // shard_size)
    if (path / "zarr.json").is_file():
        _typed_manifest(path, gen, n, shard_size)
        store = IndexStore.open(path, mode="r+")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = IndexStore.create(path, manifest_for(gen, n, shard_size))
    done = store.complete_shards()
    texts = real_texts()
    start = time.perf_counter()
    written = 0
    for s in range(n_shards):
        if s in done:
            continue
        if limit_s is not None and time.perf_counter() - start > limit_s:
            break
        rows = min(shard_size, n - s * shard_size)
        vectors, family = gen.shard(s, rows)
        first = np.flatnonzero(np.r_[True, family[1:] != family[:-1]])
        within = np.arange(rows) - np.repeat(first, np.diff(np.r_[first, rows]))
        doc_ids = [f"s{s:06d}f{f:04d}" for f in family.tolist()]
        ids = [f"{d}#{k}" for d, k in zip(doc_ids, within.tolist())]
        base = s * shard_size
        row_texts = [texts[(base + i) % len(texts)] for i in range(rows)]
        n_tokens = np.array([len(t.split()) * 4 // 3 + 1 for t in row_texts], np.int32)
        store.write_shard(s, ShardRows(vectors=vectors, ids=ids, doc_ids=doc_ids,
                                       texts=row_texts, n_tokens=n_tokens,
                                       loss=(n_tokens * 2.5).astype(np.float32),
                                       norm=np.ones(rows, np.float32)))
        written += 1
        if written % 50 == 0:
            el = time.perf_counter() - start
            log(f"{path.name}: {len(done) + written}/{n_shards} shards, "
                f"{el / written:.2f} s/shard")
    complete = len(store.complete_shards())
    return {"path": str(path), "shards": n_shards, "complete": complete,
            "written_now": written, "seconds": round(time.perf_counter() - start, 1),
            "bytes_on_disk": _du(path) if complete == n_shards else None}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def open_data(gen: Clustered, n: int, shard_size: int, data_dir: Path) -> IndexStore:
    path = data_path(gen, n, shard_size, data_dir)
    store = IndexStore.open(path)
    if len(store.complete_shards()) != -(-n // shard_size):
        raise SystemExit(f"{path}: unfinished; run `python bench/scale.py data --n {n}` first")
    return store


# ----------------------------------------------------------------------------- measures
def machine() -> dict:
    import faiss
    return {"cpus": os.cpu_count(), "faiss": faiss.__version__,
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "mem_available_gib": round(_meminfo("MemAvailable") / 2**20, 1)}


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _io() -> dict:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def square_gflops() -> dict:
    """One 2048^3 float32 product in numpy and in torch: {name: seconds-callable}."""
    import torch
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    ta = torch.from_numpy(a)
    return {"numpy_2048": lambda: a @ a, "torch_2048": lambda: ta @ ta}


SQUARE_FLOP = 2 * 2048 ** 3


def flops_of(best: dict) -> dict:
    rates = {k: round(SQUARE_FLOP / best[k] / 1e9, 1) for k in ("numpy_2048", "torch_2048")}
    return {**{f"{k}_gflop_s": v for k, v in rates.items()}, "gflop_s": max(rates.values())}


def section_flops(args) -> dict:
    fns = square_gflops()
    for fn in fns.values():
        fn()
    return flops_of(common.interleaved(fns, args.rounds))


def _group(store, kind="exact", **kw):
    from tda.searcher.dense import ShardGroup
    return ShardGroup(store.url, sorted(store.complete_shards()), kind, **kw)


def _queries(gen: Clustered, store: IndexStore, m: int, seed: int = 7) -> np.ndarray:
    rows = store.complete_shards()
    return gen.queries(m, len(rows), lambda s: rows[s], seed=seed)


def section_batched(args) -> dict:
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    d = gen.d
    log(f"batched: loading {args.n} vectors")
    group, load_s = _timed(lambda: _group(store, memory_budget=64 << 30))
    ms = (1, 8, 64, 512)
    q = _queries(gen, store, max(ms))
    fns = {f"m{m}": (lambda m=m: group.search(q[:m], 10)) for m in ms}
    fns["per_query_faiss_m64"] = lambda: [group.search(q[i:i + 1], 10) for i in range(64)]
    fns.update(square_gflops())
    for name, fn in fns.items():                       # warm up
        if name != "per_query_faiss_m64":
            fn()
    best = common.interleaved(fns, args.rounds)
    flops = flops_of(best)
    out = {"n": args.n, "d": d, "k": 10, "load_s": round(load_s, 1), "flops": flops}
    for m in ms:
        t = best[f"m{m}"]
        gf = 2 * m * args.n * d / t / 1e9
        out[f"m{m}"] = {"seconds": round(t, 3), "queries_per_s": round(m / t, 1),
                        "gflop_s": round(gf, 1), "flop_ratio": round(gf / flops["gflop_s"], 3)}
    t = best["per_query_faiss_m64"]
    out["per_query_faiss_m64"] = {"seconds": round(t, 2), "queries_per_s": round(64 / t, 1)}
    out["m64_speedup_over_per_query"] = round(t / best["m64"], 2)
    per = [group.search(q[i:i + 1], 10) for i in range(64)]
    batch = group.search(q[:64], 10)
    out["equal_to_per_query"] = bool(
        all((batch.shards[i] == per[i].shards[0]).all() and (batch.rows[i] == per[i].rows[0]).all()
            and (batch.scores[i] == per[i].scores[0]).all() for i in range(64)))
    out["target"] = {"m64_flop_ratio": ">= 0.6", "met": out["m64"]["flop_ratio"] >= 0.6}
    return out


def truth_path(args) -> Path:
    gen = generator(args)
    return data_path(gen, args.n, args.shard_size, args.data_dir) / f"truth-q{args.queries}.npz"


def section_truth(args) -> dict:
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    q = _queries(gen, store, args.queries)
    log(f"truth: exact top 100 of {args.queries} queries over {args.n} (streaming)")
    group = _group(store, "stream")
    res, seconds = _timed(lambda: group.search(q, 100))
    np.savez(truth_path(args), queries=q, scores=res.scores, shards=res.shards, rows=res.rows)
    top = res.scores
    return {"n": args.n, "queries": args.queries, "seconds": round(seconds, 1),
            "score_profile": {f"top{r}": round(float(np.median(top[:, r - 1])), 4)
                              for r in (1, 10, 100)}}


def _resident_share(store: IndexStore, shards: list[int]) -> float:
    """Share of the pages of some shards' vector chunk files resident in the page cache."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    total = resident = 0
    for s in shards:
        for f in (Path(store.url) / "shards" / shard_name(s) / "vectors" / "c").rglob("*"):
            size = f.stat().st_size if f.is_file() else 0
            if not size:
                continue
            pages = -(-size // mmap.PAGESIZE)
            vec = (ctypes.c_ubyte * pages)()
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
            buf = np.frombuffer(mm, dtype=np.uint8)
            libc.mincore(ctypes.c_void_p(buf.ctypes.data), ctypes.c_size_t(size), vec)
            resident += sum(b & 1 for b in vec)
            total += pages
            del buf
            mm.close()
    return round(resident / max(total, 1), 3)


def section_ann(args) -> dict:
    import dataclasses

    from tda.schemas.options import AnnOptions
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    truth = np.load(truth_path(args))
    q = truth["queries"]
    settings = AnnOptions(candidates=args.candidates, scan=args.scan)
    log("ann: opening (builds and stores the compressed index the first time)")
    rss0 = _rss_mb()
    group, open_s = _timed(lambda: _group(store, "ann", ann=settings))
    out = {"n": args.n, "d": gen.d, "k": 10,
           "settings": dataclasses.asdict(group.ann.settings),
           "open_s": round(open_s, 1), "built_in_this_run": not group.ann.loaded_from_disk,
           "build_s": round(group.ann.built_s, 1),
           "codes_mb": round(group.ann.memory_bytes / 2**20),
           "rss_before_open_mb": round(rss0)}
    shards = sorted(store.complete_shards())
    out["page_cache"] = _resident_share(store, shards[::max(1, len(shards) // 50)])
    group.search(q[:2], 10)                                    # warm up
    lat, hits = [], []
    for i in range(len(q)):
        res, t = _timed(lambda i=i: group.search(q[i:i + 1], 10))
        lat.append(t)
        hits.append(set(zip(res.shards[0].tolist(), res.rows[0].tolist())))
    want = [set(zip(a[:10].tolist(), b[:10].tolist())) for a, b in
            zip(truth["shards"], truth["rows"])]
    recall = float(np.mean([len(h & w) / 10 for h, w in zip(hits, want)]))
    ms = np.array(lat) * 1e3
    out.update({"queries": len(q), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "mean_ms": round(float(ms.mean()), 1), "recall_at_10": round(recall, 4),
                "rss_mb": round(_rss_mb()), "peak_rss_mb": round(common.peak_rss_mb())})
    out["target"] = {"p50_ms": "<= 100", "recall_at_10": ">= 0.95", "peak_rss_gb": "< 12",
                     "met": out["p50_ms"] <= 100 and recall >= 0.95
                     and out["peak_rss_mb"] < 12 * 1024}
    return out


def section_e2e(args) -> dict:
    import faiss

    from tda.searcher.searcher import Searcher
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    q = _queries(gen, store, 50, seed=11)
    log("e2e: opening the searcher and the bare FAISS index")
    searcher = Searcher(store.url, load_model=False, memory_budget_gb=64)
    bare = faiss.IndexScalarQuantizer(gen.d, faiss.ScalarQuantizer.QT_fp16,
                                      faiss.METRIC_INNER_PRODUCT)
    for s in sorted(store.complete_shards()):
        bare.add(store.read_shard(s, ("vectors",))["vectors"])
    threads = faiss.omp_get_max_threads()

    def bare_scan(i, omp):
        faiss.omp_set_num_threads(omp)
        try:
            return bare.search(q[i:i + 1], 10)
        finally:
            faiss.omp_set_num_threads(threads)
    times = {"searcher": [], "bare_faiss_1_thread": [], "bare_faiss_all_threads": []}
    same = True
    for i in range(len(q)):                                     # interleaved per query
        hits, t = _timed(lambda: searcher.search_vectors(q[i:i + 1], 10)[0])
        times["searcher"].append(t)
        (_, idx), t = _timed(lambda: bare_scan(i, 1))
        times["bare_faiss_1_thread"].append(t)
        _, t = _timed(lambda: bare_scan(i, threads))
        times["bare_faiss_all_threads"].append(t)
        same &= len(hits) == 10
    med = {k: float(np.median(v[1:])) * 1e3 for k, v in times.items()}
    bare_best = min(med["bare_faiss_1_thread"], med["bare_faiss_all_threads"])
    out = {"n": args.n, "d": gen.d, "k": 10, "queries": len(q) - 1,
           "plan": vars(searcher.dense.plan), "median_ms": {k: round(v, 2) for k, v in med.items()},
           "ratio": round(med["searcher"] / bare_best, 3), "ten_hits_each": bool(same)}
    out["target"] = {"ratio": "<= 1.2", "met": out["ratio"] <= 1.2}
    searcher.close()
    return out


def section_rows(args) -> dict:
    """Candidate reads alone: ``--queries`` sets of ``--candidates`` random (shard, row)
    locations read by row (``searcher.rows.read_vectors``) with 4, 8 and 16 reads in flight
    (``READ_THREADS``), each first with the page cache dropped (as root; else as it is) and
    then again from the cache; median ms per set."""
    from concurrent.futures import ThreadPoolExecutor

    import tda.searcher.rows as rows_mod
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    counts = store.complete_shards()
    shards = np.array(sorted(counts))
    pool = ThreadPoolExecutor(16)
    out = {"candidates": args.candidates, "sets": args.queries, "threads": {}}
    for threads in (4, 8, 16):
        rng = np.random.default_rng(threads)
        sets = []
        for _ in range(args.queries):
            s = rng.choice(shards, args.candidates)
            sets.append(np.stack([s, (rng.random(len(s)) * [counts[x] for x in s]).astype(
                np.int64)], axis=1))
        dropped = _drop_page_cache()
        rows_mod.READ_THREADS = threads
        times = {}
        for state in ("cold", "cached"):
            ts = []
            for locs in sets:
                _, t = _timed(lambda locs=locs: rows_mod.read_vectors(store, locs, None, pool))
                ts.append(t * 1e3)
            times[state] = round(float(np.median(ts)), 1)
        out["threads"][str(threads)] = {**times, "page_cache_dropped": dropped}
    return out


def _drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def section_documents(args) -> dict:
    import threading as th

    from urllib.parse import quote

    import httpx
    import uvicorn

    from tda.store.rowtable import write_row_table
    from tda.searcher.searcher import Searcher
    from tda.searcher.server import create_app
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    if (Path(store.url) / "rows" / "zarr.json").is_file() is False:
        log("documents: writing the id table (what `tda index` does at the end of a build)")
        write_row_table(IndexStore.open(store.url, mode="r+"))
    searcher, open_s = _timed(lambda: Searcher(store.url, load_model=False,
                                                        faiss_index=args.kind))
    table, table_s = _timed(lambda: searcher.rows.table)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(searcher), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = th.Thread(target=server.run, daemon=True)
    thread.start()
    rng = np.random.default_rng(3)
    rows = store.complete_shards()
    picks = [(int(s), int(rng.integers(rows[int(s)]))) for s in
             rng.integers(0, len(rows), args.requests)]
    ids = [searcher.rows.fields([p], ("ids",))[0]["ids"] for p in picks]
    searcher.rows.cache = type(searcher.rows.cache)(searcher.rows.cache.max_bytes)   # cold
    lat, errors = [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        while True:
            try:
                if c.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for i in ids:
            r, t = _timed(lambda i=i: c.get(f"/documents/{quote(i, safe='')}"))
            lat.append(t)
            errors += r.status_code != 200 or r.json()["id"] != i
    server.should_exit = True
    thread.join(timeout=30)
    ms = np.array(lat) * 1e3
    out = {"n": args.n, "requests": len(ids), "errors": int(errors),
           "p50_ms": round(float(np.percentile(ms, 50)), 2),
           "p99_ms": round(float(np.percentile(ms, 99)), 2),
           "searcher_open_s": round(open_s, 1), "id_table_load_s": round(table_s, 2),
           "id_table_mb": round(table.nbytes / 2**20), "peak_rss_mb": round(common.peak_rss_mb())}
    out["target"] = {"p50_ms": "<= 10", "met": out["p50_ms"] <= 10 and not errors}
    searcher.close()
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drop_cache(path: Path) -> None:
    """Drop ``path``'s files (a file, or every file under a directory) from the page cache."""
    for f in ([path] if path.is_file() else path.rglob("*")):
        if f.is_file():
            _fadvise_dontneed(f)


def _disk_read_rate(store: IndexStore, shards: list[int]) -> float:
    """GB/s of a cold sequential read of some shards' vector chunk files."""
    files = [f for s in shards for f in (Path(store.url) / "shards" / shard_name(s) /
                                         "vectors" / "c").rglob("*") if f.is_file()]
    for f in files:
        _fadvise_dontneed(f)
    start, n = time.perf_counter(), 0
    for f in files:
        n += len(f.read_bytes())
    return n / (time.perf_counter() - start) / 1e9


def _fadvise_dontneed(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def section_startup(args) -> dict:
    import search as search_bench
    gen = generator(args)
    store = open_data(gen, args.n, args.shard_size, args.data_dir)
    shards = sorted(store.complete_shards())
    vector_bytes = args.n * gen.d * 2
    out = {"n": args.n, "d": gen.d, "vector_bytes": vector_bytes, "machine": machine()}
    out["memory_bandwidth"] = search_bench.measure_bandwidth(args.bandwidth_gib)
    out["disk_sequential_gb_s"] = round(_disk_read_rate(store, shards[-8:]), 3)
    for state in ("cold", "warm"):
        if state == "cold":
            _drop_cache(Path(store.url))
        io0 = _io()
        group, seconds = _timed(lambda: _group(store, memory_budget=64 << 30))
        io1 = _io()
        rate = vector_bytes / seconds / 1e9
        out[state] = {"seconds": round(seconds, 2), "gb_s": round(rate, 2),
                      "rchar_over_vector_bytes": round((io1["rchar"] - io0["rchar"]) /
                                                       vector_bytes, 3),
                      "read_bytes_over_vector_bytes": round(
                          (io1["read_bytes"] - io0["read_bytes"]) / vector_bytes, 3),
                      "share_of_memory_bandwidth": round(
                          rate / out["memory_bandwidth"]["read_gb_s"], 3),
                      "share_of_disk_sequential": round(rate / out["disk_sequential_gb_s"], 3)}
        del group
    return out


def section_real(args) -> dict:
    import dataclasses

    from tda.schemas.options import AnnOptions
    from tda.searcher.encoder import QueryEncoder
    from tda.searcher.dense import ShardGroup
    if not args.index:
        raise SystemExit("real: give --index (a TrackStar index built with a model)")
    store = IndexStore.open(args.index)
    shards = sorted(store.complete_shards())
    rng = np.random.default_rng(5)
    picks = sorted(rng.choice(len(shards), min(len(shards), 8), replace=False).tolist())
    texts = [t for s in picks for t in store.read_shard(shards[s], ("text",))["text"].tolist()]
    texts = [t.split() for t in rng.choice(texts, args.queries, replace=False).tolist()]
    pairs = [(" ".join(w[:-1]), " " + w[-1]) for w in texts if len(w) > 2]
    log(f"real: encoding {len(pairs)} queries with the index's model")
    q = QueryEncoder(store).encode(pairs)
    exact, exact_s = _timed(lambda: ShardGroup(store.url, shards, "exact",
                                               memory_budget=64 << 30))
    want = exact.search(q, 10)
    ann, ann_s = _timed(lambda: ShardGroup(store.url, shards, "ann",
                                           ann=AnnOptions(candidates=args.candidates,
                                                          scan=args.scan), persist=False))
    got = ann.search(q, 10)
    key = lambda s, r: set(zip(s.tolist(), r.tolist()))  # noqa: E731
    recall = float(np.mean([len(key(a, b) & key(c, d)) / 10 for a, b, c, d in
                            zip(got.shards, got.rows, want.shards, want.rows)]))
    out = {"index": args.index, "n": exact.n, "d": exact.dim, "queries": len(pairs),
           "settings": dataclasses.asdict(ann.ann.settings), "recall_at_10": round(recall, 4),
           "exact_load_s": round(exact_s, 1), "ann_build_s": round(ann_s, 1)}
    out["target"] = {"recall_at_10": ">= 0.95", "met": recall >= 0.95}
    return out


def section_small(args) -> dict:
    import statistics
    import subprocess
    index = Path(args.demo_index)
    if not (index / "zarr.json").is_file():
        raise SystemExit(f"{index}: no demo index; run `tda demo` first (or pass --demo-index)")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    cmd = ["tda", "search", "Allan Peiper was born in", "--target", " Alexandra", "--index",
           str(index), "--json"]
    opener = ("import time, sys; t = time.perf_counter(); import tda; "
              f"s = tda.Searcher({str(index)!r}); "
              "print(time.perf_counter() - t); s.close()")
    from tda.store.index import IndexStore
    model = IndexStore.open(str(index)).manifest.model.path
    floor = [sys.executable, "-c",
             "import torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
             f"AutoModelForCausalLM.from_pretrained({model!r}); "
             f"AutoTokenizer.from_pretrained({model!r})"]
    torch_only = [sys.executable, "-c", "import torch"]
    search_s, open_s, floor_s, torch_s = [], [], [], []
    for _ in range(args.rounds):
        _, t = _timed(lambda: subprocess.run(cmd, check=True, env=env, capture_output=True))
        search_s.append(t)
        res = subprocess.run([sys.executable, "-c", opener], check=True, env=env,
                             capture_output=True, text=True)
        open_s.append(float(res.stdout.strip().splitlines()[-1]))
        _, t = _timed(lambda: subprocess.run(floor, check=True, env=env, capture_output=True))
        floor_s.append(t)
        _, t = _timed(lambda: subprocess.run(torch_only, check=True, env=env,
                                             capture_output=True))
        torch_s.append(t)
    med = statistics.median
    out = {"index": str(index), "tda_search_wall_s": [round(t, 2) for t in search_s],
           "searcher_open_s": [round(t, 2) for t in open_s],
           "model_load_floor_s": [round(t, 2) for t in floor_s],
           "tda_search_median_s": round(med(search_s), 2),
           "searcher_open_median_s": round(med(open_s), 2),
           "model_load_floor_median_s": round(med(floor_s), 2),
           "import_torch_s": [round(t, 2) for t in torch_s],
           "tda_search_over_floor": round(med(s / f for s, f in zip(search_s, floor_s)), 3),
           "machine": machine()}
    out["target"] = {"tda_search_s": "<= 5", "searcher_open_s": "<= 3",
                     "met": out["tda_search_median_s"] <= 5 and out["searcher_open_median_s"] <= 3}
    return out


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- main
def add_data_args(ap: argparse.ArgumentParser) -> None:
    ints = lambda s: int(float(s))   # noqa: E731
    ap.add_argument("--n", type=ints, default=10_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--family-size", type=float, default=6.0,
                    help="mean family size (LAMA T-REx: 5.8 evidence sentences per fact)")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)


def generator(args) -> Clustered:
    return Clustered(args.dim, args.topics, args.family_size, args.beta, args.sigma, args.seed)


SECTIONS = {"flops": section_flops, "batched": section_batched, "truth": section_truth,
            "ann": section_ann, "e2e": section_e2e, "documents": section_documents,
            "startup": section_startup, "real": section_real, "small": section_small,
            "rows": section_rows}


def main() -> None:
    from tda.log import setup_cli
    setup_cli()                      # the library's progress lines (ANN build) on stderr
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    p = sub.add_parser("data", help="write the synthetic index (resumable)")
    add_data_args(p)
    p.add_argument("--limit-s", type=float, default=None, help="stop after this long")
    p.add_argument("--out", default=None)
    for name in SECTIONS:
        p = sub.add_parser(name)
        add_data_args(p)
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--queries", type=int, default=200)
        p.add_argument("--candidates", type=int, default=1000)
        p.add_argument("--scan", type=int, default=65536)
        p.add_argument("--requests", type=int, default=500)
        p.add_argument("--kind", default="auto")
        p.add_argument("--bandwidth-gib", type=float, default=2.0)
        p.add_argument("--demo-index", default=None)
        p.add_argument("--index", default=None, help="real: a TrackStar index")
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    start = time.perf_counter()
    if args.section == "data":
        result = write_data(generator(args), args.n, args.shard_size, args.data_dir,
                            args.limit_s)
    else:
        result = {"section": args.section, "machine_start": machine(),
                  **SECTIONS[args.section](args)}
        result["machine_end"] = machine()
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    tag = "" if args.section in ("small", "flops", "real") else f"-n{args.n:.0e}".replace("+0", "")
    common.emit(result, args.out or str(RESULTS / f"scale-{args.section}{tag}.json"))


if __name__ == "__main__":
    main()
