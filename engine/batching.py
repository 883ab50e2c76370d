"""Token sequences for examples and queries, and their padded batches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tda.errors import CorpusError, QueryError

IGNORE = -100


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token,
    else 0. Padding is masked out of attention and loss, so the choice never changes a result;
    a real token id keeps the embedding lookup in range."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


@dataclass(frozen=True)
class TokenSequence:
    """One example or query as token ids, with ``n_context`` leading tokens that carry no loss.

    Training example: n_context = 1 (every token but the first is predicted).
    Query: n_context = len(prompt tokens) (only the target tokens are predicted).
    """

    ids: tuple[int, ...]
    n_context: int

    @property
    def n_predicted(self) -> int:
        """Tokens that carry loss."""
        return len(self.ids) - self.n_context


@dataclass
class TokenBatch:
    """A padded batch. All tensors [batch, tokens].

    ``labels[b, t]`` is the token predicted from position t (ids[b, t+1]) or -100 where that
    token carries no loss or is padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenBatch":
        """The batch on ``device``."""
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                    self.position_ids, self.labels)))

    @property
    def n_tokens(self) -> torch.Tensor:
        """Real (non-pad) tokens per row, [batch]."""
        return self.attention_mask.sum(1)


def example_sequence(tokenizer, text: str, max_len: int) -> tuple[TokenSequence, bool]:
    """Tokenize a training text; returns (sequence, truncated). Longer texts keep the first
    ``max_len`` tokens. Raises CorpusError when fewer than 2 tokens remain (nothing to
    predict)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    truncated = len(ids) > max_len
    ids = ids[:max_len]
    if len(ids) < 2:
        raise CorpusError("text is empty or has a single token: nothing to predict")
    return TokenSequence(tuple(ids), 1), truncated


def query_sequence(tokenizer, prompt: str, target: str, max_len: int) -> TokenSequence:
    """Tokenize prompt and target separately (so the target's tokens are its own) and join them.
    Raises QueryError for an empty target or when the whole query exceeds ``max_len``."""
    if not target or not target.strip():
        raise QueryError("target is empty: a query needs target tokens to score")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise QueryError("prompt is empty: the first target token needs context")
    n = len(prompt_ids) + len(target_ids)
    if n > max_len:
        raise QueryError(f"query is {n} tokens, longer than max_len={max_len}")
    return TokenSequence(tuple(prompt_ids) + tuple(target_ids), len(prompt_ids))


def collate(seqs: list[TokenSequence], pad_id: int, pad_side: str = "right") -> TokenBatch:
    """Pad sequences to one length (``pad_id``: see ``pad_id(tokenizer)``). Position ids count
    real tokens only, so left and right padding give the same model inputs."""
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    width = max(len(s.ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s.ids)
        start = width - n if pad_side == "left" else 0
        ids = torch.tensor(s.ids, dtype=torch.long)
        input_ids[b, start:start + n] = ids
        mask[b, start:start + n] = True
        # position t predicts ids[t+1]; it carries loss when t+1 >= n_context
        first = start + max(s.n_context, 1) - 1
        labels[b, first:start + n - 1] = ids[max(s.n_context, 1):]
    position_ids = (mask.long().cumsum(1) - 1).clamp_min(0)
    return TokenBatch(input_ids, mask, position_ids, labels)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL per row, in nats: logits [batch, tokens, vocab] -> [batch].
    Computed in float32 at least."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    nll = torch.nn.functional.cross_entropy(
        logits.to(dtype).flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    return nll.view(labels.shape).sum(1)
