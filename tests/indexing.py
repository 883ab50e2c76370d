"""Helpers for index tests: real corpora, running `tda index`, reading an index back."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tda.store.index import IndexStore
from tda.tests.tolerances import FLOAT16_ATOL, LOSS_RTOL, STORED_NORM_RTOL


def write_corpus(path: Path, texts: list[str], long_texts: list[list[str]] = ()) -> Path:
    """JSON Lines with ids s0, s1, ... for ``texts``, then one long document per list of
    sentences in ``long_texts`` (ids long0, long1, ...)."""
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"s{i}", "text": t}) + "\n")
        for j, parts in enumerate(long_texts):
            f.write(json.dumps({"id": f"long{j}", "text": " ".join(parts)}) + "\n")
    return path


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    e.pop("RANK", None), e.pop("WORLD_SIZE", None)
    return e


def tda(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m tda.cli ARGS` in a subprocess."""
    out = subprocess.run([sys.executable, "-m", "tda.cli", *args], capture_output=True,
                         text=True, env=env(), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"tda {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out


def torchrun(nproc: int, *args: str, extra: tuple[str, ...] = ("--standalone",),
             timeout: float = 600, background: bool = False, check: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *extra,
           "-m", "tda.cli", *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env())
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path | None = None,
                 timeout: float = 180) -> None:
    """Wait until the server ``proc`` answers ``url``/health; RuntimeError (with the end of
    its ``log``) when it exits or does not come up within ``timeout`` seconds."""
    import time

    import httpx
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tda exited {proc.returncode}:\n"
                               f"{log.read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"tda did not come up at {url}:\n{log.read_text()[-3000:] if log else ''}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process (kill it after 30 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_index(path) -> dict[str, np.ndarray]:
    """Every complete shard's rows, concatenated in shard order."""
    store = IndexStore.open(path)
    fields = ("vectors", "ids", "doc_ids", "text", "n_tokens", "loss", "norm")
    shards = [store.read_shard(i, fields) for i in sorted(store.complete_shards())]
    return {f: np.concatenate([s[f] for s in shards]) for f in fields}


def assert_same_index(a, b, atol: float = FLOAT16_ATOL) -> None:
    """Same ids in the same order; vectors equal to float16 rounding; losses and norms close."""
    x, y = read_index(a), read_index(b)
    assert x["ids"].tolist() == y["ids"].tolist()
    assert x["text"].tolist() == y["text"].tolist()
    np.testing.assert_array_equal(x["n_tokens"], y["n_tokens"])
    np.testing.assert_allclose(x["vectors"], y["vectors"], atol=atol, rtol=0)
    np.testing.assert_allclose(x["loss"], y["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(x["norm"], y["norm"], rtol=STORED_NORM_RTOL)


def fact_index(tmp_path_factory, model_dir: Path, facts: int, shard_size: int,
               projection_dim: int) -> Path:
    """A TrackStar + BM25 index of ``facts`` real LAMA fact sentences (max_len 128), built by
    the CLI: the shared fixture of the searcher, server and profile tests."""
    from tda.tests import helpers
    texts = [s for _, s in helpers.fact_sentences(facts)]
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl", texts)
    out = tmp_path_factory.mktemp("index") / "index"
    tda("index", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(out),
        "--shard-size", str(shard_size), "--max-len", "128",
        "--projection-dim", str(projection_dim), "--no-progress")
    return out
