"""What token salience costs: a top-10 TrackStar query with and without ``explain``.

On a real index (``--sentences`` LAMA sentences, indexed like ``tda demo``'s: a tiny GPT-2
trained on them with AdamW, k = 16, max_len 128; cached in .cache/bench), for each of
``--queries`` (prompt, target) pairs taken from the corpus (a sentence's last word as the
target), three timings, interleaved in ``--rounds`` rounds (each round runs all three for
every query, in turn, so slow spells of the shared machine hit them all):

- ``search_s``: ``Searcher.search(k=10, mode="trackstar")``;
- ``explain_s``: the same with ``explain=True`` (salience on the 10 hits);
- ``fwdbwd_s``: one batched forward and backward (``Featurizer.raw_features``) over the 10
  shown hits' token sequences, right padded to the longest, the issue's yardstick (and how the
  indexer batches 10 such examples: they fit one token budget);
- ``fwdbwd_groups_s``: the same over the length groups that explain batches them in
  (``engine.salience.length_groups``), one forward and backward per group: explain's own
  floor, for comparison.

Per timing the median over rounds and queries; ``ratio`` = explain_s / (search_s + fwdbwd_s),
target <= 1.0 (salience costs no more than the search plus one batched forward and backward
over the shown hits), and ``ratio_to_groups`` = explain_s / (search_s + fwdbwd_groups_s);
``explain_p90_ms``: the 90th percentile of explain_s; ``full_gc_while_timed``: the garbage
collector's full collections during the timed rounds (count, total and longest ms; the
searcher freezes its loaded heap, ``--unfreeze`` measures without). ``--threads`` sets
torch's threads (0: its default). Prints JSON and writes ``--out`` (bench/results/salience.json).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.engine import collate  # noqa: E402
from tda.engine.salience import example_tokens, length_groups  # noqa: E402
from tda.searcher.searcher import Searcher  # noqa: E402
from tda.store.index import IndexStore  # noqa: E402


def build_index(n: int, epochs: int):
    model = common.trained_model(f"gpt2tiny-salience-{n}-{epochs}", "gpt2", "tiny", vocab=4096,
                                 n_train=n, epochs=epochs)
    texts = common.sentences(n)
    path = common.CACHE / "salience" / f"index-{n}-{epochs}"
    try:
        ok = not IndexStore.open(path).unfinished_shards()
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        import shutil
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus = common.write_corpus(path.with_name(path.name + ".jsonl"), texts)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        subprocess.run([sys.executable, "-m", "tda.cli", "index", "--model", str(model),
                        "--corpus", str(corpus), "--out", str(path), "--projection-dim", "16",
                        "--max-len", "128", "--no-bm25", "--no-progress"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return path, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--unfreeze", action="store_true",
                    help="hand the heap back to the garbage collector after opening (as "
                         "before searcher/heap.py), to measure what freezing it saves")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default=str(common.REPO / "bench" / "results" / "salience.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    path, texts = build_index(args.sentences, args.epochs)
    build_s = time.perf_counter() - t0
    queries = []
    for t in texts[:: max(1, len(texts) // args.queries)][:args.queries]:
        head, _, last = t.rstrip(" .").rpartition(" ")
        queries.append((head, " " + last))
    times = {"search_s": [], "explain_s": [], "fwdbwd_s": [], "fwdbwd_groups_s": []}
    sums = []
    with Searcher(path) as s:
        f = s.encoder.featurizer
        hits = {q: s.search(*q, k=args.k, mode="trackstar").trackstar for q in queries}
        seqs = {q: [example_tokens(f.tokenizer, s.document(h.id).text).sequence
                    for h in hs] for q, hs in hits.items()}
        s.search(*queries[0], k=args.k, mode="trackstar", explain=True)      # warm up
        if args.unfreeze:
            gc.unfreeze()
        collections = {"count": 0, "ms": 0.0, "max_ms": 0.0}
        started = {}

        def on_gc(phase, info):            # full collections (generation 2) while timed
            if info["generation"] != 2:
                return
            if phase == "start":
                started["t"] = time.perf_counter()
            elif "t" in started:
                ms = (time.perf_counter() - started.pop("t")) * 1e3
                collections["count"] += 1
                collections["ms"] += ms
                collections["max_ms"] = max(collections["max_ms"], ms)
        gc.callbacks.append(on_gc)

        def fwdbwd(q):
            with s.encoder.lock:
                f.raw_features(collate(seqs[q], f.pad_id))

        def fwdbwd_groups(q):
            with s.encoder.lock:
                for g in length_groups([len(x.ids) for x in seqs[q]]):
                    f.raw_features(collate([seqs[q][i] for i in g], f.pad_id))

        for _ in range(args.rounds):
            for q in queries:
                for name, fn in (("search_s", lambda: s.search(*q, k=args.k, mode="trackstar")),
                                 ("explain_s", lambda: sums.append(s.search(
                                     *q, k=args.k, mode="trackstar", explain=True))),
                                 ("fwdbwd_s", lambda: fwdbwd(q)),
                                 ("fwdbwd_groups_s", lambda: fwdbwd_groups(q))):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        gc.callbacks.remove(on_gc)
        n_rows = IndexStore.open(path).manifest.corpus.examples
    med = {k: statistics.median(v) for k, v in times.items()}
    padded = {"real": 0, "one_batch": 0, "groups": 0}       # over the queries' hit lists
    for v in seqs.values():
        lens = [len(x.ids) for x in v]
        padded["real"] += sum(lens)
        padded["one_batch"] += len(lens) * max(lens)
        padded["groups"] += sum(len(g) * max(lens[i] for i in g) for g in length_groups(lens))
    worst = max(abs(sum(t.value for t in h.salience.tokens) - h.score)
                for r in sums for h in r.trackstar)
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/salience.py " + " ".join(sys.argv[1:]),
        "index": {"examples": n_rows, "model": "gpt2 tiny (bench/common.trained_model)",
                  "projection_dim": 16, "max_len": 128, "build_or_cache_s": round(build_s, 1)},
        "k": args.k, "queries": len(queries), "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "median_ms": {k.removesuffix("_s"): round(v * 1e3, 2) for k, v in med.items()},
        "ratio": round(med["explain_s"] / (med["search_s"] + med["fwdbwd_s"]), 3),
        "target_ratio": 1.0,
        "ratio_to_groups": round(med["explain_s"] / (med["search_s"] + med["fwdbwd_groups_s"]),
                                 3),
        "heap_frozen": not args.unfreeze,
        "full_gc_while_timed": {k: round(v, 1) for k, v in collections.items()},
        "explain_p90_ms": round(statistics.quantiles(times["explain_s"], n=10)[-1] * 1e3, 2),
        "tokens": padded,
        "max_abs_salience_sum_minus_indexed_score": float(f"{worst:.3g}"),
    }
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
