"""Run EleutherAI's bergson (`bergson build`) next to tda, in its own virtual environment.

bergson is never a tda dependency: ``ensure_bergson`` installs it into .cache/bench/bergson-venv
beside the CPU torch (pinned so pip does not swap in a CUDA build; bergson pulls torchvision and
torchaudio, which do not load against that torch and are removed: bergson itself does not use
them). Runs are offline (HF_*_OFFLINE) and on the CPU; ``build`` times bergson's own collection loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

VENV = common.CACHE / "bergson-venv"
TORCH = "torch==2.13.0"


def ensure_bergson() -> Path:
    """The bergson executable, installing it on first use (about a minute)."""
    exe = VENV / "bin" / "bergson"
    if exe.is_file():
        return exe
    pin = common.CACHE / "bergson-torch-pin.txt"
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(TORCH + "\n")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    for cmd in ([sys.executable, "-m", "venv", str(VENV)], pip + [TORCH],
                pip + ["bergson", "-c", str(pin)],
                [str(VENV / "bin" / "python"), "-m", "pip", "uninstall", "-y", "torchvision",
                 "torchaudio"]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return exe


def version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('bergson'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


# Run inside bergson's venv: `bergson build` with its collection loop timed. bergson runs a
# single CPU process in-process, so the patched method is the loop itself (forward, backward,
# projection and writing of every batch), without start-up, model loading or tokenization.
TIMED_MAIN = """
import json, sys, time
from bergson.collector.collector import CollectorComputer
out, sys.argv = sys.argv[1], ["bergson"] + sys.argv[2:]
run = CollectorComputer.run_with_collector_hooks
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return run(self, *args, **kwargs)
    finally:
        with open(out, "a") as f:
            f.write(json.dumps({"collect_seconds": time.perf_counter() - start}) + "\\n")
CollectorComputer.run_with_collector_hooks = timed
from bergson.__main__ import main
sys.exit(main())
"""


def build(model_dir: Path, texts: list[str], run_dir: Path, optimizer_state: Path | None,
          token_batch: int) -> dict:
    """One `bergson build`: its collection loop's seconds (``collect_seconds``), the whole
    process's wall seconds, and its figures."""
    data = run_dir.with_suffix(".jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    timing = run_dir.with_suffix(".timing.jsonl")
    timing.unlink(missing_ok=True)
    ensure_bergson()
    cmd = [str(VENV / "bin" / "python"), "-c", TIMED_MAIN, str(timing), "build", str(run_dir),
           "--model", str(model_dir),
           "--dataset", str(data), "--prompt_column", "text", "--precision", "fp32",
           "--projection_dim", "16", "--unit_normalize", "true", "--truncation", "true",
           "--token_batch_size", str(token_batch), "--overwrite", "true"]
    if optimizer_state is not None:
        cmd += ["--optimizer_state", str(optimizer_state)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"bergson build failed:\n{out.stderr[-3000:]}")
    loops = [json.loads(line)["collect_seconds"] for line in timing.read_text().splitlines()]
    if len(loops) != 1:
        raise RuntimeError(f"bergson ran its collection loop {len(loops)} times, expected once")
    info = json.loads((run_dir / "info.json").read_text())
    return {"seconds": seconds, "collect_seconds": loops[0], "rows": info["num_grads"],
            "dim": sum(info["grad_sizes"].values()),
            "index_bytes": (run_dir / "gradients.bin").stat().st_size,
            "dtype": info.get("base_dtype", "float32")}
