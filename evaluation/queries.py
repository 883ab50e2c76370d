"""Whether a model knows each benchmark fact (queries: ``tda.schemas.queries``)."""
from __future__ import annotations

import torch

from tda.engine.batching import collate, pad_id, query_sequence
from tda.schemas.queries import Query


@torch.no_grad()
def knows(model, tokenizer, queries: list[Query], max_len: int = 256,
          batch_size: int = 64) -> list[bool]:
    """Per query: is the target the model's greedy continuation (every target token the
    argmax given the prompt and the target tokens before it)?"""
    out: list[bool] = []
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    for i in range(0, len(queries), batch_size):
        seqs = [query_sequence(tokenizer, q.prompt, q.target, max_len)[0]
                for q in queries[i:i + batch_size]]
        batch = collate(seqs, pad).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                       position_ids=batch.position_ids, use_cache=False).logits
        hit = (logits.argmax(-1) == batch.labels) | (batch.labels < 0)
        out += hit.all(dim=1).tolist()
    return out
