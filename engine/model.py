"""Loading a causal LM (a directory, a PEFT adapter on its base, or a cached Hub id) and
fingerprinting it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from tda.errors import ModelError, ModelMismatch, ModelMissing
from tda.engine.sources import ModelSource, resolve_model

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16, "float64": torch.float64}


def _tokenizer_dir(source: ModelSource) -> Path:
    has = lambda d: any(p.name.startswith("tokenizer") for p in d.iterdir())  # noqa: E731
    return source.path if not source.is_adapter or has(source.path) else source.base


def load_model(path: str | Path | ModelSource, dtype: str = "auto",
               device: str | torch.device = "cpu", base_model: str | Path | None = None):
    """Load a Hugging Face causal LM and its tokenizer: ``path`` is a model directory, a PEFT
    adapter directory (on ``base_model`` or the base its adapter_config names; needs the
    ``peft`` extra) or a Hub id in the local cache.

    ``dtype`` 'auto' keeps the checkpoint's dtype. Returns ``(model, tokenizer)``, the model in
    eval mode on ``device``; an adapter's matrices are its only trainable parameters.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = path if isinstance(path, ModelSource) else resolve_model(path, base_model)
    torch_dtype = "auto" if dtype == "auto" else TORCH_DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(source.base or source.path, dtype=torch_dtype)
    if source.is_adapter:
        try:
            from peft import PeftModel
        except ImportError:
            raise ModelError(f"{source.path} is a PEFT adapter: install the peft extra "
                             f"(pip install 'tda[peft]')") from None
        model = PeftModel.from_pretrained(model, source.path, is_trainable=True)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(source))
    return model.to(device).eval(), tokenizer


def model_fingerprint(path: str | Path | ModelSource, base_model: str | Path | None = None
                      ) -> str:
    """sha256 over a model directory's config, weight and tokenizer files (hex, 16 chars); for
    an adapter, over its files and its base model's fingerprint."""
    source = path if isinstance(path, ModelSource) else resolve_model(path, base_model)
    h = hashlib.sha256()
    if source.is_adapter:
        h.update(model_fingerprint(ModelSource(source.base, str(source.base))).encode())
    files = sorted(p for p in source.path.iterdir() if p.is_file() and (
        p.name in ("config.json", "adapter_config.json")
        or p.suffix in (".safetensors", ".bin")
        or p.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))))
    if not files:
        raise FileNotFoundError(f"{source.path}: no config.json or weight files")
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def check_model(path: str | Path | ModelSource, fingerprint: str, context: str,
                base_model: str | Path | None = None) -> ModelSource:
    """The model source of ``path`` (a directory, adapter directory or cached Hub id); raise
    ModelMismatch unless it has ``fingerprint`` (the one an index recorded; ``context`` says
    which, e.g. "INDEX: built from PATH"), ModelMissing when there is no model there."""
    try:
        source = path if isinstance(path, ModelSource) else resolve_model(path, base_model)
    except ModelMissing as e:
        raise ModelMissing(f"{e}; the index's model is not there: pass --model DIR (a copy of "
                           f"the same model)") from None
    fp = model_fingerprint(source)
    if fp != fingerprint:
        raise ModelMismatch(f"{source.path}: model fingerprint {fp} does not match the index's "
                            f"{fingerprint} ({context})")
    return source
