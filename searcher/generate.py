"""The model's own continuation of a prompt: the target of a query that gives none."""
from __future__ import annotations

import torch

from tda.errors import QueryError

STOP = (".", ",", ";", "\n", "!", "?")


@torch.no_grad()
def greedy_continuation(model, tokenizer, prompt: str, max_len: int,
                        max_new_tokens: int = 8) -> str:
    """The greedy continuation of ``prompt`` (at most ``max_new_tokens`` tokens, and the whole
    query within ``max_len``), cut before the first token that holds a sentence or clause
    break or ends the text (at least one token is kept). QueryError when the prompt leaves no
    room for a target."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    if ids.shape[1] + 1 > max_len:
        raise QueryError(f"prompt is {ids.shape[1]} tokens; at most {max_len - 1} leave room "
                         f"for a target")
    new: list[int] = []
    for _ in range(min(max_new_tokens, max_len - ids.shape[1])):
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        piece = tokenizer.decode([token])
        if new and (token == tokenizer.eos_token_id or any(c in piece for c in STOP)):
            break
        new.append(token)
        ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(new)
