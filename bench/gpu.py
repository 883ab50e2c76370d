"""A prepared GPU check: featurize throughput of a ~1B Llama-style model, alone and under FSDP2,
FAISS GPU exact search, and `tda plan`'s memory prediction against the GPU's own count.

Run it once on a CUDA machine, as is (nothing to download: random weights from a config):

    python bench/gpu.py --out bench/results/gpu.json

It prints one JSON object. Each part runs in its own process with its own time limit, so one
that fails, hangs or cannot run (no GPU, no faiss GPU build, one GPU only) is reported as
``{"status": "failed" | "timed out" | "skipped", ...}`` and the others still run:

- ``single``: on cuda:0, a Llama-3.2-1B-shaped model (hidden 2048, 16 blocks, 32 heads / 8
  key-value heads, MLP 8192, vocabulary 128,256, tied head: 1.24B parameters), random weights,
  bfloat16, ``max_len`` 2048, k = 16, factored correction (second moments of ones), batches of
  ``--batch-tokens`` (full 2,048-token rows of random ids). Featurize (``Featurizer.
  featurize_batch``) against the floor, a plain forward + backward through the activations with
  frozen weights (bench/featurize.py's ``run_floor_frozen``) on the same batches, interleaved,
  ``--rounds`` rounds: tokens/s (median over rounds) and their ratio (the engine's cost over the
  least any activation-gradient method pays). Also the peak memory the CUDA caching allocator
  handed out (torch.cuda.max_memory_allocated) above the weights and projections.
- ``fsdp``: the same model and measurement under FSDP2 (``indexer/distributed.fully_shard_model``)
  over every visible GPU with NCCL (torchrun, one process per GPU; one GPU: a world of 1, which
  still runs the FSDP code path); tokens/s summed over ranks.
- ``faiss``: exact inner-product search of ``--faiss-queries`` queries, top 10, over 10^6 random
  unit vectors of 1,024 dimensions: the searcher's GPU path (IndexFlatIP cloned to all GPUs,
  float16 storage, as ``searcher/dense.py``) against the CPU IndexFlatIP; seconds to add and to
  search, queries/s, speed-up, and the overlap of the two top-10 lists.
- ``plan``: ``tda plan --device cuda`` for the single part's settings (on the CPU: its traces of
  narrow copies of the model); the orchestrator divides the measured activation memory by the
  predicted one.

``--cpu-tiny`` runs every part at toy size on CPUs (gloo for FSDP, 2 ranks; the FAISS GPU side is
skipped without a GPU): the test suite runs it so this script cannot rot. Budget on one
H100-class GPU: under 5 minutes in all (per-part limits: ``--part-timeout``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PARTS = ("single", "fsdp", "faiss", "plan")

GPU_MODEL = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                 num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                 max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
                 rms_norm_eps=1e-5)
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=True)
SIZES = {  # max_len, batch_tokens, batches, faiss rows, dims, queries
    "gpu": dict(max_len=2048, batch_tokens=8192, batches=6, rows=1_000_000, dim=1024,
                queries=1024),
    "tiny": dict(max_len=64, batch_tokens=256, batches=3, rows=10_000, dim=64, queries=64),
}


# ---------------------------------------------------------------- featurize parts
def llama_config(tiny: bool):
    from transformers import LlamaConfig
    return LlamaConfig(**(TINY_MODEL if tiny else GPU_MODEL), bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)


def unit_moments(model):
    """Second moments of ones (row and column factors) for every 2-D parameter: the factored
    correction's arithmetic without an optimizer state."""
    import torch

    from tda.engine.second_moments import Moment, SecondMoments
    return SecondMoments({n: Moment(row=torch.ones(p.shape[0], dtype=torch.float64),
                                    col=torch.ones(p.shape[1], dtype=torch.float64))
                          for n, p in model.named_parameters() if p.dim() == 2},
                         source="bench/gpu.py: ones", optimizer="adam")


def random_batches(n: int, rows: int, max_len: int, vocab: int, seed: int):
    import torch

    from tda.engine import collate
    from tda.engine.batching import TokenSequence
    gen = torch.Generator().manual_seed(seed)
    return [collate([TokenSequence(tuple(torch.randint(3, vocab, (max_len,),
                                                       generator=gen).tolist()), 1)
                     for _ in range(rows)], 0) for _ in range(n)]


