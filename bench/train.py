"""Training throughput of `tda eval train`: random batches padded to the longest (the old way)
vs length-bucketed batches (texts of similar length together), on the same texts, in one run.

Both trainers get the same model (same seed), tokenizer, texts and hyperparameters; they take
turns, ``--block`` steps each, through one epoch of each, so a slow spell of the shared machine
hits both. Per batching: real (non-pad) tokens, padded tokens, wall and process CPU seconds of
the training steps only, real tokens per wall second and per CPU second. ``--repeats`` runs
(each with another seeded subset of the corpus) give the median ratio. Prints JSON (and writes
it with --out); the load average before and after says how busy the machine was.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def one_run(texts: list[str], tok, preset: str, batch_size: int, block: int, seed: int) -> dict:
    from tda.evaluation.models import new_model
    from tda.evaluation.train import LMTrainer

    trainers = {b: LMTrainer(new_model("gpt2", preset, tok, seed), tok, texts, epochs=1,
                             batch_size=batch_size, lr=3e-3, max_len=128, seed=seed,
                             batching=b) for b in ("random", "length")}
    queues = {b: list(t.batches()) for b, t in trainers.items()}
    load_before = os.getloadavg()
    while any(queues.values()):
        for b, t in trainers.items():
            for rows in queues[b][:block]:
                t.step(rows)
            del queues[b][:block]
    out = {"load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    for b, t in trainers.items():
        r = t.result
        out[b] = {"steps": len(r.losses), "tokens": r.tokens, "padded_tokens": r.padded_tokens,
                  "padding_share": round(1 - r.tokens / r.padded_tokens, 4),
                  "seconds": round(r.seconds, 2), "cpu_seconds": round(r.cpu_seconds, 2),
                  "tokens_per_s": round(r.tokens / r.seconds, 1),
                  "tokens_per_cpu_s": round(r.tokens / r.cpu_seconds, 1),
                  "final_loss": round(r.losses[-1], 4)}
    out["speedup_wall"] = round(out["length"]["tokens_per_s"] / out["random"]["tokens_per_s"], 3)
    out["speedup_cpu"] = round(out["length"]["tokens_per_cpu_s"]
                               / out["random"]["tokens_per_cpu_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="BENCH/corpus.jsonl")
    ap.add_argument("--texts", type=int, default=1600, help="texts per run (a seeded subset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--block", type=int, default=5, help="steps per turn")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import random

    import torch

    from tda.evaluation.tokenizer import train_bpe_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.corpus, encoding="utf-8") as f:
        corpus = [json.loads(line)["text"] for line in f if line.strip()]
    tok = train_bpe_tokenizer(corpus, vocab_size=args.vocab_size)   # as `tda eval train` does
    started = time.perf_counter()
    runs = []
    for seed in range(args.repeats):
        texts = random.Random(f"bench-train-{seed}").sample(corpus, min(args.texts, len(corpus)))
        runs.append(one_run(texts, tok, args.preset, args.batch_size, args.block, seed))
        print(json.dumps({"run": seed, "speedup_wall": runs[-1]["speedup_wall"]}),
              file=sys.stderr)
    result = {
        "benchmark": "train", "corpus": str(Path(args.corpus).resolve()),
        "corpus_texts": len(corpus), "texts_per_run": min(args.texts, len(corpus)),
        "preset": args.preset, "batch_size": args.batch_size, "vocab_size": len(tok),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "runs": runs,
        "median_speedup_wall": statistics.median(r["speedup_wall"] for r in runs),
        "median_speedup_cpu": statistics.median(r["speedup_cpu"] for r in runs),
        "median_tokens_per_s": {b: statistics.median(r[b]["tokens_per_s"] for r in runs)
                                for b in ("random", "length")},
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(common.peak_rss_mb(), 1)}
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
