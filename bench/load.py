"""Load test of `tda serve`: concurrent clients for a fixed time, zero errors, latency per
endpoint, throughput, and the server's memory before and after.

Prints JSON (``--out``: also writes it). Bounded in time and in count: the run ends after
``--seconds`` or ``--max-requests`` requests, whichever comes first; every request has a
timeout; the server listens on 127.0.0.1 only.

- Index and model: bench/search.py's server index (``--sentences`` LAMA sentences featurized
  with a small GPT-2 trained on them; cached in .cache/bench). ``tda serve INDEX --host
  127.0.0.1 --workers 1 --token T`` runs as a subprocess.
- Requests: ``--clients`` threads, each with its own keep-alive httpx client, take request
  numbers from one shared counter and send the request of that number in a fixed, seeded
  schedule: 75% POST /search, 15% GET /documents/{id}, 10% GET /health. Searches are real
  LAMA queries about indexed facts (the relation's LAMA template cut before [Y], [X] = the
  subject, target = " " + the object label; ``queries`` distinct ones, several relations),
  with mode trackstar / bm25 / both / fused, k in {1, 5, 10, 20, 50}, and in 10% of them no
  target (the server generates the model's continuation). Document ids are random corpus ids.
- A response counts as an error unless it is 200 and right: /search validates as a
  SearchResponse echoing the request, with exactly k TrackStar hits when that list is asked
  for and 1..k hits in the other lists asked for; /documents returns that id with the corpus
  text; /health says ok. Exceptions (timeouts, dropped connections) are errors too.
- ``latency_ms``: per endpoint (and per search mode, and searches without a target) p50, p95,
  p99, mean and max of each request's wall time at the client. ``throughput_rps``: completed
  requests / wall time of the timed phase (first request sent to last response).
- ``rss_mb``: resident memory (VmRSS from /proc/PID/status) of the server process plus all its
  descendants (the dask worker processes): ``startup`` once /health answers, ``before`` after
  ``--warmup-seconds`` of the same load (untimed: under concurrent load the server's memory
  first ramps up for some seconds (handler threads, allocator, caches); ``warmup.rss_mb`` shows
  that ramp), ``after`` when the timed phase ends; ``growth_mb``/``growth_pct`` = after -
  before. ``samples`` every ``--sample-s`` seconds of the timed phase: (seconds, MB of the
  tree, MB of the server process alone); ``second_half_growth_mb`` = last sample - the sample
  nearest the middle. ``per_process_before``/``per_process_after``: each process's RSS.
- ``machine``: CPUs and the 1-minute load average at start and end (the machine is shared: other
  work inflates latencies; the ratios, the errors and memory are what matter).
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import search  # noqa: E402  (server_index: the shared real index of bench/search.py)

from tda.schemas.search import SearchResponse  # noqa: E402

MODES = ("trackstar", "bm25", "both", "fused")
KS = (1, 5, 10, 20, 50)


def log(msg: str) -> None:
    print(f"[load] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- memory
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0                                   # gone, or a zombie (no VmRSS line)


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) for p in process_tree(pid)) / 1024


def per_process_mb(pid: int) -> list[dict]:
    out = []
    for p in process_tree(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            cmd = "?"
        out.append({"pid": p, "rss_mb": round(rss_kb(p) / 1024, 1), "cmd": cmd.strip()})
    return out


# ----------------------------------------------------------------------------- requests
def lama_queries(texts: list[str], n: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(prompt, target) of up to ``n`` LAMA facts whose evidence sentences are in the index,
    round-robin over their relations (the LAMA template cut before [Y] with [X] = subject),
    and the relations used."""
    from tda.evaluation.lama import read_facts
    from tda.evaluation.prepare import normalize_template, read_lama_templates, x_before_y
    lama = common.DATA / "lama-trex"
    templates = read_lama_templates(lama / "relations.jsonl")
    indexed = set(texts)
    per: dict[str, list[tuple[str, str]]] = {}
    seen = set()
    for fact in read_facts(lama):
        pattern = normalize_template(templates.get(fact.relation, ""))
        if not x_before_y(pattern) or not indexed.intersection(fact.sentences):
            continue
        prompt = pattern[:pattern.index("[Y]")].replace("[X]", fact.subject).rstrip()
        if prompt not in seen:
            seen.add(prompt)
            per.setdefault(fact.relation, []).append((prompt, " " + fact.object))
    out = []
    for i in range(max(map(len, per.values()))):
        for rel in sorted(per):
            if i < len(per[rel]) and len(out) < n:
                out.append(per[rel][i])
    return out, sorted(per)