def time_featurize(featurizer, model, batches, rounds: int, device, ranks=None) -> dict:
    """Interleaved rounds of featurize and the frozen floor over ``batches``; tokens/s each
    round (tokens of every rank over the slowest rank's time with ``ranks``)."""
    import torch

    from featurize import run_featurize, run_floor_frozen
    from tda.indexer import distributed as D

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if ranks is not None:
            D.barrier(ranks)

    moved = [b.to(device) for b in batches]
    tokens = int(sum(int(b.n_tokens.sum()) for b in batches))
    total = tokens * (ranks.world if ranks is not None else 1)
    run_featurize(featurizer, moved[:1])            # warm-up: kernels, allocator, NCCL
    run_floor_frozen(model, moved[:1])
    per_round = {"featurize": [], "floor_frozen": []}
    for _ in range(rounds):
        for name, fn in (("featurize", lambda: run_featurize(featurizer, moved)),
                         ("floor_frozen", lambda: run_floor_frozen(model, moved))):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            per_round[name].append(total / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in per_round.items()}
    return {"tokens_per_round": total,
            "featurize_tokens_per_s": round(med["featurize"], 1),
            "floor_frozen_tokens_per_s": round(med["floor_frozen"], 1),
            "ratio_featurize_over_floor": round(med["featurize"] / med["floor_frozen"], 3),
            "rounds": {k: [round(x, 1) for x in v] for k, v in per_round.items()}}


def part_single(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from tda.engine import Featurizer, TrackStarConfig
    size = SIZES["tiny" if args.cpu_tiny else "gpu"]
    if not args.cpu_tiny and not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA device (torch.cuda.is_available() is "
                                              "False)"}
    device = torch.device("cpu" if args.cpu_tiny else "cuda:0")
    dtype = "float32" if args.cpu_tiny else "bfloat16"
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(llama_config(args.cpu_tiny),
                                                 dtype=getattr(torch, dtype)).eval()
    track = TrackStarConfig(max_len=size["max_len"], projection_dim=16, dtype=dtype)
    from tda.engine.tracking import candidate_weights   # random ids, no tokenizer to probe with
    featurizer = Featurizer(model, types.SimpleNamespace(pad_token_id=0, eos_token_id=2), track,
                            optimizer_state=unit_moments(model),
                            tracking=candidate_weights(model, track))
    rows = size["batch_tokens"] // size["max_len"]
    batches = random_batches(size["batches"], rows, size["max_len"],
                             model.config.vocab_size, seed=0)
    out = {"status": "ok", "device": str(device),
           "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype,
           "max_len": size["max_len"], "batch_tokens": rows * size["max_len"], "k": 16,
           "dim": featurizer.dim}
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        featurizer.featurize_batch(batches[0])
        torch.cuda.synchronize()
        out["memory"] = {"weights_and_projections_bytes": before,
                         "featurize_peak_bytes": torch.cuda.max_memory_allocated(device),
                         "activations_bytes": torch.cuda.max_memory_allocated(device) - before,
                         "reserved_bytes": torch.cuda.memory_reserved(device)}
    out.update(time_featurize(featurizer, model, batches, args.rounds, device))
    return out


def part_fsdp(args) -> dict:
    """Runs on every rank under torchrun; rank 0's dict is the part's result."""
    import torch
    from transformers import AutoModelForCausalLM

    from tda.engine import Featurizer, TrackStarConfig
    from tda.indexer import distributed as D
    size = SIZES["tiny" if args.cpu_tiny else "gpu"]
    ranks = D.init(timeout_s=args.part_timeout)
    try:
        dtype = "float32" if args.cpu_tiny else "bfloat16"
        torch.manual_seed(0)            # the same weights on every rank, made on the CPU
        model = AutoModelForCausalLM.from_config(llama_config(args.cpu_tiny),
                                                 dtype=getattr(torch, dtype)).eval()
        moments = unit_moments(model)
        params = sum(p.numel() for p in model.parameters())
        model = D.fully_shard_model(model, ranks)
        track = TrackStarConfig(max_len=size["max_len"], projection_dim=16, dtype=dtype)
        from tda.engine.tracking import candidate_weights   # no tokenizer to probe with
        featurizer = Featurizer(model, types.SimpleNamespace(pad_token_id=0, eos_token_id=2),
                                track, optimizer_state=moments,
                                tracking=candidate_weights(model, track))
        rows = size["batch_tokens"] // size["max_len"]
        batches = random_batches(size["batches"], rows, size["max_len"], llama_config(
            args.cpu_tiny).vocab_size, seed=1 + ranks.rank)
        result = time_featurize(featurizer, model, batches, args.rounds, ranks.device, ranks)
        return {"status": "ok", "world": ranks.world,
                "backend": torch.distributed.get_backend() if ranks.distributed else "none",
                "device": ranks.device.type, "parameters": params, "dtype": dtype, **result}
    finally:
        D.shutdown()


def part_faiss(args) -> dict:
    import numpy as np
    try:
        import faiss
    except ImportError as e:
        return {"status": "skipped", "reason": f"faiss is not installed ({e})"}
    size = SIZES["tiny" if args.cpu_tiny else "gpu"]
    n, d, m, k = size["rows"], size["dim"], args.faiss_queries or size["queries"], 10
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, d), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.standard_normal((m, d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out = {"rows": n, "dim": d, "queries": m, "k": k, "faiss": faiss.__version__,
           "gpus": faiss.get_num_gpus()}
    start = time.perf_counter()
    cpu = faiss.IndexFlatIP(d)
    cpu.add(base)
    out["cpu_add_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    _, cpu_ids = cpu.search(queries, k)
    out["cpu_search_s"] = round(time.perf_counter() - start, 3)
    out["cpu_queries_per_s"] = round(m / out["cpu_search_s"], 1)
    if faiss.get_num_gpus() == 0:
        return {"status": "skipped", "reason": "faiss has no GPU (faiss-cpu, or no GPU "
                                               "visible): CPU side only", **out}
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(base)
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True
    gpu = faiss.index_cpu_to_all_gpus(flat, options)
    out["gpu_add_s"] = round(time.perf_counter() - start, 3)
    gpu.search(queries[:8], k)                      # warm-up
    start = time.perf_counter()
    _, gpu_ids = gpu.search(queries, k)
    out["gpu_search_s"] = round(time.perf_counter() - start, 3)
    out["gpu_queries_per_s"] = round(m / out["gpu_search_s"], 1)
    out["speedup_search"] = round(out["cpu_search_s"] / out["gpu_search_s"], 1)
    out["top10_overlap"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in
                                                zip(cpu_ids.tolist(), gpu_ids.tolist())])), 4)
    return {"status": "ok", **out}


