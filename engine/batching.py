"""Token sequences for examples and queries, and their padded batches."""
from __future__ import annotations

import warnings
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

    def model_inputs(self) -> dict:
        """Keyword arguments of a causal LM's forward for this batch. A right-padded batch is
        given an all-ones attention mask: causal attention already keeps every real token from seeing
        the pads after it, and pad rows then attend to real tokens instead of to nothing (a
        fully masked row is NaN where a model takes its softmax in float32 over a float64
        mask, and a NaN pad value poisons real rows through 0 * NaN in the next layer)."""
        right = bool((self.attention_mask == (torch.arange(
            self.attention_mask.shape[1], device=self.attention_mask.device)
            < self.n_tokens[:, None])).all())
        mask = torch.ones_like(self.attention_mask, dtype=torch.long) if right \
            else self.attention_mask.long()
        return dict(input_ids=self.input_ids, attention_mask=mask,
                    position_ids=self.position_ids, use_cache=False)


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


def query_sequence(tokenizer, prompt: str, target: str,
                   max_len: int) -> tuple[TokenSequence, bool]:
    """Tokenize ``prompt + target`` once and split at the character boundary; returns
    (sequence, truncated).

    The target's tokens are the tokens of the joint encoding that cover any of its characters
    (offsets), so a SentencePiece dummy prefix or an appended EOS never lands between prompt
    and target; special tokens after the target are dropped, a leading BOS stays context. A
    query longer than ``max_len`` keeps its end: the prompt is cut from the left (after any
    leading special tokens). Raises QueryError for an empty prompt or target, or a target that
    alone leaves no room for context."""
    if not target or not target.strip():
        raise QueryError("target is empty: a query needs target tokens to score")
    if not prompt:
        raise QueryError("prompt is empty: the first target token needs context")
    ids, n_context = split_query(tokenizer, prompt, target)
    if n_context == 0:
        raise QueryError("prompt is empty: the first target token needs context")
    if len(ids) - n_context == 0:
        raise QueryError("target is empty: a query needs target tokens to score")
    truncated = len(ids) > max_len
    if truncated:
        n_target = len(ids) - n_context
        room = max_len - n_target                    # tokens left for the context
        if room < 1:
            raise QueryError(f"target is {n_target} tokens: with max_len={max_len} no prompt "
                             f"token is left as context")
        context = ids[:n_context]
        lead = _leading_specials(tokenizer, context)
        kept = context[:lead] + context[n_context - (room - lead):] if room > lead \
            else context[n_context - room:]
        ids, n_context = kept + ids[n_context:], len(kept)
    return TokenSequence(tuple(ids), n_context), truncated


_NO_OFFSETS_WARNED: set[str] = set()


def split_query(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """(ids of the joint encoding up to the target's last token, number of context tokens).
    Fast tokenizers split by offsets; a tokenizer without offsets support (a Python
    tokenizer) falls back, with a warning naming it, to the prompt's own encoding as a prefix
    of the joint one."""
    text, boundary = prompt + target, len(prompt)
    try:
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        offsets, special = enc["offset_mapping"], enc["special_tokens_mask"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return _split_by_prefix(tokenizer, prompt, text)
    ids = list(enc["input_ids"])
    in_target = [not sp and (e > boundary or (e == s and s >= boundary))
                 for (s, e), sp in zip(offsets, special)]
    if not any(in_target):
        return ids, len(ids)
    first = in_target.index(True)
    last = len(in_target) - 1 - in_target[::-1].index(True)
    return ids[:last + 1], first


def _split_by_prefix(tokenizer, prompt: str, text: str) -> tuple[list[int], int]:
    name = type(tokenizer).__name__
    if name not in _NO_OFFSETS_WARNED:
        _NO_OFFSETS_WARNED.add(name)
        warnings.warn(f"{name} has no offsets support (not a fast tokenizer): queries are "
                      f"split where the prompt's own encoding stops matching the joint one",
                      stacklevel=4)
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    alone = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    while alone and alone[-1] in specials:
        alone.pop()
    while full and full[-1] in specials:
        full.pop()
    n = 0
    while n < min(len(full), len(alone)) and full[n] == alone[n]:
        n += 1
    return full, n


def _leading_specials(tokenizer, ids: list[int]) -> int:
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = 0
    while n < len(ids) and ids[n] in specials:
        n += 1
    return n


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
