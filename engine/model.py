"""Loading a causal LM and finding the weights TrackStar tracks."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tda.errors import ConfigError, ModelMismatch, ModelMissing
from tda.schemas.config import TrackStarConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16, "float64": torch.float64}


def load_model(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu"):
    """Load a Hugging Face causal LM and its tokenizer from a local directory.

    Returns ``(model, tokenizer)``, the model in eval mode on ``device``. ModelMissing when
    ``path`` is not a model directory.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelMissing(f"{path}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer


def model_fingerprint(path: str | Path) -> str:
    """sha256 over a model directory's config, weight and tokenizer files (hex, 16 chars)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin")
        or p.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))))
    if not files:
        raise ModelMissing(f"{path}: no config.json or weight files")
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def check_model(path: str | Path, fingerprint: str, context: str) -> None:
    """Raise ModelMismatch unless the model directory ``path`` has ``fingerprint`` (the one an
    index recorded; ``context`` says which, e.g. "INDEX: built from PATH"), ModelMissing when
    ``path`` is not a model directory."""
    path = Path(path)
    if not path.is_dir():
        raise ModelMissing(f"{path}: no model directory there; pass --model DIR (a copy of the "
                           f"same model)")
    fp = model_fingerprint(path)
    if fp != fingerprint:
        raise ModelMismatch(f"{path}: model fingerprint {fp} does not match the index's "
                            f"{fingerprint} ({context})")


@dataclass(frozen=True)
class TrackedWeight:
    """One tracked weight, seen in the [out, in] orientation of G = sum_t delta_t a_t^T.

    ``name`` is the module path (projection seeds and features are keyed by it);
    ``param_name`` is the canonical parameter name (a tied LM head names the embedding it shares).
    ``stored_transposed`` is True when the parameter tensor is stored [in, out] (HF Conv1D,
    nn.Embedding); ``is_embedding`` when its input is a token id rather than a vector.
    """

    name: str
    module: nn.Module
    param_name: str
    out_features: int
    in_features: int
    stored_transposed: bool
    is_embedding: bool

    def weight_out_in(self) -> torch.Tensor:
        """The weight as [out, in]."""
        w = self.module.weight
        return w.t() if self.stored_transposed else w


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def tracked_weights(model: nn.Module, config: TrackStarConfig) -> list[TrackedWeight]:
    """The weights to track, in module order: every nn.Linear / HF Conv1D weight (LM head
    included), plus the input embedding matrix when ``config.include_embeddings``."""
    canonical = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        canonical.setdefault(id(param), name)
    include = re.compile(config.include)
    exclude = re.compile(config.exclude) if config.exclude else None
    input_embeddings = model.get_input_embeddings()
    found: list[TrackedWeight] = []
    for name, module in model.named_modules():
        if not (include.search(name) and not (exclude and exclude.search(name))):
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        if isinstance(module, nn.Linear):
            out_f, in_f, transposed, emb = weight.shape[0], weight.shape[1], False, False
        elif _is_conv1d(module):
            out_f, in_f, transposed, emb = weight.shape[1], weight.shape[0], True, False
        elif module is input_embeddings and config.include_embeddings:
            out_f, in_f, transposed, emb = weight.shape[1], weight.shape[0], True, True
        else:
            continue
        found.append(TrackedWeight(name, module, canonical[id(weight)], out_f, in_f,
                                   transposed, emb))
    if not found:
        raise ConfigError(f"no weights tracked: no nn.Linear/Conv1D module name matches "
                         f"include={config.include!r} exclude={config.exclude!r}")
    return found
