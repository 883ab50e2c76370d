"""Featurize throughput on this machine vs the floors, vs a naive loop (and vs bergson).

Prints JSON. All timings in one run on the same batches of real LAMA sentences with a ~10M
parameter Llama-style model trained briefly with AdamW (cached in .cache/bench):
- featurize: tda's Featurizer, factored optimizer correction, k = 16 (and k = 8);
- floor_train: plain forward + backward with every weight requiring grad;
- floor_frozen: forward + backward through activations only (weights frozen);
- naive: per-example loop, full autograd gradient, exact correction, materialized projection.
Ratios are tokens/s over tokens/s, measured in this run (the machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.engine import Featurizer, TrackStarConfig, collate, load_model  # noqa: E402
from tda.engine.batching import per_example_loss  # noqa: E402
from tda.engine.projection import projection_matrix  # noqa: E402


def batches_of(featurizer, texts, batch_size):
    seqs = sorted(featurizer.example_sequences(texts), key=lambda s: len(s.ids))
    return [collate(seqs[i:i + batch_size], featurizer.pad_id)
            for i in range(0, len(seqs), batch_size)]


def run_featurize(f, batches):
    for b in batches:
        f.featurize_batch(b)


def run_floor_train(model, batches):
    for b in batches:
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask.long(),
                       position_ids=b.position_ids, use_cache=False).logits
        per_example_loss(logits, b.labels).sum().backward()
        model.zero_grad(set_to_none=True)


def run_floor_frozen(model, batches):
    leaf = {}

    def make_leaf(module, inputs, output):
        leaf["x"] = output.detach().requires_grad_(True)
        return leaf["x"]

    handle = model.get_input_embeddings().register_forward_hook(make_leaf)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(False)
    try:
        for b in batches:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask.long(),
                           position_ids=b.position_ids, use_cache=False).logits
            torch.autograd.grad(per_example_loss(logits, b.labels).sum(), leaf["x"])
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)


def run_naive(f: Featurizer, seqs):
    """One example at a time: full per-weight gradient, G / (sqrt(V) + eps), P_out^T G P_in."""
    cfg = f.config
    modules = dict(f.model.named_modules())
    weights = [modules[w.name].weight for w in f.weights]
    mats = [(projection_matrix(cfg.seed, w.name, "out", w.out_features, cfg.projection_dim),
             projection_matrix(cfg.seed, w.name, "in", w.in_features, cfg.projection_dim),
             f.second_moments[w.param_name].dense().float().sqrt() + cfg.epsilon)
            for w in f.weights]
    for s in seqs:
        b = collate([s], f.pad_id)
        logits = f.model(input_ids=b.input_ids, position_ids=b.position_ids,
                         use_cache=False).logits
        grads = torch.autograd.grad(per_example_loss(logits, b.labels).sum(), weights)
        phi = torch.cat([(p_out.t() @ ((g.t() if w.stored_transposed else g) / den) @ p_in)
                         .flatten() for g, w, (p_out, p_in, den) in zip(grads, f.weights, mats)])
        phi / phi.norm()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=384, help="corpus size (real sentences)")
    ap.add_argument("--naive-sentences", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="best of this many timings each")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model_dir = common.trained_model("llama10m", "llama", "bench10m", vocab=8192, n_train=4000)
    model, tok = load_model(model_dir)
    texts = common.sentences(args.sentences, offset=4000)
    n_params = sum(p.numel() for p in model.parameters())
    result = {"model": {"arch": "llama", "preset": "bench10m", "parameters": n_params},
              "threads": args.threads}

    f16 = Featurizer(model, tok, TrackStarConfig(projection_dim=16), optimizer_state=model_dir)
    f8 = Featurizer(model, tok, TrackStarConfig(projection_dim=8), optimizer_state=model_dir)
    batches = batches_of(f16, texts, args.batch_size)
    tokens = int(sum(b.n_tokens.sum() for b in batches))
    result["corpus"] = {"examples": len(texts), "tokens": tokens, "batches": len(batches)}

    run_featurize(f16, batches[:2])          # warm up
    timings = {
        "featurize_k16": common.best_of(lambda: run_featurize(f16, batches), args.rounds),
        "featurize_k8": common.best_of(lambda: run_featurize(f8, batches), args.rounds),
        "floor_train": common.best_of(lambda: run_floor_train(model, batches), args.rounds),
        "floor_frozen": common.best_of(lambda: run_floor_frozen(model, batches), args.rounds),
    }
    tps = {k: tokens / v for k, v in timings.items()}
    naive_seqs = f8.example_sequences(texts[:args.naive_sentences])
    naive_tokens = sum(len(s.ids) for s in naive_seqs)
    naive_time = common.best_of(lambda: run_naive(f8, naive_seqs), 1)
    tps["naive_k8"] = naive_tokens / naive_time
    result["dims"] = {"featurize_k16": f16.dim, "featurize_k8": f8.dim, "naive_k8": f8.dim}
    result["tokens_per_s"] = {k: round(v, 1) for k, v in tps.items()}
    result["ratios"] = {
        "featurize_k16_vs_floor_frozen": round(tps["featurize_k16"] / tps["floor_frozen"], 3),
        "featurize_k16_vs_floor_train": round(tps["featurize_k16"] / tps["floor_train"], 3),
        "featurize_k8_vs_floor_frozen": round(tps["featurize_k8"] / tps["floor_frozen"], 3),
        "featurize_k8_vs_naive_k8": round(tps["featurize_k8"] / tps["naive_k8"], 1),
    }
    result["targets"] = {"vs_floor_frozen": ">= 0.9", "vs_naive": ">= 20"}
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
