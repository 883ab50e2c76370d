"""Byte-level BPE tokenizers trained from scratch (no downloads)."""
from __future__ import annotations

from typing import Iterable

SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
           "unk_token": "<|unk|>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A GPT-2-style byte-level BPE tokenizer as a ``PreTrainedTokenizerFast``.
    It adds no special tokens to encoded text (like GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
