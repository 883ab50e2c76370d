"""Fact tracing at three model sizes on one benchmark: the paper's trend, measured here.

Each step is its own command, so one interrupted training costs only itself; every step runs
the ``tda`` commands a user would, prints them and its wall time, and records both in
``bench/results/sizes.json`` (merged, one entry per step):

    python bench/sizes.py prepare                   # the benchmark: 600 facts, 20 relations
    python bench/sizes.py train mini                # ~0.48M parameters, 30 epochs
    python bench/sizes.py train tiny                # ~1.35M, 30 epochs
    python bench/sizes.py train small               # ~5.8M, 15 epochs at lr 1e-3
    python bench/sizes.py evaluate mini             # index + `tda eval run` (tail-patch 100 q.)
    python bench/sizes.py evaluate tiny --sweep     # + the mixed R's K and lambda sweep
    python bench/sizes.py evaluate small
    python bench/sizes.py compare                   # `tda eval sizes` -> docs/eval/sizes/

The benchmark is the README's (``tda eval prepare``: 600 facts, 30 per relation of all 20 in
../shared/data/lama-trex, 3 paraphrases per fact, 2,000 FewRel distractors; 5,969 texts).
Larger models learn a fact in fewer passes, so the largest trains for fewer epochs (15 vs 30)
to keep the three trainings within about an hour on this 2-core machine, one torch thread
each (two can run side by side). ``--runs`` holds the models, indexes and reports
(default runs/sizes, ignored by git); the reports' summaries go to docs/eval/sizes/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TDA_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "sizes.json"
EPOCHS = {"mini": 30, "tiny": 30, "small": 15}
# Peak learning rates: 3e-3 (the default) for the 4-layer presets; the 6-layer x 256 one does
# not settle at 3e-3 (12 epochs: final loss 5.66, 45 of 600 facts known, vs 1.86 and 260 for
# tiny), so it trains at 1e-3.
LR = {"mini": 3e-3, "tiny": 3e-3, "small": 1e-3}
SWEEP = ("--sweep-components", "0.005,0.015,0.05", "--sweep-mixing", "0.5,2")


def run(step: str, label: str, *commands: list[str]) -> None:
    """Run ``commands`` in turn (each must succeed), then record the step's commands and
    wall time in bench/results/sizes.json, as ``step [label]`` when a label is given."""
    t = time.perf_counter()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for cmd in commands:
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
    seconds = round(time.perf_counter() - t, 1)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    step = f"{step} [{label}]" if label else step
    results[step] = {"commands": [shlex.join(c) for c in commands], "seconds": seconds,
                     "when": datetime.datetime.now(datetime.timezone.utc)
                     .isoformat(timespec="seconds")}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{step}: {seconds:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("prepare", "train", "evaluate", "compare"))
    ap.add_argument("size", nargs="?", choices=tuple(EPOCHS))
    ap.add_argument("--runs", default="runs/sizes")
    ap.add_argument("--sweep", action="store_true",
                    help="evaluate: also sweep the mixed R's K (0.5%%, 1.5%%, 5%% of d) and "
                         "lambda (0.5x and 2x its odds)")
    ap.add_argument("--out", default=str(REPO / "docs" / "eval" / "sizes"))
    ap.add_argument("--facts", type=int, default=600,
                    help="prepare: facts in the benchmark, spread over the 20 relations")
    ap.add_argument("--label", default="",
                    help="recorded with each step's name in sizes.json (another benchmark)")
    args = ap.parse_args()
    runs = Path(args.runs)
    bench = runs / "bench"
    tda = [sys.executable, "-m", "tda.cli"]
    if args.step in ("train", "evaluate") and not args.size:
        ap.error(f"{args.step} needs a size: {', '.join(EPOCHS)}")
    if args.step == "prepare":
        run("prepare", args.label,
            tda + ["eval", "prepare", "--lama", str(DATA / "lama-trex"), "--facts",
                   str(args.facts), "--paraphrases", "3", "--distractors",
                   str(DATA / "fewrel" / "val_wiki.json"), "--distractor-count", "2000",
                   "--out", str(bench)])
    elif args.step == "train":
        s = args.size
        run(f"train {s}", args.label,
            tda + ["eval", "train", "--corpus", str(bench / "corpus.jsonl"), "--out",
                   str(runs / f"model-{s}"), "--preset", s, "--epochs", str(EPOCHS[s]),
                   "--lr", str(LR[s]), "--threads", "1"])
    elif args.step == "evaluate":
        s = args.size
        run(f"evaluate {s}" + (" --sweep" if args.sweep else ""), args.label,
            tda + ["index", "--model", str(runs / f"model-{s}"), "--corpus",
                   str(bench / "corpus.jsonl"), "--out", str(runs / f"index-{s}"),
                   "--no-progress"],
            tda + ["eval", "run", "--index", str(runs / f"index-{s}"), "--queries",
                   str(bench / "queries.jsonl"), "--out", str(runs / f"report-{s}"),
                   "--tail-patch", "10", "--tail-patch-queries", "100"]
            + (list(SWEEP) if args.sweep else []))
    else:
        reports = [runs / f"report-{s}" for s in EPOCHS]
        run("compare", args.label,
            tda + ["eval", "sizes"] + [a for r in reports for a in ("--report", str(r))]
            + ["--out", args.out])


if __name__ == "__main__":
    main()
