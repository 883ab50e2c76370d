"""Featurize throughput on this machine vs the floors, vs a naive loop (and vs bergson).

Prints JSON. All timings in one run on the same batches of real LAMA sentences with a ~10M
parameter Llama-style model trained briefly with AdamW (cached in .cache/bench):
- featurize: tda's Featurizer, factored optimizer correction, k = 16 (and k = 8);
- floor_train: plain forward + backward with every weight requiring grad;
- floor_frozen: forward + backward through activations only (weights frozen);
- naive: per-example loop, full autograd gradient, exact correction, materialized projection;
- bergson (unless --no-bergson): `bergson build --projection_dim 16 --unit_normalize true` with
  and without its Adam normalizer (--optimizer_state), against tda on the same 56 weights
  (LM head excluded, as bergson does), the same texts and the same 512-token batches.
  Throughput is marginal: (time on 2N texts - time on N texts) / tokens of N texts, so the
  start-up of each tool cancels.
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
    """The textbook loop, one example at a time: loss.backward() fills every parameter's .grad
    (the full gradient), then G / (sqrt(V) + eps) and P_out^T G P_in for each tracked weight."""
    cfg = f.config
    modules = dict(f.model.named_modules())
    weights = [modules[w.name].weight for w in f.weights]
    mats = [(projection_matrix(cfg.seed, w.name, "out", w.out_features, cfg.projection_dim),
             projection_matrix(cfg.seed, w.name, "in", w.in_features, cfg.projection_dim),
             f.second_moments[w.param_name].dense().float().sqrt() + cfg.epsilon)
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
    ap.add_argument("--bergson-sentences", type=int, default=400,
                    help="N of the N / 2N marginal-throughput runs")
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
        result["bergson"] = compare_bergson(model, tok, model_dir, args.bergson_sentences)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    common.emit(result, args.out)


def compare_bergson(model, tok, model_dir: Path, n: int) -> dict:
    """Marginal tokens/s of tda and bergson on N and 2N texts, 512-token batches."""
    import bergson
    texts = common.sentences(2 * n, offset=8000)
    sets = {"N": texts[:n], "2N": texts}
    cfg = TrackStarConfig(projection_dim=16, exclude=r"lm_head", max_len=512)
    f = Featurizer(model, tok, cfg, optimizer_state=model_dir)
    tokens = {k: sum(len(s.ids) for s in f.example_sequences(v)) for k, v in sets.items()}
    marginal_tokens = tokens["2N"] - tokens["N"]
    runs: dict[str, dict] = {}
    for name, state in (("bergson_adam", model_dir), ("bergson_plain", None)):
        res = {k: bergson.build(model_dir, v, common.CACHE / "bergson-runs" / f"{name}-{k}",
                                state, 512) for k, v in sets.items()}
        runs[name] = {"seconds_N": round(res["N"]["seconds"], 2),
                      "seconds_2N": round(res["2N"]["seconds"], 2),
                      "tokens_per_s": round(marginal_tokens / max(
                          res["2N"]["seconds"] - res["N"]["seconds"], 1e-9), 1),
                      "dim": res["2N"]["dim"], "dtype": res["2N"]["dtype"],
                      "index_bytes_per_example": res["2N"]["index_bytes"] // res["2N"]["rows"]}
    tda_s = {}
    for k, v in sets.items():
        start = time.perf_counter()
        run_featurize(f, batches_of(f, v, 512))
        tda_s[k] = time.perf_counter() - start
    runs["tda_factored"] = {"seconds_N": round(tda_s["N"], 2), "seconds_2N": round(tda_s["2N"], 2),
                            "tokens_per_s": round(marginal_tokens / max(
                                tda_s["2N"] - tda_s["N"], 1e-9), 1),
                            "dim": f.dim, "dtype": "float16", "index_bytes_per_example": 2 * f.dim}
    tps = {k: v["tokens_per_s"] for k, v in runs.items()}
    return {"version": bergson.version(), "texts_N": n, "marginal_tokens": marginal_tokens,
            "runs": runs,
            "tda_vs_bergson_adam": round(tps["tda_factored"] / tps["bergson_adam"], 2),
            "tda_vs_bergson_plain": round(tps["tda_factored"] / tps["bergson_plain"], 2),
            "index_bytes_ratio_tda_over_bergson": round(
                runs["tda_factored"]["index_bytes_per_example"]
                / runs["bergson_adam"]["index_bytes_per_example"], 3),
            "targets": {"tda_vs_bergson_adam": ">= 1.5", "index_bytes_ratio": "0.5"}}


if __name__ == "__main__":
    main()
