"""`tda index` end to end vs the engine alone, index bytes per example, peak RSS vs corpus size.

Prints JSON. Model: the ~10M parameter Llama-style model of bench/featurize.py (trained on the
first 4,000 LAMA sentences with AdamW, cached in .cache/bench), factored correction, k = 16
(d = 14,592), float16 storage. Corpus: real LAMA sentences after those 4,000, joined into
documents of 1 to 8 sentences (seeded), so that some exceed ``--max-len`` and are chunked;
written as JSON lines {"id", "text"}. "N" is the first ``--documents`` documents, "2N" the
first twice as many (its first half is the N corpus). Both use ``--shard-size`` documents per
shard, so each spans several shards (the unit a build holds in memory).

Figures:
- corpus.{N,2N}: documents, examples (after chunking), tokens (non-pad), shards, batches, and
  text_bytes (UTF-8 bytes of the examples' texts).
- seconds.engine_{N,2N}: the engine alone, in this process: Featurizer.featurize_batch over the
  very batches the indexer forms (indexer.documents.chunk_document per document, per shard
  indexer.batching.budget_batches with ``--batch-tokens``, engine.collate), collated beforehand;
  model loading, tokenization and collation excluded.
- seconds.prep_{N,2N}: reading the corpus, chunk_document (tokenization) and collate for those
  batches, in this process: part of what the command adds to the engine.
- seconds.index_{bm25,nobm25}_{N,2N}: wall time of the real command, ``python -m tda.cli index
  --model DIR --corpus FILE --out OUT --no-progress --json`` (``--bm25`` default, or
  ``--no-bm25``), in a child process: interpreter and torch start-up, model loading, corpus
  scan, featurizing, Zarr writes and (with bm25) the JVM and the Lucene index (and the ~0.03 s
  start of the small wrapper that measures its RSS, below).
- seconds.summary_*: the ``seconds`` of the command's own JSON summary (from build_index's start:
  without interpreter/import start-up, with model loading and everything after).
- Every time is the fastest of ``--rounds`` rounds; each round runs every measurement once, in
  turn (interleaved), so slow spells of the shared machine hit all of them.
- tokens_per_s: engine and command, "including_startup" = tokens_2N / seconds_2N, "marginal" =
  (tokens_2N - tokens_N) / (seconds_2N - seconds_N): fixed costs (start-up, model load, JVM)
  cancel; "prep" = tokens_2N / prep_2N (reading + tokenizing + collating alone).
- overhead: command time / engine time - 1, the share the command adds for I/O and
  orchestration. "marginal_*" (fixed start-up excluded) = (index_2N - index_N) /
  (engine_2N - engine_N) - 1; "including_startup_*_2N" = index_2N / engine_2N - 1. The target
  (<= 0.15) is compared with marginal_bm25, the default command; fixed_startup_s is the
  intercept of the command's time against tokens (what a build pays once, whatever its size).
  "summary_*_2N" = the summary's seconds / engine_2N - 1 (start-up of the interpreter and
  imports excluded, model loading and the rest included); prep_share_of_engine_marginal =
  (prep_2N - prep_N) / (engine_2N - engine_N).
- index_bytes: of the 2N index built with bm25: ``du`` of shards/ (apparent bytes and bytes
  allocated on disk), the vectors arrays alone, bm25/, second_moments/ (fixed, not per example)
  and the whole index, per example; raw_fp16_per_example = d x 2 (an uncompressed float16
  vector); text_bytes_per_example (UTF-8 text of an example) and bm25_apparent_over_text, to
  scale the Lucene index to other corpora.
- threads: torch threads of this process and OMP_NUM_THREADS of the commands. On a busy shared
  machine pass --threads 1: with the cores oversubscribed, 2 OpenMP threads ran 2.5-3x slower
  than 1 here.
- peak_rss_mb: maximum resident set of each command (getrusage(RUSAGE_CHILDREN).ru_maxrss in a
  fresh wrapper process whose only child is the command: not this process's), the largest over
  rounds, for N and 2N, with and without bm25; ratio_2N_over_N per mode (target: 2N within 10%
  of N); all_rounds: every measurement; this_process: this benchmark's own peak (the engine-alone
  runs), for comparison.

Run time: measured 9 minutes with ``--documents 96 --rounds 2 --threads 1`` on a busy 2-core
machine; the defaults should take about as long on a quiet one (not measured).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.engine import Featurizer, TrackStarConfig, collate, load_model  # noqa: E402
from tda.indexer.batching import budget_batches  # noqa: E402
from tda.indexer.documents import chunk_document, shard_documents  # noqa: E402
from tda.schemas.corpus import CorpusOptions  # noqa: E402
from tda.schemas.index import Layout  # noqa: E402

RUNS = common.CACHE / "index-runs"


def write_corpus(path: Path, n_docs: int, offset: int, seed: int = 0) -> None:
    """``n_docs`` documents of 1-8 consecutive LAMA sentences each, as JSON lines."""
    rng = random.Random(seed)
    sizes = [rng.randint(1, 8) for _ in range(n_docs)]
    sents = common.sentences(sum(sizes), offset=offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        start = 0
        for i, n in enumerate(sizes):
            f.write(json.dumps({"id": f"doc{i:06d}", "text": " ".join(sents[start:start + n])})
                    + "\n")
            start += n


def indexer_batches(featurizer: Featurizer, corpus: Path, shard_size: int, batch_tokens: int):
    """The batches ``tda index`` forms for this corpus (as build._featurize_shards does), the
    number of examples, shards and UTF-8 bytes of example text, and the seconds spent reading,
    tokenizing and collating."""
    start = time.perf_counter()
    max_len = featurizer.config.max_len
    n_docs = sum(1 for line in corpus.open() if line.strip())
    batches, examples, shards, text_bytes = [], 0, 0, 0
    n_shards = Layout(shard_size=shard_size, storage_dtype="float16").shard_count(n_docs)
    for _, docs in shard_documents([corpus], CorpusOptions(), shard_size,
                                   set(range(n_shards))):
        exs = [e for d in docs for e in chunk_document(d, featurizer.tokenizer, max_len)]
        batches += [collate([exs[i].sequence for i in idx], featurizer.pad_id)
                    for idx in budget_batches([e.sequence for e in exs], batch_tokens)]
        examples += len(exs)
        text_bytes += sum(len(e.text.encode()) for e in exs)
        shards += 1
    return batches, examples, shards, text_bytes, time.perf_counter() - start


def run_engine(featurizer: Featurizer, batches) -> None:
    for b in batches:
        featurizer.featurize_batch(b)


def run_index(model_dir: Path, corpus: Path, out: Path, args, bm25: bool) -> dict:
    """One `tda index` in a child process: wall seconds, its JSON summary, its peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "tda.cli", "index", "--model", str(model_dir),
           "--corpus", str(corpus), "--out", str(out), "--no-progress", "--json",
           "--shard-size", str(args.shard_size), "--batch-tokens", str(args.batch_tokens),
           "--max-len", str(args.max_len), "--bm25" if bm25 else "--no-bm25"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    seconds, stdout, peak = common.run_peak_rss(cmd, env, out.with_suffix(".log"))
    return {"seconds": seconds, "summary": json.loads(stdout), "peak_rss_mb": peak}


