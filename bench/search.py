"""Dense search speed vs this machine's memory bandwidth, approximate search speed/recall, and
the HTTP server under concurrent clients.

Prints JSON. Every ratio is taken between figures measured in this one run (the machine is
shared and noisy); timings are the best of ``--rounds`` interleaved rounds (each round runs
every timed function once, in turn, so slow spells hit all of them).

- ``bandwidth``: the machine's sustained read bandwidth, STREAM-style: the sum of a
  ``--bandwidth-gib`` GiB float32 numpy array (pages touched beforehand), as 1 thread summing it
  all and as 2 threads each summing one half (numpy releases the GIL). Bytes read / seconds;
  best of 3. ``read_gb_s`` (the larger of the two) is the denominator of the ratios below.
  ``machine.load_avg_1min_*``: the 1-minute load average at the start and end (other work).
- ``exact``: synthetic indexes of n random unit vectors (d = ``--dim``, Gaussian rows
  normalized) written in the tda index format (Zarr shards of ``--shard-size`` rows, float16,
  through ``IndexStore.create`` / ``write_shard``; cached in .cache/bench), searched with the
  product's code: ``ShardGroup(faiss_index="exact")`` in this process over all shards
  (``single_process``) and ``DenseSearch(workers=2)``, the dask fan-out (``fanout``), k = 10.
  Queries are random unit vectors. For m queries in one call (m = 1 and ``--batch``):
  ``latency_ms`` the call's wall time, ``queries_per_s`` = m / time and
  ``bandwidth_ratio`` = m * n * d * 2 bytes / time / read bandwidth, i.e. each query's pass over
  the stored float16 vectors counted once. For m = 1 this is exactly "bytes scanned / time /
  bandwidth" (the target: >= 0.3 at 1e6); for a batch it can exceed 1 when a pass over the
  vectors serves several queries from cache. ``bandwidth_ratio_one_core``: the same over the
  1-thread bandwidth (FAISS parallelizes a search over queries, so one query in one process
  scans on one core; dask workers run FAISS single-threaded, OMP_NUM_THREADS=1, so the
  fan-out's parallelism for one query is its number of workers). ``load_s``: opening the index
  and building the in-memory search structures. ``equal_to_brute_force``: the single-process
  ids equal a numpy float32 brute force of the stored vectors for the batch (checked up to 1e5
  rows), ``fanout_equals_single_process`` the fan-out's ids equal the single process's.
  ``target``: the m = 1 ratios at the largest n against the 0.3 target.
- ``approximate``: ``ShardGroup(faiss_index="hnsw")`` (HNSW32 over SQfp16, efSearch 64) and
  ``ShardGroup(faiss_index="ivfpq")`` (IVF 4 sqrt(n) lists, PQ d/16 x 8 bits, nprobe 16) against
  ``faiss_index="exact"`` on the same index, timed interleaved with it: ``speedup`` = exact time /
  approximate time for the same m, ``recall_at_10`` = mean over the batch's queries of
  |approximate top 10 and exact top 10| / 10, ``build_s`` the build (train + add) time. On two
  data sets: ``uniform`` (the exact section's random unit vectors, the hardest case for any ANN
  index: no structure) and ``clustered`` (unit vectors around ``--centers`` random unit centers,
  x = normalize(c + noise * g / sqrt(d)), g standard normal, queries drawn the same way).
  A size whose build would take longer than ``--approx-build-budget-s`` (extrapolated from the
  previous size: HNSW ~ n log n, IVF-PQ training and assignment ~ n * lists) is skipped and the
  JSON says so and why.
- ``server``: `tda serve INDEX --workers 1` (a subprocess) on a real index of
  ``--server-sentences`` LAMA sentences featurized with a small GPT-2 trained on them (cached);
  ``--server-clients`` threads, each with its own httpx client, POST /search (mode "both":
  TrackStar + BM25 + fused, k = 10) ``--server-requests`` requests in all, prompts and targets
  from the corpus (a sentence's last word as target). ``p50_ms``/``p99_ms`` per-request wall
  time, ``requests_per_s`` = requests / wall time of the whole run, ``errors`` (non-200 or
  exceptions, must be 0). ``sequential`` is the same with one client, for reference.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda import __version__  # noqa: E402
from tda.schemas.config import TrackStarConfig  # noqa: E402
from tda.schemas.corpus import CorpusOptions  # noqa: E402
from tda.schemas.index import (CorpusRecord, EngineRecord, Layout, Manifest,  # noqa: E402
                               ModelRecord)
from tda.store.index import IndexStore, ShardRows  # noqa: E402
from tda.searcher.dense import ShardGroup, factory_string  # noqa: E402

K = 10


# ----------------------------------------------------------------------------- bandwidth
def measure_bandwidth(gib: float) -> dict:
    """Read bandwidth: numpy sum over a float32 array of ``gib`` GiB, 1 and 2 threads."""
    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)       # np.ones touches every page

    def run(threads: int) -> float:
        parts = np.array_split(a, threads)
        sums = [0.0] * threads

        def work(i):
            sums[i] = float(parts[i].sum())
        elapsed = common.run_threads([threading.Thread(target=work, args=(i,))
                                      for i in range(threads)])
        assert sum(sums) == a.size
        return elapsed

    run(1)                                                     # warm up
    best = common.interleaved({"1": lambda: run(1), "2": lambda: run(2)}, 3)
    out = {"array_gib": round(a.nbytes / 2**30, 2),
           "sum_1_thread_gb_s": round(a.nbytes / best["1"] / 1e9, 2),
           "sum_2_threads_gb_s": round(a.nbytes / best["2"] / 1e9, 2)}
    out["read_gb_s"] = max(out["sum_1_thread_gb_s"], out["sum_2_threads_gb_s"])
    return out                                                 # frees the array


# ----------------------------------------------------------------------------- synthetic data
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Synthetic:
    """Deterministic random unit vectors: 'uniform' or 'clustered' around fixed centers."""

    def __init__(self, kind: str, d: int, centers: int, noise: float, seed: int = 0):
        self.kind, self.d, self.noise, self.seed = kind, d, noise, seed
        self.centers = unit(np.random.default_rng([seed, 1]).standard_normal(
            (centers, d), dtype=np.float32)) if kind == "clustered" else None

    def rows(self, n: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, stream])
        g = rng.standard_normal((n, self.d), dtype=np.float32)
        if self.kind == "uniform":
            return unit(g)
        c = self.centers[rng.integers(0, len(self.centers), n)]
        return unit(c + self.noise * g / np.sqrt(self.d, dtype=np.float32))

    def queries(self, m: int) -> np.ndarray:
        return self.rows(m, stream=10**9)

    def config(self) -> dict:
        cfg = {"synthetic": self.kind, "seed": self.seed}
        if self.kind == "clustered":
            cfg.update(centers=len(self.centers), noise=self.noise)
        return cfg


def synthetic_index(data: Synthetic, n: int, shard_size: int) -> Path:
    """The tda index of n rows of ``data`` (built once, cached under .cache/bench)."""
    cfg = data.config()
    tag = "-".join(f"{v}" for k, v in cfg.items() if k != "synthetic")
    path = common.CACHE / "search" / f"{data.kind}-{tag}-n{n}-d{data.d}-s{shard_size}"
    n_shards = Layout(shard_size=shard_size, storage_dtype="float16").shard_count(n)
    if path.exists():
        try:
            store = IndexStore.open(path)
            done = store.complete_shards()
            if len(done) == n_shards and sum(done.values()) == n and _current(store):
                return path
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            pass
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model=ModelRecord(path="synthetic", fingerprint="synthetic", architecture="none",
                          tokenizer="none"),
        engine=EngineRecord(config=TrackStarConfig(), dim=data.d, tracked=(),
                            second_moments=None),
        corpus=CorpusRecord(files=(), options=CorpusOptions(), documents=n),
        layout=Layout(shard_size=shard_size, storage_dtype="float16"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__, extra={"synthetic": cfg})
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    store = IndexStore.create(tmp, manifest)
    start = time.perf_counter()
    for s in range(n_shards):
        rows = min(shard_size, n - s * shard_size)
        ids = [f"{data.kind[0]}{s * shard_size + i}" for i in range(rows)]
        store.write_shard(s, ShardRows(vectors=data.rows(rows, stream=s), ids=ids,
                                       doc_ids=ids, texts=[""] * rows,
                                       n_tokens=np.zeros(rows, np.int32),
                                       loss=np.zeros(rows, np.float32),
                                       norm=np.ones(rows, np.float32)))
    tmp.rename(path)
    log(f"wrote {path.name} in {time.perf_counter() - start:.0f} s")
    return path


def _current(store: IndexStore) -> bool:
    """A cached index's first shard matches its checksum as this tda computes it (a cache
    written by an older format is rebuilt)."""
    verify = getattr(store, "verify_shard", None)
    return verify is None or verify(min(store.complete_shards())) is None


def all_shards(index: Path) -> list[int]:
    return sorted(IndexStore.open(index).complete_shards())


def ids_of(res) -> np.ndarray:
    """[m, k] global row keys (shard, row) as one int64."""
    return res.shards * (1 << 32) + res.rows


def brute_force_ids(index: Path, q: np.ndarray, k: int) -> np.ndarray:
    store = IndexStore.open(index)
    shards = all_shards(index)
    parts_s, parts_i = [], []
    for s in shards:
        v = store.read_shard(s, ("vectors",))["vectors"]
        sc = q @ v.T
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        parts_s.append(np.take_along_axis(sc, top, 1))
        parts_i.append(s * (1 << 32) + top)
    sc, ii = np.concatenate(parts_s, 1), np.concatenate(parts_i, 1)
    order = np.lexsort((ii, -sc), axis=1)[:, :k]
    return np.take_along_axis(ii, order, 1)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def log(msg: str) -> None:
    print(f"[search bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- exact
def bench_exact(n: int, data: Synthetic, args, bw: dict) -> dict:
    from tda.searcher.fanout import DenseSearch
    index = synthetic_index(data, n, args.shard_size)
    shards = all_shards(index)
    q = data.queries(args.batch)
    log(f"exact search over {index.name}")
    group, load_sp = timed(lambda: ShardGroup(str(index), shards, faiss_index="exact"))
    fan, load_fan = timed(lambda: DenseSearch(str(index), workers=2))
    try:
        fns = {}
        for name, searcher in (("single_process", group), ("fanout", fan)):
            for m in (1, args.batch):
                fns[(name, m)] = (lambda s=searcher, m=m: s.search(q[:m], K))
        for fn in fns.values():                                 # warm up
            fn()
        best = common.interleaved(fns, args.rounds)
        out = {"n": n, "d": data.d, "shards": len(shards), "index": index.name,
               "bytes_scanned_per_query": n * data.d * 2, "streaming": group.streaming,
               "single_process": {"load_s": round(load_sp, 2)},
               "fanout": {"workers": 2, "load_s": round(load_fan, 2)}}
        for (name, m), t in best.items():
            rate = m * n * data.d * 2 / t / 1e9
            out[name][f"m{m}"] = {"latency_ms": round(t * 1e3, 3),
                                  "queries_per_s": round(m / t, 1),
                                  "bandwidth_ratio": round(rate / bw["read_gb_s"], 3),
                                  "bandwidth_ratio_one_core": round(
                                      rate / bw["sum_1_thread_gb_s"], 3)}
        got = ids_of(group.search(q, K))
        out["fanout_equals_single_process"] = bool((ids_of(fan.search(q, K)) == got).all())
        if n <= 100_000:
            out["equal_to_brute_force"] = bool((brute_force_ids(index, q, K) == got).all())
    finally:
        fan.close()
        del group
        gc.collect()
    return out


# ----------------------------------------------------------------------------- approximate
def build_estimate(kind: str, n_prev: int, t_prev: float, n: int, d: int) -> float:
    if kind == "hnsw":
        return t_prev * n * math.log(n) / (n_prev * math.log(n_prev))
    lists = lambda x: max(1, min(4096, int(4 * math.sqrt(x))))   # noqa: E731 - as dense.py
    return t_prev * (n * lists(n)) / (n_prev * lists(n_prev))


def bench_approximate(sizes: list[int], datasets: dict[str, Synthetic], args,
                      bw: dict) -> dict:
    out: dict = {}
    for dname, data in datasets.items():
        out[dname] = []
        prev: dict[str, tuple[int, float]] = {}
        for n in sizes:
            entry: dict = {"n": n, "d": data.d}
            kinds = []
            for kind in ("hnsw", "ivfpq"):
                est = build_estimate(kind, *prev[kind], n, data.d) if kind in prev else 0
                if est > args.approx_build_budget_s:
                    entry[kind] = {"skipped": f"estimated build {est:.0f} s (from "
                                              f"{prev[kind][1]:.0f} s at n={prev[kind][0]}) is "
                                              f"over --approx-build-budget-s "
                                              f"{args.approx_build_budget_s:.0f}"}
                else:
                    kinds.append(kind)
            if not kinds:
                out[dname].append(entry)
                continue
            index = synthetic_index(data, n, args.shard_size)
            shards = all_shards(index)
            q = data.queries(args.batch)
            entry["index"] = index.name
            exact, exact_load = timed(lambda: ShardGroup(str(index), shards, faiss_index="exact"))
            entry["exact_load_s"] = round(exact_load, 2)
            truth = ids_of(exact.search(q, K))
            groups = {}
            for kind in kinds:
                log(f"building {kind} over {index.name}")
                g, build = timed(lambda: ShardGroup(str(index), shards, faiss_index=kind))
                prev[kind] = (n, build)
                groups[kind] = g
                entry[kind] = {"factory": factory_string(kind, data.d, n, "float16"),
                               "build_s": round(build, 1),
                               "recall_at_10": round(recall(ids_of(g.search(q, K)), truth), 4)}
            fns = {(kind, m): (lambda s=s, m=m: s.search(q[:m], K))
                   for kind, s in [("exact", exact), *groups.items()]
                   for m in (1, args.batch)}
            for fn in fns.values():
                fn()
            best = common.interleaved(fns, args.rounds)
            for m in (1, args.batch):
                entry[f"exact_m{m}_ms"] = round(best[("exact", m)] * 1e3, 3)
                for kind in groups:
                    entry[kind][f"m{m}_ms"] = round(best[(kind, m)] * 1e3, 3)
                    entry[kind][f"speedup_m{m}"] = round(best[("exact", m)] / best[(kind, m)], 2)
            entry["exact_m1_bandwidth_ratio"] = round(
                n * data.d * 2 / best[("exact", 1)] / 1e9 / bw["read_gb_s"], 3)
            out[dname].append(entry)
            del exact, groups
            gc.collect()
    return out


# ----------------------------------------------------------------------------- server
def server_index(n: int) -> tuple[Path, list[str]]:
    """A real index: ``n`` LAMA sentences featurized with a tiny GPT-2 trained on them."""
    model = common.trained_model("gpt2tiny", "gpt2", "tiny", vocab=4096, n_train=n)
    texts = common.sentences(n)
    path = common.CACHE / "search" / f"server-gpt2tiny-{n}"
    try:
        store = IndexStore.open(path)
        ok = not store.unfinished_shards() \
            and (store.bm25_status or {}).get("complete") and _current(store)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus = common.write_corpus(path.with_name(path.name + ".jsonl"), texts)
        subprocess.run([sys.executable, "-m", "tda.cli", "index", "--model", str(model),
                        "--corpus", str(corpus), "--out", str(path), "--no-progress"],
                       check=True, env=_env(), stdout=subprocess.DEVNULL)
    return path, texts


def _env() -> dict:
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    e.pop("RANK", None), e.pop("WORLD_SIZE", None)
    return e


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, bodies: list[dict], clients: int, total: int) -> dict:
    """``total`` POST /search from ``clients`` threads, each with its own httpx client."""
    import httpx
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    r = c.post("/search", json=bodies[i % len(bodies)])
                    ok = r.status_code == 200 and len(r.json()["trackstar"]) == K
                    err = None if ok else f"{r.status_code}: {r.text[:200]}"
                except Exception as e:  # noqa: BLE001
                    err = repr(e)
                elapsed = time.perf_counter() - start
                with lock:
                    lat.append(elapsed)
                    if err:
                        errors.append(err)

    wall = common.run_threads([threading.Thread(target=client) for _ in range(clients)])
    ms = np.array(lat) * 1e3
    return {"clients": clients, "requests": total, "errors": len(errors),
            "error_examples": errors[:3], "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "mean_ms": round(float(ms.mean()), 1), "requests_per_s": round(total / wall, 2),
            "wall_s": round(wall, 2)}


def bench_server(args) -> dict:
    import httpx
    log("server")
    index, texts = server_index(args.server_sentences)
    bodies = []
    for t in texts[:100]:
        words = t.rstrip(" .").split(" ")
        if len(words) >= 3:
            bodies.append({"prompt": " ".join(words[:-1]), "target": " " + words[-1],
                           "k": K, "mode": "both"})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "tda.cli", "serve", str(index), "--port",
                             str(port), "--workers", "1"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        startup = common.wait_healthy(proc, url, proc.stderr.read)
        assert httpx.get(url + "/info", timeout=30).status_code == 200
        load(url, bodies, 2, 10)                                   # warm up
        seq = load(url, bodies, 1, max(20, args.server_requests // 8))
        conc = load(url, bodies, args.server_clients, args.server_requests)
    finally:
        common.stop_server(proc)
    return {"index": index.name, "examples": args.server_sentences,
            "dim": IndexStore.open(index).manifest.dim,
            "serve": "tda serve INDEX --workers 1", "startup_s": round(startup, 1),
            "request": {"k": K, "mode": "both"}, "concurrent": conc, "sequential": seq,
            "concurrent_vs_sequential_throughput": round(
                conc["requests_per_s"] / seq["requests_per_s"], 2)}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(float(x)) for x in s.split(",") if x]   # noqa: E731
    ap.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000],
                    help="exact-search index sizes (rows), comma-separated")
    ap.add_argument("--approx-sizes", type=ints, default=[100_000, 1_000_000],
                    help="approximate-search index sizes (empty: skip)")
    ap.add_argument("--approx-build-budget-s", type=float, default=300,
                    help="skip an approximate build estimated to take longer")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=4096,
                    help="rows per shard of the synthetic indexes (tda's default)")
    ap.add_argument("--batch", type=int, default=64, help="queries in the batched calls")
    ap.add_argument("--centers", type=int, default=2000, help="clusters of the clustered set")
    ap.add_argument("--noise", type=float, default=1.0,
                    help="clustered set: norm of the noise added to a center (~)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bandwidth-gib", type=float, default=4.0)
    ap.add_argument("--server", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--server-sentences", type=int, default=2000)
    ap.add_argument("--server-clients", type=int, default=8)
    ap.add_argument("--server-requests", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import faiss
    start = time.perf_counter()
    result: dict = {"machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__,
                                "faiss_omp_threads": faiss.omp_get_max_threads(),
                                "load_avg_1min_start": round(os.getloadavg()[0], 2)},
                    "k": K, "batch": args.batch}
    result["bandwidth"] = measure_bandwidth(args.bandwidth_gib)
    bw = result["bandwidth"]
    uniform = Synthetic("uniform", args.dim, args.centers, args.noise)
    result["exact"] = [bench_exact(n, uniform, args, bw) for n in args.sizes]
    big = [e for e in result["exact"] if e["n"] == max(args.sizes)][0]
    result["target"] = {"exact_m1_bandwidth_ratio_at_largest": ">= 0.3",
                        "largest_n": big["n"],
                        "single_process": big["single_process"]["m1"]["bandwidth_ratio"],
                        "fanout": big["fanout"]["m1"]["bandwidth_ratio"],
                        "met": min(big["single_process"]["m1"]["bandwidth_ratio"],
                                   big["fanout"]["m1"]["bandwidth_ratio"]) >= 0.3}
    if args.approx_sizes:
        result["approximate"] = bench_approximate(
            args.approx_sizes, {"uniform": uniform,
                                "clustered": Synthetic("clustered", args.dim, args.centers,
                                                       args.noise)}, args, bw)
    if args.server:
        result["server"] = bench_server(args)
    result["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
