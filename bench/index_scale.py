"""`tda index` at the size of the real 70k corpus with 2 gloo ranks: the four figures of issue 13.

Prints JSON and merges it into ``--json-out`` (one key per stage, so the stages can run as
separate calls). Corpus: /work/artifacts/real70k/corpus.jsonl (bench/real70k.py: 69,102 real
texts, all unique LAMA T-REx evidence sentences + FewRel), its model (tiny GPT-2 trained on
10k of them, with its AdamW state). Every build: ``torchrun --nproc-per-node 2`` (gloo, one
OpenMP thread per rank), default engine settings (k = 16, max_len 256, factored correction),
``--shard-size`` examples per shard, ``--no-bm25`` (the Lucene index is rank 0's job after
the gradients; its JVM is not what these figures are about).

Stages:

- ``build --lines N``: a 2-rank build of the first N lines (N = 0: the whole corpus) into
  WORK/index-N. Each rank runs under a small wrapper (this file, ``worker``) that records its
  pid and, at exit, its own peak RSS (getrusage(RUSAGE_SELF).ru_maxrss). Figures:
  * summary: the command's JSON summary (documents, examples, tokens, seconds, per-rank
    ``scan_bytes_read`` and ``bytes_read``: bytes the instrumented corpus readers took from
    storage, in the scan and when reading the rank's shards);
  * bytes: each rank's bytes (scan, shard reading) over corpus_bytes / world; target <= 1.05
    each (a rank reads its share once in the scan and once to featurize);
  * throughput: from each shard's completion marker (``seconds`` spent reading and
    featurizing it) and its rows' n_tokens: tokens/s of the first and last 10% of each rank's
    shards (in the order it built them) and of the whole corpus' first and last 10% of shards;
    noise = relative standard deviation of tokens/s over the 10 deciles of each rank's shards;
  * peak_rss_mb: per rank.
- ``compare --small N1 --large N2``: peak RSS of the N2 build over the N1 build, per rank
  (target: within 10%), from the stored build stages.
- ``scan``: the corpus scan alone (validation, tokenization, shard table) in one process,
  1 part: MB/s a rank scans its byte range at, median of 3.
- ``kill --lines N``: a 2-rank build into WORK/killed-N; once half its shards are complete,
  SIGKILL rank 1's worker (torchrun then stops rank 0); rerun the same command as 1 process
  (OMP_NUM_THREADS=2): its summary (scan reused, shards written); then the index compared row
  by row with WORK/index-N (ids, texts, n_tokens equal; vectors to float16 rounding, losses and
  norms to the test suite's tolerances).

Run times measured here (2-core machine): see README "Indexing at scale".
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = Path("/work/artifacts/real70k")


# ---------------------------------------------------------------- the per-rank wrapper
def worker(rss_dir: str, args: list[str]) -> None:
    """One torchrun rank: tda's command with its pid recorded and its peak RSS written at exit."""
    import resource
    rank = os.environ.get("RANK", "0")
    out = Path(rss_dir)
    (out / f"pid.{rank}").write_text(str(os.getpid()))
    try:
        from tda.cli import main
        main(args)
    finally:
        (out / f"rss.{rank}").write_text(
            str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


# ---------------------------------------------------------------- helpers
def env(threads: int = 1) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def corpus_of(lines: int, work: Path, corpus: Path) -> Path:
    if lines == 0:
        return corpus
    path = work / f"corpus-{lines}.jsonl"
    if not path.is_file():
        with corpus.open() as src, path.open("w") as dst:
            for i, line in enumerate(src):
                if i >= lines:
                    break
                dst.write(line)
    return path


def index_args(model: Path, corpus: Path, out: Path, shard_size: int) -> list[str]:
    return ["index", "--model", str(model), "--corpus", str(corpus), "--out", str(out),
            "--shard-size", str(shard_size), "--no-bm25", "--no-progress", "--json"]


def torchrun_cmd(nproc: int, rss_dir: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", str(Path(__file__).resolve()), "worker",
            "--rss-dir", str(rss_dir), "--", *args]


def shard_rates(index: Path) -> list[dict]:
    """[{shard, rows, tokens, seconds}] of every complete shard, in shard order."""
    from tda.store.index import IndexStore
    store = IndexStore.open(index)
    out = []
    for shard, marker in sorted(store.shard_status().items()):
        if marker:
            tokens = int(store.read_shard(shard, ("n_tokens",))["n_tokens"].sum())
            out.append({"shard": shard, "rows": marker["rows"], "tokens": tokens,
                        "seconds": marker.get("seconds")})
    return out


def rate(shards: list[dict]) -> float:
    return round(sum(s["tokens"] for s in shards) / sum(s["seconds"] for s in shards), 1)


def tenth(shards: list[dict], last: bool) -> list[dict]:
    k = max(1, round(len(shards) / 10))
    return shards[-k:] if last else shards[:k]


def deciles(shards: list[dict]) -> list[float]:
    n = len(shards)
    return [rate(shards[i * n // 10:(i + 1) * n // 10]) for i in range(10)
            if (i + 1) * n // 10 > i * n // 10]


def throughput(rates: list[dict], world: int) -> dict:
    """First vs last 10% tokens/s, per rank (its shards are one consecutive run, built in
    order) and over the corpus; noise from the deciles of each rank's shards."""
    from tda.indexer.build import assign_shards
    todo = [s["shard"] for s in rates]
    runs = assign_shards(todo, {s["shard"]: s["tokens"] for s in rates}, world)
    by_shard = {s["shard"]: s for s in rates}
    out = {"per_rank": []}
    for rank, run in enumerate(runs):
        shards = [by_shard[s] for s in run]
        first, last = rate(tenth(shards, False)), rate(tenth(shards, True))
        dec = deciles(shards)
        noise = statistics.pstdev(dec) / statistics.mean(dec)
        out["per_rank"].append({"rank": rank, "shards": len(shards), "first_10pct": first,
                                "last_10pct": last, "last_over_first": round(last / first, 3),
                                "deciles": dec, "decile_rel_sd": round(noise, 3),
                                "within_noise": abs(last / first - 1) <= 2 * noise})
    first, last = rate(tenth(rates, False)), rate(tenth(rates, True))
    out["corpus"] = {"first_10pct": first, "last_10pct": last,
                     "last_over_first": round(last / first, 3)}
    out["target_met"] = all(r["within_noise"] for r in out["per_rank"])
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, key: str, value: dict) -> None:
    data = load(path)
    data[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------- stages
def stage_build(a) -> tuple[str, dict]:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = corpus_of(a.lines, work, Path(a.corpus))
    out = work / f"index-{a.lines}"
    rss_dir = work / f"rss-{a.lines}"
    rss_dir.mkdir(exist_ok=True)
    for f in rss_dir.iterdir():
        f.unlink()
    subprocess.run(["rm", "-rf", str(out)], check=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run = subprocess.run(torchrun_cmd(2, rss_dir, index_args(Path(a.model), corpus, out,
                                                              a.shard_size)),
                         capture_output=True, text=True, env=env(1))
    wall = time.perf_counter() - t0
    if run.returncode:
        sys.exit(f"build failed:\n{run.stderr[-3000:]}")
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    size = corpus.stat().st_size
    share = size / 2
    rates = shard_rates(out)
    result = {
        "lines": a.lines or summary["documents"], "corpus": str(corpus), "corpus_bytes": size,
        "shard_size": a.shard_size, "ranks": 2, "wall_s": round(wall, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "summary": summary,
        "bytes": {"share": share,
                  "scan_over_share": [round(b / share, 4) for b in summary["scan_bytes_read"]],
                  "shards_over_share": [round(b / share, 4) for b in summary["bytes_read"]],
                  "fingerprint_bytes_not_counted": min(size, 2 << 20),
                  "target_met": all(b <= 1.05 * share for b in
                                    summary["scan_bytes_read"] + summary["bytes_read"])},
        "peak_rss_mb": [round(float((rss_dir / f"rss.{r}").read_text()), 1) for r in range(2)],
        "throughput": throughput(rates, 2),
        "shards": rates,
    }
    return f"build-{a.lines}", result


def stage_compare(a) -> tuple[str, dict]:
    data = load(Path(a.json_out))
    small, large = data[f"build-{a.small}"], data[f"build-{a.large}"]
    ratios = [round(x / y, 4) for x, y in zip(large["peak_rss_mb"], small["peak_rss_mb"])]
    return "peak_rss", {"small_lines": small["lines"], "large_lines": large["lines"],
                        "small_mb": small["peak_rss_mb"], "large_mb": large["peak_rss_mb"],
                        "large_over_small": ratios,
                        "target_met": all(abs(r - 1) <= 0.10 for r in ratios)}


def stage_kill(a) -> tuple[str, dict]:
    import numpy as np
    from tda.store.index import IndexStore
    from tda.tests.tolerances import FLOAT16_ATOL, LOSS_RTOL, STORED_NORM_RTOL
    work = Path(a.work)
    corpus = corpus_of(a.lines, work, Path(a.corpus))
    ref, out = work / f"index-{a.lines}", work / f"killed-{a.lines}"
    rss_dir = work / f"rss-kill-{a.lines}"
    rss_dir.mkdir(exist_ok=True)
    for f in rss_dir.iterdir():
        f.unlink()
    subprocess.run(["rm", "-rf", str(out)], check=True)
    n_shards = IndexStore.open(ref).manifest.n_shards
    args = index_args(Path(a.model), corpus, out, a.shard_size)
    proc = subprocess.Popen(torchrun_cmd(2, rss_dir, args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(1))
    t0 = time.perf_counter()
    done = 0
    while proc.poll() is None:
        time.sleep(2)
        try:
            done = len(IndexStore.open(out).complete_shards())
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if done >= n_shards // 2:
            break
    if proc.poll() is not None:
        sys.exit(f"the build ended before it could be killed:\n{proc.stderr.read()[-2000:]}")
    victim = int((rss_dir / "pid.1").read_text())
    os.kill(victim, signal.SIGKILL)
    killed_at = time.perf_counter() - t0
    _, err = proc.communicate(timeout=600)
    complete_after_kill = len(IndexStore.open(out).complete_shards())
    t1 = time.perf_counter()
    rerun = subprocess.run([sys.executable, "-m", "tda.cli", *args], capture_output=True,
                           text=True, env=env(2))
    if rerun.returncode:
        sys.exit(f"rerun failed:\n{rerun.stderr[-3000:]}")
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    fields = ("vectors", "ids", "text", "n_tokens", "loss", "norm")

    def rows(path):
        store = IndexStore.open(path)
        shards = [store.read_shard(i, fields) for i in sorted(store.complete_shards())]
        return {f: np.concatenate([s[f] for s in shards]) for f in fields}

    x, y = rows(out), rows(ref)
    vec = float(np.abs(x["vectors"].astype(np.float32) - y["vectors"].astype(np.float32)).max())
    loss = float(np.max(np.abs(x["loss"] - y["loss"]) / np.abs(y["loss"])))
    norm = float(np.max(np.abs(x["norm"] - y["norm"]) / np.abs(y["norm"])))
    same = {"ids": x["ids"].tolist() == y["ids"].tolist(),
            "text": x["text"].tolist() == y["text"].tolist(),
            "n_tokens": bool(np.array_equal(x["n_tokens"], y["n_tokens"])),
            "rows": len(x["ids"]), "max_abs_vector_diff": vec, "vector_atol": FLOAT16_ATOL,
            "max_rel_loss_diff": loss, "loss_rtol": LOSS_RTOL,
            "max_rel_norm_diff": norm, "norm_rtol": STORED_NORM_RTOL}
    same["equal"] = bool(same["ids"] and same["text"] and same["n_tokens"] and
                         vec <= FLOAT16_ATOL and loss <= LOSS_RTOL and norm <= STORED_NORM_RTOL)
    return f"kill-{a.lines}", {
        "lines": a.lines, "shards": n_shards, "killed_rank": 1,
        "killed_after_s": round(killed_at, 1), "complete_when_killed": done,
        "complete_after_kill": complete_after_kill, "first_run_returncode": proc.returncode,
        "first_run_error_tail": err.strip().splitlines()[-1:] if err.strip() else [],
        "rerun": {"ranks": 1, "omp_threads": 2, "seconds": round(time.perf_counter() - t1, 1),
                  "summary": summary},
        "against_uninterrupted": same, "target_met": same["equal"] and not summary["scanned"]}


def stage_scan(a) -> tuple[str, dict]:
    """The corpus scan alone in this process (1 part: what one rank does per byte of its
    range), timed: MB/s of JSON Lines read, validated and tokenized; median of 3."""
    from transformers import AutoTokenizer
    from tda.indexer.scan import scan_corpus, token_counter
    from tda.schemas.corpus import CorpusOptions
    corpus = corpus_of(a.lines, Path(a.work), Path(a.corpus))
    count = token_counter(AutoTokenizer.from_pretrained(a.model))
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        scan = scan_corpus([corpus], CorpusOptions(), count, 256, a.shard_size, parts=1)
        seconds.append(time.perf_counter() - t0)
    size = corpus.stat().st_size
    best = statistics.median(seconds)
    return "scan", {"corpus_bytes": size, "documents": scan.documents, "tokens": scan.tokens,
                    "seconds": [round(x, 2) for x in seconds],
                    "mb_per_s_median": round(size / best / 1e6, 2),
                    "tokens_per_s_median": round(scan.tokens / best, 0)}


def main() -> None:
    if sys.argv[1:3] == ["worker", "--rss-dir"] and sys.argv[4:5] == ["--"]:
        worker(sys.argv[3], sys.argv[5:])     # worker --rss-dir DIR -- tda's arguments
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["build", "compare", "kill", "scan"])
    p.add_argument("--lines", type=int, default=0, help="first N corpus lines (0: all)")
    p.add_argument("--small", type=int, default=7000)
    p.add_argument("--large", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--corpus", default=str(ARTIFACT / "corpus.jsonl"))
    p.add_argument("--model", default=str(ARTIFACT / "model"))
    p.add_argument("--work", default="/tmp/tda-index-scale")
    p.add_argument("--json-out", default=str(REPO / "bench" / "results" / "index_scale.json"))
    a = p.parse_args()
    key, result = {"build": stage_build, "compare": stage_compare, "kill": stage_kill,
                   "scan": stage_scan}[a.stage](a)
    save(Path(a.json_out), key, result)
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}, indent=1))


if __name__ == "__main__":
    main()