def part_plan(args) -> dict:
    from tda.indexer.plan import make_plan
    from tda.schemas.config import TrackStarConfig
    from tda.schemas.options import IndexOptions, PlanOptions
    size = SIZES["tiny" if args.cpu_tiny else "gpu"]
    dtype = "float32" if args.cpu_tiny else "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(llama_config(args.cpu_tiny).to_json_string())
        rows = size["batch_tokens"] // size["max_len"]
        plan = make_plan(str(config), [], PlanOptions(tokens=rows * size["max_len"] * 1000,
                                                      device="cuda"),
                         TrackStarConfig(max_len=size["max_len"], dtype=dtype),
                         IndexOptions(batch_tokens=rows * size["max_len"], bm25=False))
    d = plan.device
    return {"status": "ok", "predicted_activations_bytes": d["activations"],
            "predicted_weights_bytes": d["weights"],
            "predicted_projections_bytes": d["projections"],
            "predicted_device_total_bytes": d["total"], "method": plan.assumptions[0]}


# ---------------------------------------------------------------- orchestration
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_part(name: str, args) -> dict:
    """One part in a child process (torchrun for fsdp), killed with its process group after
    ``--part-timeout`` seconds; its last stdout line is its JSON."""
    script = [str(Path(__file__).resolve()), "--part", name, "--rounds", str(args.rounds),
              "--part-timeout", str(args.part_timeout)] + (["--cpu-tiny"] if args.cpu_tiny
                                                            else []) + \
        (["--faiss-queries", str(args.faiss_queries)] if args.faiss_queries else [])
    if name == "fsdp":
        world = 2 if args.cpu_tiny else _cuda_count()
        if world == 0:
            return {"status": "skipped", "reason": "no CUDA device"}
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}"] + script
    else:
        cmd = [sys.executable] + script
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.cpu_tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.part_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"status": "timed out", "after_s": args.part_timeout,
                "stderr_tail": stderr[-1500:]}
    seconds = round(time.perf_counter() - start, 1)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "returncode": proc.returncode, "seconds": seconds,
                "stderr_tail": stderr[-3000:]}
    result = json.loads(lines[-1])
    result["seconds"] = seconds
    return result


def _cuda_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install: report no devices
        return 0


def environment() -> dict:
    import torch
    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda_devices": _cuda_count(), "python": sys.version.split()[0]}
    if info["cuda_available"]:
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    try:
        import faiss
        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus()
    except ImportError:
        info["faiss"] = None
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-tiny", action="store_true", help="toy sizes on CPUs (the tests)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--part-timeout", type=float, default=120.0,
                    help="seconds each part may take before it is killed")
    ap.add_argument("--faiss-queries", type=int, default=0, help="0: 1,024 (64 tiny)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)    # internal: one part
    args = ap.parse_args()
    if args.part:
        try:
            result = {"single": part_single, "fsdp": part_fsdp, "faiss": part_faiss,
                      "plan": part_plan}[args.part](args)
        except Exception as e:  # noqa: BLE001 - reported in the JSON, the other parts go on
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-3000:]}
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return
    started = time.perf_counter()
    result = {"mode": "cpu-tiny" if args.cpu_tiny else "gpu", "environment": environment(),
              "parts": {}}
    for name in [p for p in args.parts.split(",") if p]:
        if name not in PARTS:
            ap.error(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
        result["parts"][name] = run_part(name, args)
        print(f"gpu.py: {name}: {result['parts'][name]['status']}", file=sys.stderr)
    parts = result["parts"]
    single, plan = parts.get("single", {}), parts.get("plan", {})
    if single.get("memory") and plan.get("status") == "ok":
        result["plan_check"] = {
            "measured_activations_bytes": single["memory"]["activations_bytes"],
            "predicted_activations_bytes": plan["predicted_activations_bytes"],
            "measured_over_predicted": round(single["memory"]["activations_bytes"]
                                             / plan["predicted_activations_bytes"], 3)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
