"""Featurize throughput on this machine vs the floors, vs a naive loop (and vs bergson).

Prints JSON. All timings in one run on the same batches of real LAMA sentences with a ~10M
parameter Llama-style model trained briefly with AdamW (cached in .cache/bench):
- featurize: tda's Featurizer, factored optimizer correction, k = 16 (and k = 8);
- floor_train: plain forward + backward with every weight requiring grad;
- floor_frozen: forward + backward through activations only (weights frozen);
- naive: per-example loop, full autograd gradient, exact correction, materialized projection;
- bergson (unless --no-bergson): `bergson build --projection_dim 16 --unit_normalize true` with
  and without its Adam normalizer (--optimizer_state), against tda on the same 56 weights
  (LM head excluded, as bergson does), the same texts and the same 512-token batches. Each
  tool's collection loop is timed (inside bergson's process, see bench/bergson.py), so
  start-up, model loading and tokenization never enter; rounds are interleaved.
Ratios are tokens/s over tokens/s, measured in this run (the machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.engine import Featurizer, TrackStarConfig, collate, load_model  # noqa: E402
from tda.engine.batching import per_example_loss  # noqa: E402
from tda.engine.projection import projection_matrix  # noqa: E402


def batches_of(featurizer, texts, batch_tokens):
    """The indexer's batches: length-bucketed, at most ``batch_tokens`` padded tokens each."""
    from tda.indexer.batching import budget_batches
    seqs = featurizer.example_sequences(texts)
    return [collate([seqs[i] for i in idx], featurizer.pad_id)
            for idx in budget_batches(seqs, batch_tokens)]


def run_featurize(f, batches):
    for b in batches:
        f.featurize_batch(b)


def run_floor_train(model, batches):
    for b in batches:
        logits = model(**b.model_inputs()).logits       # the inputs featurize gives
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
            logits = model(**b.model_inputs()).logits
            torch.autograd.grad(per_example_loss(logits, b.labels).sum(), leaf["x"])
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)


def run_naive(f: Featurizer, seqs):
    """The textbook loop, one example at a time: loss.backward() fills every parameter's .grad
    (the full gradient), then G / (sqrt(V) + eps) and P_out^T G P_in for each tracked weight."""
    cfg = f.config
    modules = dict(f.model.named_modules())
    weights = [modules[w.name].weight for w in f.weights]
    mats = [(projection_matrix(cfg.seed, w.name, "out", w.out_features, cfg.projection_dim),
             projection_matrix(cfg.seed, w.name, "in", w.in_features, cfg.projection_dim),
             f.second_moments[w.param_name].dense().float().sqrt() + f.epsilon(w))
            for w in f.weights]
    out = []
    for s in seqs:
        b = collate([s], f.pad_id)
        f.model.zero_grad(set_to_none=True)
        logits = f.model(input_ids=b.input_ids, position_ids=b.position_ids,
                         use_cache=False).logits
        per_example_loss(logits, b.labels).sum().backward()
        phi = torch.cat([(p_out.t() @ ((p.grad.t() if w.stored_transposed else p.grad) / den)
                          @ p_in).flatten()
                         for p, w, (p_out, p_in, den) in zip(weights, f.weights, mats)])
        out.append(phi / phi.norm())
    f.model.zero_grad(set_to_none=True)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=384, help="corpus size (real sentences)")
    ap.add_argument("--naive-sentences", type=int, default=24)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds; each round times every method once, in turn (interleaved, "
                         "so drift in machine speed hits all alike); the best round counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--bergson", action=argparse.BooleanOptionalAction, default=True,
                    help="also run bergson (installed into .cache/bench/bergson-venv)")
    ap.add_argument("--bergson-sentences", type=int, default=800,
                    help="texts of the bergson comparison")
    ap.add_argument("--bergson-rounds", type=int, default=2,
                    help="interleaved rounds of the bergson comparison (best counts)")
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
    exact8 = Featurizer(model, tok, TrackStarConfig(projection_dim=8, correction="exact"),
                        optimizer_state=model_dir)     # full V, for the naive loop
    batches = batches_of(f16, texts, args.batch_tokens)
    tokens = int(sum(b.n_tokens.sum() for b in batches))
    result["corpus"] = {"examples": len(texts), "tokens": tokens, "batches": len(batches)}

    run_featurize(f16, batches[:2])          # warm up
    timings = common.interleaved({
        "featurize_k16": lambda: run_featurize(f16, batches),
        "featurize_k8": lambda: run_featurize(f8, batches),
        "floor_train": lambda: run_floor_train(model, batches),
        "floor_frozen": lambda: run_floor_frozen(model, batches),
    }, args.rounds)
    tps = {k: tokens / v for k, v in timings.items()}
    naive_seqs = f8.example_sequences(texts[:args.naive_sentences])
    naive_tokens = sum(len(s.ids) for s in naive_seqs)
    naive_time = common.best_of(lambda: run_naive(exact8, naive_seqs), 1)
    agree = (run_naive(exact8, naive_seqs[:4]) * exact8.featurize(naive_seqs[:4]).vectors).sum(1)
    assert agree.min() > 0.999, f"naive loop disagrees with the exact featurizer: {agree}"
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
    if args.bergson:
        result["bergson"] = compare_bergson(model, tok, model_dir, args.bergson_sentences,
                                            args.bergson_rounds)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    common.emit(result, args.out)


