"""Shared test helpers: real data and tiny models trained on it."""
from __future__ import annotations

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TDA_DATA", REPO.parent / "shared" / "data"))
LAMA = DATA / "lama-trex"


def sentences(n: int, relations=None) -> list[str]:
    from tda.evaluation.lama import read_sentences
    return read_sentences(LAMA, n, relations)


def tiny_config(arch: str, vocab_size: int, dtype=torch.float32):
    from transformers import GPT2Config, LlamaConfig
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=2,
                          n_head=2, tie_word_embeddings=True, attn_implementation="eager",
                          dtype=dtype)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=256, tie_word_embeddings=False,
                           attn_implementation="eager", dtype=dtype)
    raise ValueError(arch)


def build_tiny_model(out: Path, arch: str, texts: list[str], steps_epochs: int = 2,
                     seed: int = 0) -> Path:
    """Train a tokenizer and a tiny ``arch`` model on ``texts``; save model, tokenizer and the
    AdamW state (``optimizer.pt``, integer ids as a plain torch state_dict) into ``out``."""
    from transformers import AutoModelForCausalLM
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    from tda.evaluation.train import train_lm

    tok = train_bpe_tokenizer(texts, vocab_size=512)
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok))
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    result = train_lm(model, tok, texts, epochs=steps_epochs, batch_size=16, lr=3e-3, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    state = result.optimizer.state_dict()
    for g in state["param_groups"]:      # a plain id-keyed state_dict, as most trainers save
        g.pop("param_names", None)
    torch.save(state, out / "optimizer.pt")
    return out
