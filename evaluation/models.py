"""Small causal LMs built from a config (no downloads): presets for tests, the demo and the
benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tda.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A model size: widths, depth, heads, positions."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int       # Llama MLP width (GPT-2 uses 4 * hidden)
    positions: int


PRESETS: dict[str, Preset] = {
    "test": Preset(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=48, positions=256),
    # ~0.48M parameters with a 4,096-token vocabulary: the smallest of the model-size sweep
    "mini": Preset(hidden=64, layers=4, heads=2, kv_heads=2, intermediate=172, positions=256),
    "tiny": Preset(hidden=128, layers=4, heads=4, kv_heads=4, intermediate=344, positions=256),
    "small": Preset(hidden=256, layers=6, heads=8, kv_heads=8, intermediate=688, positions=256),
    # ~10M parameters with an 8,192-token vocabulary (the featurize benchmark's model)
    "bench10m": Preset(hidden=256, layers=8, heads=4, kv_heads=4, intermediate=688,
                       positions=512),
}


def model_config(arch: str, preset: str, tokenizer, dtype: torch.dtype = torch.float32):
    """A transformers config: ``arch`` 'gpt2' (Conv1D, tied head) or 'llama' (nn.Linear,
    untied head), sized by ``preset``, with the tokenizer's vocabulary and special tokens."""
    from transformers import GPT2Config, LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    if arch == "gpt2":
        return GPT2Config(vocab_size=len(tokenizer), n_positions=p.positions, n_embd=p.hidden,
                          n_layer=p.layers, n_head=p.heads, tie_word_embeddings=True,
                          # no dropout: these models memorize facts (as modern LMs, trained
                          # once over their data, use none); it also keeps train mode exact
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    if arch == "llama":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=p.hidden,
                           intermediate_size=p.intermediate, num_hidden_layers=p.layers,
                           num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                           max_position_embeddings=p.positions, tie_word_embeddings=False,
                           **special)
    raise ConfigError(f"unknown architecture {arch!r}; choose 'gpt2' or 'llama'")


def new_model(arch: str, preset: str, tokenizer, seed: int = 0):
    """A freshly initialized model (deterministic for a seed), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(arch, preset, tokenizer)).eval()
