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


def bpe_and_short_texts(n_sentences: int, n_train: int, n_held: int, max_tokens: int = 24):
    """(a 512-token BPE trained on ``n_sentences`` real sentences, the first ``n_train`` and
    last ``n_held`` of those at most ``max_tokens`` tokens long)."""
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    texts = sentences(n_sentences)
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    short = [s for s in texts if len(tok(s)["input_ids"]) <= max_tokens]
    return tok, short[:n_train], short[-n_held:]


def fact_sentences(n: int, relations=("P19", "P1412", "P176", "P140"), skip: int = 0):
    """(fact, one sentence stating it) for ``n`` facts taken round-robin from ``relations``,
    distinct sentences, after skipping the first ``skip`` facts of each relation."""
    from tda.evaluation.lama import read_facts
    per = [list(read_facts(LAMA, [r]))[skip:] for r in relations]
    out, seen = [], set()
    for i in range(max(map(len, per))):
        for facts in per:
            if i < len(facts) and len(out) < n:
                s = next((x for x in facts[i].sentences if x not in seen), None)
                if s is not None:
                    seen.add(s)
                    out.append((facts[i], s))
    return out


def build_tiny_model(out: Path, arch: str, texts: list[str], steps_epochs: int = 2,
                     seed: int = 0) -> Path:
    """Train a tokenizer and a tiny ``arch`` model on ``texts``; save model, tokenizer and the
    AdamW state (``optimizer.pt``, integer ids as a plain torch state_dict) into ``out``."""
    from tda.evaluation.models import new_model
    from tda.evaluation.tokenizer import train_bpe_tokenizer
    from tda.evaluation.train import train_lm

    tok = train_bpe_tokenizer(texts, vocab_size=512)
    model = new_model(arch, "test", tok, seed)
    result = train_lm(model, tok, texts, epochs=steps_epochs, batch_size=16, lr=3e-3, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    state = result.optimizer.state_dict()
    for g in state["param_groups"]:      # a plain id-keyed state_dict, as most trainers save
        g.pop("param_names", None)
    torch.save(state, out / "optimizer.pt")
    return out