def du_bytes(path: Path) -> dict:
    """Apparent size and bytes allocated on disk, as `du -sb` and `du -sB1` report them."""
    def du(flag):
        out = subprocess.run(["du", "-s", flag, str(path)], capture_output=True, text=True,
                             check=True).stdout
        return int(out.split()[0])
    return {"apparent": du("-b"), "on_disk": du("-B1")}


def index_bytes(out: Path, examples: int, text_bytes: int, dim: int) -> dict:
    shards = du_bytes(out / "shards")
    vectors = sum(du_bytes(p)["apparent"] for p in (out / "shards").glob("*/vectors"))
    parts = {name: du_bytes(out / name) for name in ("bm25", "second_moments")
             if (out / name).exists()}
    total = du_bytes(out)
    return {
        "examples": examples,
        "text_bytes_per_example": round(text_bytes / examples, 1),
        "shards_apparent_per_example": round(shards["apparent"] / examples, 1),
        "shards_on_disk_per_example": round(shards["on_disk"] / examples, 1),
        "vectors_apparent_per_example": round(vectors / examples, 1),
        "raw_fp16_per_example": 2 * dim,
        "vectors_over_raw_fp16": round(vectors / examples / (2 * dim), 4),
        "bm25_on_disk_per_example": round(parts["bm25"]["on_disk"] / examples, 1)
        if "bm25" in parts else None,
        "bm25_apparent_over_text": round(parts["bm25"]["apparent"] / text_bytes, 2)
        if "bm25" in parts else None,
        "second_moments_on_disk": parts.get("second_moments", {}).get("on_disk"),
        "index_on_disk_per_example": round(total["on_disk"] / examples, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=128,
                    help="N: documents of the smaller corpus (the larger has 2N)")
    ap.add_argument("--shard-size", type=int, default=32, help="documents per shard")
    ap.add_argument("--batch-tokens", type=int, default=8192, help="as tda index's default")
    ap.add_argument("--max-len", type=int, default=256, help="as tda index's default")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; each round times every measurement once, in turn; the best "
                         "round counts (peak RSS: the largest)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model_dir = common.trained_model("llama10m", "llama", "bench10m", vocab=8192, n_train=4000)
    model, tok = load_model(model_dir)
    featurizer = Featurizer(model, tok, TrackStarConfig(max_len=args.max_len),
                            optimizer_state=model_dir)
    corpora = {"N": RUNS / "corpus-N.jsonl", "2N": RUNS / "corpus-2N.jsonl"}
    write_corpus(corpora["2N"], 2 * args.documents, offset=4000)
    lines = corpora["2N"].read_text().splitlines(keepends=True)
    corpora["N"].write_text("".join(lines[:args.documents]))

    result: dict = {"model": {"arch": "llama", "preset": "bench10m",
                              "parameters": sum(p.numel() for p in model.parameters()),
                              "dim": featurizer.dim},
                    "threads": args.threads,
                    "options": {"shard_size": args.shard_size, "batch_tokens": args.batch_tokens,
                                "max_len": args.max_len, "storage_dtype": "float16",
                                "rounds": args.rounds},
                    "corpus": {}}
    batches, tokens = {}, {}
    for name, path in corpora.items():
        b, examples, shards, text_bytes, _ = indexer_batches(featurizer, path, args.shard_size,
                                                 args.batch_tokens)
        batches[name] = b
        tokens[name] = int(sum(x.n_tokens.sum() for x in b))
        result["corpus"][name] = {"documents": len(path.read_text().splitlines()),
                                  "examples": examples, "tokens": tokens[name],
                                  "shards": shards, "batches": len(b),
                                  "text_bytes": text_bytes}

    run_engine(featurizer, batches["N"][:2])          # warm up
    fns = {f"engine_{k}": (lambda k=k: run_engine(featurizer, batches[k])) for k in corpora}
    fns.update({f"prep_{k}": (lambda k=k: indexer_batches(featurizer, corpora[k],
                                                          args.shard_size, args.batch_tokens))
                for k in corpora})
    runs: dict[str, list[dict]] = {}
    for mode in ("bm25", "nobm25"):
        for k in corpora:
            key = f"index_{mode}_{k}"

            def index_run(k=k, mode=mode, key=key):
                runs.setdefault(key, []).append(
                    run_index(model_dir, corpora[k], RUNS / key, args, mode == "bm25"))
            fns[key] = index_run
    seconds = common.interleaved(fns, args.rounds)

    for key, rs in runs.items():
        s = rs[-1]["summary"]
        k = key.rsplit("_", 1)[1]
        assert s["tokens"] == tokens[k], f"{key}: {s['tokens']} tokens, engine {tokens[k]}"
        assert s["examples"] == result["corpus"][k]["examples"], key
        seconds[key.replace("index_", "summary_")] = min(r["summary"]["seconds"] for r in rs)
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}

    dt = tokens["2N"] - tokens["N"]
    tps = {"engine_including_startup": tokens["2N"] / seconds["engine_2N"],
           "engine_marginal": dt / (seconds["engine_2N"] - seconds["engine_N"]),
           "prep": tokens["2N"] / seconds["prep_2N"]}
    overhead, fixed = {}, {}
    for mode in ("bm25", "nobm25"):
        i_n, i_2n = seconds[f"index_{mode}_N"], seconds[f"index_{mode}_2N"]
        tps[f"index_{mode}_including_startup"] = tokens["2N"] / i_2n
        tps[f"index_{mode}_marginal"] = dt / (i_2n - i_n)
        overhead[f"marginal_{mode}"] = (i_2n - i_n) / (seconds["engine_2N"]
                                                      - seconds["engine_N"]) - 1
        overhead[f"including_startup_{mode}_2N"] = i_2n / seconds["engine_2N"] - 1
        overhead[f"summary_{mode}_2N"] = seconds[f"summary_{mode}_2N"] / seconds["engine_2N"] - 1
        fixed[mode] = i_n - tokens["N"] * (i_2n - i_n) / dt
    result["tokens_per_s"] = {k: round(v, 1) for k, v in tps.items()}
    result["overhead"] = {k: round(v, 3) for k, v in overhead.items()}
    result["overhead"]["fixed_startup_s"] = {k: round(v, 2) for k, v in fixed.items()}
    result["overhead"]["prep_share_of_engine_marginal"] = round(
        (seconds["prep_2N"] - seconds["prep_N"])
        / (seconds["engine_2N"] - seconds["engine_N"]), 3)
    result["overhead"]["compared_with_target"] = "marginal_bm25"

    c2 = result["corpus"]["2N"]
    result["index_bytes"] = index_bytes(RUNS / "index_bm25_2N", c2["examples"], c2["text_bytes"],
                                        featurizer.dim)
    rss = {key: round(max(r["peak_rss_mb"] for r in rs), 1) for key, rs in runs.items()}
    result["peak_rss_mb"] = {
        **{key.replace("index_", ""): v for key, v in rss.items()},
        "ratio_2N_over_N_bm25": round(rss["index_bm25_2N"] / rss["index_bm25_N"], 3),
        "ratio_2N_over_N_nobm25": round(rss["index_nobm25_2N"] / rss["index_nobm25_N"], 3),
        "all_rounds": {key.replace("index_", ""): [round(r["peak_rss_mb"], 1) for r in rs]
                       for key, rs in runs.items()},
        "this_process": round(common.peak_rss_mb(), 1)}
    result["targets"] = {"overhead_marginal_bm25": "<= 0.15", "peak_rss_ratio_2N_over_N": "<= 1.10"}
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
