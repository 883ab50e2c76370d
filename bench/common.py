"""Shared benchmark fixtures: real sentences and small trained models, cached in .cache/bench."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TDA_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / ".cache" / "bench"


def sentences(n: int, offset: int = 0) -> list[str]:
    from tda.evaluation.lama import read_sentences
    return read_sentences(DATA / "lama-trex", offset + n)[offset:]


def write_corpus(path: Path, texts: list[str]) -> Path:
    """``texts`` as a JSON Lines corpus at ``path``, ids ``s0``, ``s1``, ... in order."""
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"s{i}", "text": t}) + "\n")
    return path


def trained_model(name: str, arch: str, preset: str, vocab: int, n_train: int,
                  epochs: int = 1) -> Path:
    """A model trained on the first ``n_train`` LAMA sentences with AdamW; its directory holds
    the model, the tokenizer and ``optimizer.pt`` (an id-keyed torch state_dict). Cached."""
    out = CACHE / name
    if (out / "optimizer.pt").is_file():
        return out
    from tda.evaluation.models import new_model
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    from tda.evaluation.train import train_lm

    texts = sentences(n_train)
    tok = train_bpe_tokenizer(texts, vocab_size=vocab)
    model = new_model(arch, preset, tok)
    result = train_lm(model, tok, texts, epochs=epochs, batch_size=32, lr=2e-3)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    state = result.optimizer.state_dict()
    for g in state["param_groups"]:
        g.pop("param_names", None)
    torch.save(state, out / "optimizer.pt")
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Runs a command and writes its peak RSS (KiB) to argv[1]. A fresh, small parent: a child
# forked straight from a large benchmark process would inherit that process's RSS high-water
# mark in its own ru_maxrss (Linux records the old address space's peak at exec).
_RSS_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


def run_peak_rss(cmd: list[str], env: dict, log: Path) -> tuple[float, str, float]:
    """Run ``cmd`` (stderr to ``log``): (wall seconds, its stdout, its peak RSS in MiB, the
    largest of the command and its children). Raises with the log's tail if it fails."""
    import subprocess
    import sys
    rss = log.with_suffix(".rss")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, str(rss)] + cmd,
                              stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {log.read_text()[-2000:]}")
    return seconds, proc.stdout, int(rss.read_text()) / 1024


def best_of(fn, rounds: int) -> float:
    """Fastest wall time of ``rounds`` calls of fn(), seconds."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Fastest wall time (s) of each fn over ``rounds`` rounds, each round running every fn
    once in turn, so slow spells of a shared machine hit all of them."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def wait_healthy(proc, url: str, stderr_tail, timeout_s: float = 300) -> float:
    """Poll ``url``/health until 200; seconds it took. Raises with ``stderr_tail()`` (the
    server's last words) if the process exits, or after ``timeout_s``."""
    import httpx
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tda serve exited: {stderr_tail()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        if time.perf_counter() - start > timeout_s:
            raise RuntimeError(f"tda serve did not come up in {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_server(proc, grace_s: float = 60) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` seconds; waits for the exit either way."""
    import signal
    import subprocess
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_threads(threads) -> float:
    """Start every thread, join them all; wall seconds from the first start to the last join."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
