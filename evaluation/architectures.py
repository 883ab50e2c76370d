"""Tiny models of every architecture tda is proven on (tests/test_architectures.py and
bench/architectures.py): built from transformers' config classes (no downloads), hidden 32,
2 layers, and trained a few AdamW steps on real sentences so weights and second moments are
realistic rather than initial."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, POSITIONS = 32, 2, 2, 1, 48, 128


def _llama_like(**extra) -> dict:
    return dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                max_position_embeddings=POSITIONS, **extra)


_MOE = dict(num_experts_per_tok=2)

# name -> (config class, keyword arguments); vocabulary and special tokens come from the tokenizer
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                n_positions=POSITIONS, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0, tie_word_embeddings=True)),
    "llama": ("LlamaConfig", _llama_like()),
    "gemma2": ("Gemma2Config", _llama_like(head_dim=16, sliding_window=4,
                                           final_logit_softcapping=30.0,
                                           attn_logit_softcapping=50.0,
                                           tie_word_embeddings=True)),
    "gemma3_text": ("Gemma3TextConfig", _llama_like(head_dim=16, sliding_window=4,
                                                    tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", _llama_like()),
    "qwen3": ("Qwen3Config", _llama_like(head_dim=16)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                       max_position_embeddings=POSITIONS,
                                       hidden_dropout=0.0, attention_dropout=0.0)),
    "olmo2": ("Olmo2Config", _llama_like()),
    "mistral": ("MistralConfig", _llama_like(sliding_window=4)),
    "phi3": ("Phi3Config", _llama_like()),
    "mixtral": ("MixtralConfig", _llama_like(num_local_experts=4, **_MOE)),
    "olmoe": ("OlmoeConfig", _llama_like(num_experts=4, **_MOE)),
    "qwen3_moe": ("Qwen3MoeConfig", _llama_like(num_experts=4, moe_intermediate_size=24,
                                                head_dim=16, **_MOE)),
    "qwen2_moe": ("Qwen2MoeConfig", _llama_like(num_experts=4, moe_intermediate_size=24,
                                                shared_expert_intermediate_size=40, **_MOE)),
    "gpt_oss": ("GptOssConfig", _llama_like(num_local_experts=4, head_dim=16, sliding_window=4,
                                            layer_types=["sliding_attention",
                                                         "full_attention"], **_MOE)),
}
MOE = ("mixtral", "olmoe", "qwen3_moe", "qwen2_moe", "gpt_oss")


@dataclass
class TinyModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    optimizer_state: dict          # AdamW state_dict (with parameter names)


def tiny_config(name: str, tokenizer):
    import transformers
    cls, kwargs = ARCHITECTURES[name]
    vocab = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, cls)(**vocab, **kwargs)
    config._attn_implementation = "eager"
    return config


def tiny_model(name: str, tokenizer, texts: list[str], steps: int = 4, seed: int = 0,
               lr: float = 1e-2, batch_size: int = 8) -> TinyModel:
    """A freshly initialized ``name`` model trained ``steps`` AdamW steps on ``texts``, in eval
    mode, float32."""
    from transformers import AutoModelForCausalLM

    from tda.evaluation.train import train_lm
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name, tokenizer)).eval()
    result = train_lm(model, tokenizer, texts[:batch_size * steps], epochs=1,
                      batch_size=batch_size, lr=lr, seed=seed, warmup=1)
    return TinyModel(name, model, tokenizer, result.optimizer.state_dict())


def save_tiny_model(tiny: TinyModel, out: Path) -> Path:
    """save_pretrained + tokenizer + ``optimizer.pt`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tiny.model.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    torch.save(tiny.optimizer_state, out / "optimizer.pt")
    return out
