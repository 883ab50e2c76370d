"""Benchmark queries (BENCH/queries.jsonl) and whether the model knows each fact."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tda.engine.batching import collate, query_sequence
from tda.schemas.jsonl import read_jsonl


@dataclass(frozen=True)
class Query:
    id: str
    prompt: str
    target: str
    proponents: tuple[str, ...]
    wikipedia_proponents: tuple[str, ...] = ()
    relation: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def read_queries(path: str | Path) -> list[Query]:
    """Queries from JSON Lines; a line that is not a usable query is an error naming it."""
    out = []
    for n, rec in read_jsonl(path):
        try:
            out.append(Query(str(rec["id"]), rec["prompt"], rec["target"],
                             tuple(rec.get("proponents", ())),
                             tuple(rec.get("wikipedia_proponents", ())),
                             rec.get("relation", ""),
                             {k: v for k, v in rec.items() if k not in (
                                 "id", "prompt", "target", "proponents",
                                 "wikipedia_proponents", "relation")}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a query record (missing {e})") from None
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


@torch.no_grad()
def knows(model, tokenizer, queries: list[Query], max_len: int = 256,
          batch_size: int = 64) -> list[bool]:
    """Per query: is the target the model's greedy continuation (every target token the
    argmax given the prompt and the target tokens before it)?"""
    out: list[bool] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for i in range(0, len(queries), batch_size):
        seqs = [query_sequence(tokenizer, q.prompt, q.target, max_len)
                for q in queries[i:i + batch_size]]
        batch = collate(seqs, pad).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                       position_ids=batch.position_ids, use_cache=False).logits
        hit = (logits.argmax(-1) == batch.labels) | (batch.labels < 0)
        out += hit.all(dim=1).tolist()
    return out
