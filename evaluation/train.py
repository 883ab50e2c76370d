"""Training small causal LMs from scratch with AdamW (for tests, the demo and the benchmark)."""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from tda.engine.batching import TokenSequence, collate, pad_id, per_example_loss
from tda.errors import ConfigError, EvalError
from tda.log import logger
from tda.schemas.jsonl import read_jsonl
from tda.schemas.options import TrainOptions


log = logger(__name__)
MIN_LR = 0.1
Batching = Literal["length", "random"]
BATCHINGS: tuple[str, ...] = ("length", "random")


@dataclass
class TrainResult:
    """The optimizer after training, the per-step losses and the final learning rate."""
    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)   # mean loss per token, per step
    final_lr: float = 0.0
    tokens: int = 0           # real (non-pad) tokens fed, all epochs
    padded_tokens: int = 0    # batch rows x width, all epochs (tokens + padding)
    seconds: float = 0.0      # wall time of the training loop
    cpu_seconds: float = 0.0  # process CPU time of the loop (all threads)


def epoch_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                  batching: Batching = "length") -> list[list[int]]:
    """One epoch's batches, as lists of indices into ``lengths`` (tokens per text).

    ``random``: a seeded shuffle cut into consecutive batches (each padded to its longest).
    ``length``: the same shuffle, stably sorted by length (so texts of equal length keep a
    random order) and cut into batches of similar length, whose order is then shuffled: every
    text once per epoch, at most one partial batch, padding only between neighbouring lengths.
    Deterministic for the state of ``rng``."""
    if batching not in BATCHINGS:
        raise ConfigError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batching == "length":
        order.sort(key=lengths.__getitem__)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if batching == "length":
        rng.shuffle(batches)
    return batches


