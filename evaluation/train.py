"""Training small causal LMs from scratch with AdamW (for tests, the demo and the benchmark)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence as Seq

import torch
from torch import nn

from tda.engine.batching import Sequence, collate, per_example_loss


@dataclass
class TrainResult:
    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)   # mean loss per token, per step
    final_lr: float = 0.0


def train_lm(model: nn.Module, tokenizer, texts: Seq[str], *, epochs: int = 1,
             batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.01,
             max_len: int = 128, seed: int = 0, warmup: int = 20,
             progress=None) -> TrainResult:
    """Next-token training on ``texts`` with AdamW (built from named parameters so its
    state_dict records names), linear warmup then cosine decay. Deterministic for a seed."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    seqs = [Sequence(tuple(tokenizer(t)["input_ids"][:max_len]), 1) for t in texts]
    seqs = [s for s in seqs if len(s.ids) >= 2]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    opt = torch.optim.AdamW(list(model.named_parameters()), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(seqs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * s / max(steps, 1))).item()))
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