def indexed_examples(index: Path) -> dict[str, str]:
    """id -> text of every example in the index (a long document's chunks are DOCID#N)."""
    from tda.store.index import IndexStore
    store = IndexStore.open(index)
    out = {}
    for shard in sorted(store.complete_shards()):
        rows = store.read_shard(shard, ("ids", "text"))
        out.update(zip(map(str, rows["ids"]), map(str, rows["text"])))
    return out


def schedule(queries: list[tuple[str, str]], ids: list[str], size: int, seed: int) -> list[dict]:
    """A fixed, seeded list of request specs (cycled by request number)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(size):
        u = rng.random()
        if u < 0.75:
            prompt, target = queries[rng.integers(len(queries))]
            mode = MODES[rng.choice(4, p=[0.25, 0.25, 0.3, 0.2])]
            body = {"prompt": prompt, "target": None if rng.random() < 0.1 else target,
                    "k": int(KS[rng.integers(len(KS))]), "mode": mode}
            out.append({"endpoint": "search", "body": body})
        elif u < 0.9:
            out.append({"endpoint": "documents", "id": ids[rng.integers(len(ids))]})
        else:
            out.append({"endpoint": "health"})
    return out


def check(spec: dict, r, examples: dict[str, str]) -> str | None:
    """None when the response is right, else why not."""
    if r.status_code != 200:
        return f"{spec['endpoint']}: HTTP {r.status_code}: {r.text[:200]}"
    if spec["endpoint"] == "health":
        return None if r.json() == {"status": "ok"} else f"health: {r.text[:200]}"
    if spec["endpoint"] == "documents":
        doc = r.json()
        return None if doc["id"] == spec["id"] and doc["text"] == examples[spec["id"]] else \
            f"documents/{spec['id']}: wrong document {r.text[:200]}"
    body = spec["body"]
    resp = SearchResponse.model_validate(r.json())
    if resp.prompt != body["prompt"] or resp.mode != body["mode"] or resp.k != body["k"] \
            or resp.target_generated != (body["target"] is None):
        return f"search: response does not echo the request {body}"
    want = {"trackstar": ("trackstar",), "bm25": ("bm25",), "both": ("trackstar", "bm25",
                                                                      "fused"),
            "fused": ("fused",)}[body["mode"]]
    for name in ("trackstar", "bm25", "fused"):
        hits = getattr(resp, name)
        if name not in want and hits:
            return f"search: {name} hits for mode {body['mode']}"
        if name == "trackstar" and name in want and len(hits) != body["k"]:
            return f"search: {len(hits)} trackstar hits for k={body['k']}"
        if name in want and not 1 <= len(hits) <= body["k"]:
            return f"search: {len(hits)} {name} hits for k={body['k']}"
    return None


def drive(url: str, token: str, plan: list[dict], examples: dict[str, str], clients: int,
          seconds: float, max_requests: int, timeout: float) -> dict:
    """``clients`` threads send requests until ``seconds`` pass or ``max_requests`` are sent."""
    import httpx
    lock = threading.Lock()
    counter = iter(range(max_requests))
    records: list[tuple[str, float, bool]] = []        # (label, seconds, ok)
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=timeout,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                spec = plan[i % len(plan)]
                start = time.perf_counter()
                try:
                    if spec["endpoint"] == "search":
                        r = c.post("/search", json=spec["body"])
                    elif spec["endpoint"] == "documents":
                        r = c.get(f"/documents/{spec['id']}")
                    else:
                        r = c.get("/health")
                    err = check(spec, r, examples)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    err = f"{spec['endpoint']}: {e!r}"
                elapsed = time.perf_counter() - start
                labels = [spec["endpoint"]]
                if spec["endpoint"] == "search":
                    labels.append(f"search:{spec['body']['mode']}")
                    if spec["body"]["target"] is None:
                        labels.append("search:generated_target")
                with lock:
                    records.extend((label, elapsed, err is None) for label in labels)
                    if err:
                        errors.append(err)

    wall = common.run_threads([threading.Thread(target=client, daemon=True)
                               for _ in range(clients)])
    return {"records": records, "errors": errors, "wall_s": wall}


def summarize(records: list[tuple[str, float, bool]], wall: float) -> dict:
    by: dict[str, list[float]] = {}
    for label, sec, _ in records:
        by.setdefault(label, []).append(sec * 1e3)
    out = {}
    for label in sorted(by, key=lambda x: (":" in x, x)):
        ms = np.array(by[label])
        out[label] = {"requests": int(ms.size),
                      "p50": round(float(np.percentile(ms, 50)), 1),
                      "p95": round(float(np.percentile(ms, 95)), 1),
                      "p99": round(float(np.percentile(ms, 99)), 1),
                      "mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1),
                      "throughput_rps": round(ms.size / wall, 2)}
    return out


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the timed phase")
    ap.add_argument("--max-requests", type=int, default=50_000,
                    help="stop the timed phase after this many requests even if time is left")
    ap.add_argument("--warmup-seconds", type=float, default=20.0,
                    help="untimed load before the 'before' RSS (at most --max-requests)")
    ap.add_argument("--sentences", type=int, default=2000, help="examples in the index")
    ap.add_argument("--queries", type=int, default=48, help="distinct LAMA queries")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling interval, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    index, texts = search.server_index(args.sentences)
    examples = indexed_examples(index)
    queries, relations = lama_queries(texts, args.queries)
    plan = schedule(queries, sorted(examples), 997, args.seed)
    token = secrets.token_urlsafe(24)
    port = search._free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["tda", "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    result: dict = {"machine": {"cpus": os.cpu_count(),
                                "load_avg_1min_start": round(os.getloadavg()[0], 2)},
                    "index": index.name, "documents": len(texts), "examples": len(examples),
                    "serve": " ".join(cmd[:2] + ["INDEX"] + cmd[3:] + ["--token", "T"]),
                    "clients": args.clients, "seconds": args.seconds,
                    "max_requests": args.max_requests,
                    "mix": {"search": 0.75, "documents": 0.15, "health": 0.10,
                            "search_modes": dict(zip(MODES, (0.25, 0.25, 0.3, 0.2))),
                            "k": list(KS), "search_without_target": 0.10,
                            "distinct_queries": len(queries),
                            "relations": relations,
                            "example_queries": queries[:3]}}
    logdir = tempfile.TemporaryDirectory(prefix="tda-load-")
    stderr = Path(logdir.name) / "serve.stderr"            # a file: a pipe could fill and block
    errf = stderr.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tda.cli", *cmd[1:], "--token", token],
                            env=search._env(), stdout=subprocess.DEVNULL, stderr=errf,
                            text=True)
    import httpx
    try:
        result["startup_s"] = round(common.wait_healthy(proc, url, stderr.read_text), 1)
        rss = {"startup": round(tree_rss_mb(proc.pid), 1)}
        log(f"server up in {result['startup_s']} s; warm-up ({args.warmup_seconds} s)")
        warm = drive(url, token, plan[::-1], examples, args.clients, args.warmup_seconds,
                     args.max_requests, args.timeout)
        time.sleep(1)
        rss["before"] = round(tree_rss_mb(proc.pid), 1)
        rss["per_process_before"] = per_process_mb(proc.pid)
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()

        def sampler():
            t0 = time.perf_counter()
            while not stop.wait(args.sample_s):
                samples.append((round(time.perf_counter() - t0, 1),
                                round(tree_rss_mb(proc.pid), 1),
                                round(rss_kb(proc.pid) / 1024, 1)))

        mon = threading.Thread(target=sampler, daemon=True)
        mon.start()
        log(f"timed phase: {args.clients} clients, {args.seconds} s "
            f"(at most {args.max_requests} requests)")
        run = drive(url, token, plan, examples, args.clients, args.seconds, args.max_requests,
                    args.timeout)
        stop.set()
        mon.join()
        rss["after"] = round(tree_rss_mb(proc.pid), 1)
        health_after = httpx.get(url + "/health", timeout=10).status_code
        per_proc = per_process_mb(proc.pid)
    finally:
        common.stop_server(proc)
        errf.close()
    server_log = stderr.read_text().splitlines()
    logdir.cleanup()

    requests = sum(1 for label, _, _ in run["records"] if ":" not in label)
    mid = min(samples, key=lambda s: abs(s[0] - samples[-1][0] / 2)) if samples else None
    rss.update(growth_mb=round(rss["after"] - rss["before"], 1),
               growth_pct=round(100 * (rss["after"] - rss["before"]) / rss["before"], 2),
               second_half_growth_mb=round(samples[-1][1] - mid[1], 1) if samples else None,
               samples=samples, per_process_after=per_proc)
    result.update({
        "warmup": {"seconds": args.warmup_seconds,
                   "requests": sum(1 for label, _, _ in warm["records"] if ":" not in label),
                   "errors": len(warm["errors"]), "error_examples": warm["errors"][:3],
                   "rss_mb": {"startup": rss["startup"], "after_warmup": rss["before"]}},
        "requests": requests, "errors": len(run["errors"]),
        "error_examples": run["errors"][:5], "wall_s": round(run["wall_s"], 2),
        "throughput_rps": round(requests / run["wall_s"], 2),
        "stopped_by": "max_requests" if requests >= args.max_requests else "time",
        "latency_ms": summarize(run["records"], run["wall_s"]),
        "health_after": health_after, "server_stderr_lines": len(server_log),
        "server_stderr_tail": server_log[-5:], "rss_mb": rss,
    })
    result["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    common.emit(result, args.out)
    if result["errors"] or result["warmup"]["errors"] or health_after != 200:
        sys.exit(1)


if __name__ == "__main__":
    main()
