"""Training small causal LMs from scratch with AdamW (for tests, the demo and the benchmark)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from tda.engine.batching import TokenSequence, collate, pad_id, per_example_loss
from tda.errors import EvalError
from tda.schemas.jsonl import read_jsonl
from tda.schemas.options import TrainOptions


MIN_LR = 0.1


@dataclass
class TrainResult:
    """The optimizer after training, the per-step losses and the final learning rate."""
    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)   # mean loss per token, per step
    final_lr: float = 0.0


def train_lm(model: nn.Module, tokenizer, texts: Sequence[str], *, epochs: int = 1,
             batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.01,
             max_len: int = 128, seed: int = 0, warmup: int = 20,
             progress=None) -> TrainResult:
    """Next-token training on ``texts`` with AdamW (built from named parameters so its
    state_dict records names), linear warmup then cosine decay to MIN_LR x ``lr`` (so the
    final learning rate, which tail-patch steps with, is not zero). Deterministic for a seed."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    seqs = [TokenSequence(tuple(tokenizer(t)["input_ids"][:max_len]), 1) for t in texts]
    seqs = [s for s in seqs if len(s.ids) >= 2]
    pad = pad_id(tokenizer)
    opt = torch.optim.AdamW(list(model.named_parameters()), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(seqs) + batch_size - 1) // batch_size)
    def schedule(step: int) -> float:     # linear warmup, then cosine from lr to MIN_LR * lr
        cos = 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
        return min(1.0, (step + 1) / warmup) * (MIN_LR + (1 - MIN_LR) * cos)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    result = TrainResult(opt)
    model.train()
    for _ in range(epochs):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = collate([seqs[j] for j in order[i:i + batch_size]], pad)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                           position_ids=batch.position_ids, use_cache=False).logits
            loss = per_example_loss(logits, batch.labels).sum() / (batch.labels >= 0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            result.losses.append(loss.item())
            if progress is not None:
                progress(len(result.losses), steps, loss.item())
    model.eval()
    result.final_lr = opt.param_groups[0]["lr"]
    return result


def train_benchmark_model(corpus: str | Path, out: str | Path,
                          options: TrainOptions = TrainOptions(), progress=None) -> dict:
    """Train a tokenizer and a small causal LM from scratch on a corpus (JSON Lines with
    "text"), and save into ``out``: the model and tokenizer (save_pretrained), the AdamW state
    as ``optimizer.pt`` (torch state_dict with parameter names, what the engine and tail-patch
    read), ``training.json`` (settings, final learning rate, per-step losses, fact accuracy) and
    ``loss.png``. ``progress(step, steps, loss)`` is called after every step. Returns the
    training.json dict."""
    import json as _json
    import time as _time

    from tda.evaluation.models import new_model
    from tda.evaluation.queries import knows
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    from tda.schemas.queries import read_queries

    o = options
    preset, arch, epochs, seed, lr = o.preset, o.arch, o.epochs, o.seed, o.lr
    batch_size, vocab_size, max_len = o.batch_size, o.vocab_size, o.max_len
    started = _time.perf_counter()
    corpus, out = Path(corpus), Path(out)
    texts = []
    for n, rec in read_jsonl(corpus, EvalError):
        if not isinstance(rec.get("text"), str):
            raise EvalError(f"{corpus}:{n}: not a corpus record (no string 'text')")
        texts.append(rec["text"])
    if not texts:
        raise EvalError(f"{corpus}: no texts")
    torch.manual_seed(seed)
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    model = new_model(arch, preset, tok, seed)
    result = train_lm(model, tok, texts, epochs=epochs, batch_size=batch_size, lr=lr,
                      max_len=max_len, seed=seed, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(result.optimizer.state_dict(), out / "optimizer.pt")
    info = {"corpus": str(corpus.resolve()), "texts": len(texts), "preset": preset,
            "arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
            "vocab_size": len(tok), "max_len": max_len, "final_lr": result.final_lr,
            "steps": len(result.losses), "final_loss": result.losses[-1],
            "seconds": round(_time.perf_counter() - started, 1), "losses": result.losses}
    qpath = Path(o.queries) if o.queries else corpus.with_name("queries.jsonl")
    if qpath.is_file():
        qs = read_queries(qpath, need_target=True, need_id=True)
        known = knows(model, tok, qs)
        info["fact_accuracy"] = sum(known) / len(known)
        info["facts_known"] = sum(known)
        info["queries"] = len(known)
    (out / "training.json").write_text(_json.dumps(info, indent=1))
    plot_losses(result.losses, out / "loss.png",
                title=f"{arch}/{preset}, {epochs} epochs, {len(texts)} texts")
    return info


def plot_losses(losses: list[float], path: Path, title: str = "") -> None:
    """The loss curve (log scale) as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("mean token NLL (nats)")
    ax.set_title(title, fontsize=9)
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