class LMTrainer:
    """One model's training state: tokenized texts, AdamW (built from named parameters so its
    state_dict records names), the learning-rate schedule (linear warmup, then cosine decay to
    MIN_LR x ``lr``, so the final learning rate, which tail-patch steps with, is not zero) and
    the seeded batch order of every epoch (:func:`epoch_batches`). :meth:`step` trains on one
    batch; :func:`train_lm` runs them all. Deterministic for a seed."""

    def __init__(self, model: nn.Module, tokenizer, texts: Sequence[str], *, epochs: int = 1,
                 batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.01,
                 max_len: int = 128, seed: int = 0, warmup: int = 20,
                 batching: Batching = "length"):
        torch.manual_seed(seed)
        self.model = model
        self.rng = random.Random(seed)
        seqs = [TokenSequence(tuple(tokenizer(t)["input_ids"][:max_len]), 1) for t in texts]
        self.seqs = [s for s in seqs if len(s.ids) >= 2]
        self.lengths = [len(s.ids) for s in self.seqs]      # tokens per text
        self.pad = pad_id(tokenizer)
        self.epochs, self.batch_size, self.batching = epochs, batch_size, batching
        self.opt = torch.optim.AdamW(list(model.named_parameters()), lr=lr,
                                     weight_decay=weight_decay)
        self.total_steps = epochs * ((len(self.seqs) + batch_size - 1) // batch_size)
        steps = self.total_steps

        def schedule(step: int) -> float:   # linear warmup, then cosine from lr to MIN_LR * lr
            cos = 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
            return min(1.0, (step + 1) / warmup) * (MIN_LR + (1 - MIN_LR) * cos)

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.result = TrainResult(self.opt)

    def batches(self):
        """Every epoch's batches in training order (lists of text indices), drawn lazily."""
        for _ in range(self.epochs):
            yield from epoch_batches(self.lengths, self.batch_size, self.rng, self.batching)

    def step(self, rows: list[int]) -> float:
        """One AdamW step on the texts ``rows`` (loss: mean next-token NLL over the batch's
        real tokens, nats); counts tokens, padding, wall and CPU time. Returns the loss."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.model.train()
        batch = collate([self.seqs[j] for j in rows], self.pad)
        logits = self.model(input_ids=batch.input_ids,
                            attention_mask=batch.attention_mask.long(),
                            position_ids=batch.position_ids, use_cache=False).logits
        loss = per_example_loss(logits, batch.labels).sum() / (batch.labels >= 0).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        value = loss.item()
        r = self.result
        r.losses.append(value)
        r.tokens += sum(self.lengths[j] for j in rows)
        r.padded_tokens += batch.input_ids.numel()
        r.seconds += time.perf_counter() - wall
        r.cpu_seconds += time.process_time() - cpu
        r.final_lr = self.opt.param_groups[0]["lr"]
        return value


def last_epoch_loss(losses: Sequence[float], epochs: int) -> float:
    """Mean loss (nats per token) of the last of ``epochs`` equal epochs of per-step
    ``losses``: one batch's loss is too noisy to compare models by."""
    per_epoch = max(1, len(losses) // epochs)
    return sum(losses[-per_epoch:]) / per_epoch


def train_lm(model: nn.Module, tokenizer, texts: Sequence[str], *, epochs: int = 1,
             batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.01,
             max_len: int = 128, seed: int = 0, warmup: int = 20,
             batching: Batching = "length", progress=None, on_epoch=None) -> TrainResult:
    """Next-token training on ``texts`` with AdamW (see :class:`LMTrainer`): ``length``
    batching puts texts of similar length together (little padding), ``random`` pads random
    draws to their longest. ``progress(step, total_steps, loss)`` after each step;
    ``on_epoch(epoch, result)`` after each epoch (1-based; the model in train mode, it may
    switch to eval and back). The model is left in eval mode."""
    trainer = LMTrainer(model, tokenizer, texts, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, max_len=max_len, seed=seed, warmup=warmup,
                        batching=batching)
    per_epoch = (len(trainer.seqs) + batch_size - 1) // batch_size
    for rows in trainer.batches():
        loss = trainer.step(rows)
        done = len(trainer.result.losses)
        if progress is not None:
            progress(done, trainer.total_steps, loss)
        if on_epoch is not None and done % per_epoch == 0:
            on_epoch(done // per_epoch, trainer.result)
    model.eval()
    return trainer.result


def train_benchmark_model(corpus: str | Path, out: str | Path,
                          options: TrainOptions = TrainOptions(), progress=None) -> dict:
    """Train a tokenizer and a small causal LM from scratch on a corpus (JSON Lines with
    "text"), and save into ``out``: the model and tokenizer (save_pretrained), the AdamW state
    as ``optimizer.pt`` (torch state_dict with parameter names, what the engine and tail-patch
    read), ``training.json`` (settings, final learning rate, per-step losses, fact accuracy) and
    ``loss.png``. ``options.threads``: torch intra-op threads for the training (0: torch's default;
    on a busy machine 1 thread can be several times faster than 2, which wait on each other).
    ``options.fact_check_every``: also count the facts known every that many epochs (recorded
    as ``facts_known_by_epoch`` and logged: a learning curve; 0: only at the end).
    Returns the training.json dict."""
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
    threads_before = torch.get_num_threads()
    if o.threads:
        torch.set_num_threads(o.threads)
    qpath = Path(o.queries) if o.queries else corpus.with_name("queries.jsonl")
    qs = read_queries(qpath, need_target=True, need_id=True) if qpath.is_file() else None
    curve: dict[int, int] = {}

    def check(epoch: int, result: TrainResult) -> None:
        every = o.fact_check_every
        if qs is None or not every or (epoch % every and epoch != epochs):
            return
        model.eval()
        curve[epoch] = sum(knows(model, tok, qs))
        model.train()
        mean = last_epoch_loss(result.losses, epoch)
        log.info(f"epoch {epoch}/{epochs}: mean loss {mean:.3f}, knows {curve[epoch]}/"
                 f"{len(qs)} facts, {result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s, "
                 f"load {os.getloadavg()[0]:.1f}")
    try:
        torch.manual_seed(seed)
        tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
        model = new_model(arch, preset, tok, seed)
        result = train_lm(model, tok, texts, epochs=epochs, batch_size=batch_size, lr=lr,
                          max_len=max_len, seed=seed, batching=o.batching, progress=progress,
                          on_epoch=check)
    finally:
        torch.set_num_threads(threads_before)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(result.optimizer.state_dict(), out / "optimizer.pt")
    info = {"corpus": str(corpus.resolve()), "texts": len(texts), "preset": preset,
            "arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
            "vocab_size": len(tok), "max_len": max_len, "final_lr": result.final_lr,
            "batching": o.batching, "threads": o.threads or threads_before,
            "steps": len(result.losses), "final_loss": result.losses[-1],
            "tokens": result.tokens, "padded_tokens": result.padded_tokens,
            "train_seconds": round(result.seconds, 1),
            "train_cpu_seconds": round(result.cpu_seconds, 1),
            "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(_time.perf_counter() - started, 1), "losses": result.losses}
    if curve:
        info["facts_known_by_epoch"] = curve
    if qs is not None:
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