def compare_bergson(model, tok, model_dir: Path, n: int, rounds: int) -> dict:
    """tokens/s of bergson's collection loop (timed inside its process: no start-up, model
    loading or tokenization) and of tda's featurize loop on the same ``n`` texts in 512-token
    batches, rounds interleaved (bergson with Adam, tda, bergson plain, ...); the best round
    of each counts."""
    import bergson
    texts = common.sentences(n, offset=8000)
    cfg = TrackStarConfig(projection_dim=16, exclude=r"lm_head", max_len=512)
    f = Featurizer(model, tok, cfg, optimizer_state=model_dir)
    batches = batches_of(f, texts, 512)
    tokens = int(sum(b.n_tokens.sum() for b in batches))
    best: dict[str, dict] = {}
    for r in range(rounds):
        for name in ("bergson_adam", "tda_factored", "bergson_plain"):
            if name == "tda_factored":
                start = time.perf_counter()
                run_featurize(f, batches)
                res = {"collect_seconds": time.perf_counter() - start, "dim": f.dim,
                       "dtype": "float16", "index_bytes": 2 * f.dim * len(texts),
                       "rows": len(texts)}
            else:
                state = model_dir if name == "bergson_adam" else None
                res = bergson.build(model_dir, texts, common.CACHE / "bergson-runs" / name,
                                    state, 512)
            res["round_seconds"] = [round(res["collect_seconds"], 2)]
            if name in best:
                res["round_seconds"] = best[name]["round_seconds"] + res["round_seconds"]
            if name not in best or res["collect_seconds"] < best[name]["collect_seconds"]:
                best[name] = res
            else:
                best[name]["round_seconds"] = res["round_seconds"]
    runs = {k: {"collect_seconds": round(v["collect_seconds"], 2),
                "rounds_seconds": v["round_seconds"],
                "process_seconds": round(v["seconds"], 2) if "seconds" in v else None,
                "tokens_per_s": round(tokens / v["collect_seconds"], 1),
                "dim": v["dim"], "dtype": v["dtype"],
                "index_bytes_per_example": v["index_bytes"] // v["rows"]}
            for k, v in best.items()}
    tps = {k: v["tokens_per_s"] for k, v in runs.items()}
    return {"version": bergson.version(), "texts": n, "tokens": tokens, "rounds": rounds,
            "timed": "each tool's collection loop (bergson: CollectorComputer."
                     "run_with_collector_hooks inside its process; tda: featurize_batch over "
                     "the same texts' batches)",
            "runs": runs,
            "tda_vs_bergson_adam": round(tps["tda_factored"] / tps["bergson_adam"], 2),
            "tda_vs_bergson_plain": round(tps["tda_factored"] / tps["bergson_plain"], 2),
            "index_bytes_ratio_tda_over_bergson": round(
                runs["tda_factored"]["index_bytes_per_example"]
                / runs["bergson_adam"]["index_bytes_per_example"], 3),
            "targets": {"tda_vs_bergson_adam": ">= 1.5", "index_bytes_ratio": "0.5"}}


if __name__ == "__main__":
    main()
