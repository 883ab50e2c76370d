"""`tda plan` against reality: predicted peak memory vs the measured peak RSS of `tda index`.

Prints JSON (and writes it with --out). For each configuration (model, dtype, --batch-tokens,
--max-len, corpus): ``tda plan --device cpu --json`` (its ``device.total``: on a CPU the one
memory of a rank) and the real ``tda index --no-bm25`` on the same corpus, whose peak RSS is
getrusage(RUSAGE_CHILDREN).ru_maxrss of a small wrapper process (bench/common.run_peak_rss).
ratio = predicted / measured; the target is within 25% (0.75 <= ratio <= 1.25).

Models: the real70k GPT-2 (1.35M parameters, trained; /work/artifacts/real70k, made by
bench/real70k.py) and a Llama-style model of ~91M parameters with random weights and an AdamW
state after one step (so the optimizer-state load path runs), cached in .cache/bench. Corpora:
the first lines of real70k's corpus.jsonl (real Wikipedia sentences). One shard holds the whole
corpus (--shard-size larger than it). Threads: OMP_NUM_THREADS=1.

Every configuration runs twice: with glibc malloc's defaults, and with MALLOC_MMAP_THRESHOLD_=1048576
(a fixed threshold: freed tensors go back to the system, so the RSS follows the live bytes; the
plan then counts activations x 1 instead of plan.CPU_MALLOC_FACTOR).

The "runtime" row is the fixed cost (a tiny batch): it is what plan.HOST_RUNTIME_BYTES was set
from, so it is reported but not counted as a check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

REAL70K = Path(os.environ.get("TDA_REAL70K", "/work/artifacts/real70k"))
RUNS = common.CACHE / "plan-runs"

# name, model, dtype, batch_tokens, max_len, documents, counts as a check
CONFIGS = [
    ("runtime", "gpt2", "float32", 64, 32, 40, False),
    ("gpt2-1.35M-b8192-L256", "gpt2", "float32", 8192, 256, 1000, True),
    ("gpt2-1.35M-b1024-L64", "gpt2", "float32", 1024, 64, 1000, True),
    ("llama-91M-b2048-L512", "llama", "float32", 2048, 512, 80, True),
    ("llama-91M-bf16-b4096-L128", "llama", "bfloat16", 4096, 128, 160, True),
]


def llama_model() -> Path:
    """~91M-parameter Llama (hidden 768, 12 blocks, 4,096-token vocabulary of the real70k
    tokenizer), random weights, AdamW state after one step. Cached."""
    out = common.CACHE / "plan-llama91m"
    if (out / "optimizer.pt").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(REAL70K / "model")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                      max_position_embeddings=1024, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(list(model.named_parameters()), lr=1e-4)
    ids = torch.randint(0, len(tok), (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(opt.state_dict(), out / "optimizer.pt")
    return out


def corpus(n: int) -> Path:
    path = RUNS / f"corpus-{n}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with (REAL70K / "corpus.jsonl").open() as f:
            path.write_text("".join(line for _, line in zip(range(n), f)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    models = {"gpt2": REAL70K / "model", "llama": None}
    rows = []
    runs = [(c, malloc) for c in CONFIGS for malloc in ("default", "fixed-threshold")
            if not (args.only and c[0] not in args.only.split(","))]
    for (name, arch, dtype, batch, max_len, docs, check), malloc in runs:
        env = dict(env)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        if malloc != "default":
            env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
        model = models[arch] or llama_model()
        data = corpus(docs)
        settings = ["--model", str(model), "--corpus", str(data), "--dtype", dtype,
                    "--batch-tokens", str(batch), "--max-len", str(max_len),
                    "--shard-size", str(10 * docs), "--no-bm25"]
        _, plan_out, _ = common.run_peak_rss(
            [sys.executable, "-m", "tda.cli", "plan", "--device", "cpu", "--json"] + settings,
            env, RUNS / f"{name}-{malloc}.plan.log")
        plan = json.loads(plan_out)
        out = RUNS / f"{name}.index"
        shutil.rmtree(out, ignore_errors=True)
        seconds, index_out, peak_mb = common.run_peak_rss(
            [sys.executable, "-m", "tda.cli", "index", "--out", str(out), "--no-progress",
             "--json"] + settings, env, RUNS / f"{name}-{malloc}.index.log")
        summary = json.loads(index_out)
        shutil.rmtree(out, ignore_errors=True)
        d = plan["device"]
        predicted_mb = d["total"] / 2 ** 20
        rows.append({
            "name": name, "malloc": malloc, "check": check, "model_parameters": plan["model"]["parameters"],
            "dtype": dtype, "batch_tokens": batch, "max_len": max_len,
            "documents": summary["documents"], "examples": summary["examples"],
            "tokens": summary["tokens"],
            "planned": {"documents": plan["corpus"]["documents"],
                        "examples": plan["corpus"]["examples"],
                        "tokens": plan["corpus"]["tokens"], "batch": d["batch"]},
            "predicted_mb": round(predicted_mb, 1), "measured_peak_rss_mb": round(peak_mb, 1),
            "ratio": round(predicted_mb / peak_mb, 3),
            "predicted_parts_mb": {k: round(d[k] / 2 ** 20, 1) for k in (
                "runtime", "weights", "projections", "activations", "activations_resident",
                "second_moments_while_loading", "second_moments_kept", "shard_buffers")},
            "predicted_peak_phase": d["peak_phase"], "index_seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    checks = [r for r in rows if r["check"]]
    result = {"configurations": rows, "target": "0.75 <= predicted / measured <= 1.25",
              "checks": len(checks),
              "within_25_percent": sum(0.75 <= r["ratio"] <= 1.25 for r in checks),
              "max_abs_error": round(max((abs(r["ratio"] - 1) for r in checks), default=0), 3)}
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
