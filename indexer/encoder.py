"""Query vectors with exactly the index's engine settings (model, moments, projection)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from tda.engine import Featurizer, TrackStarConfig, load_model, model_fingerprint
from tda.indexer.store import IndexStore
from tda.schemas.index import Manifest

STOP = (".", ",", ";", "\n", "!", "?")


class ModelMismatch(ValueError):
    """The model given for queries is not the one the index was built with."""


class QueryEncoder:
    """Loads the index's model (or ``model_dir``, which must have the same fingerprint) and
    encodes (prompt, target) queries. Thread-safe: one query batch at a time."""

    def __init__(self, store: IndexStore, model_dir: str | Path | None = None,
                 device: str | None = None):
        manifest: Manifest = store.manifest
        path = Path(model_dir or manifest.model["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: the index's model directory is not there; pass "
                                    f"--model DIR (a copy of the same model)")
        fp = model_fingerprint(path)
        if fp != manifest.model["fingerprint"]:
            raise ModelMismatch(f"{path}: model fingerprint {fp} does not match the index's "
                                f"{manifest.model['fingerprint']} (built from "
                                f"{manifest.model['path']})")
        config = TrackStarConfig.from_dict(manifest.featurizer["config"])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(path, dtype=config.dtype, device=device)
        self.featurizer = Featurizer(self.model, self.tokenizer, config,
                                     optimizer_state=store.read_moments())
        names = [t["name"] for t in manifest.featurizer["tracked"]]
        if [w.name for w in self.featurizer.weights] != names or \
                self.featurizer.dim != manifest.dim:
            raise ModelMismatch(f"{path}: tracked weights or dimension differ from the index's")
        self.config = config
        self._lock = threading.Lock()

    def encode(self, queries: list[tuple[str, str]]) -> np.ndarray:
        """(prompt, target) pairs -> unit rows [m, d] float32 (ValueError names a bad query)."""
        with self._lock:
            return self.featurizer.encode_queries(queries)

    def continuation(self, prompt: str, max_new_tokens: int = 8) -> str:
        """The model's greedy continuation of ``prompt``, cut before the first token that holds
        a sentence or clause break (at least one token is kept)."""
        with self._lock, torch.no_grad():
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.model.device)
            if ids.shape[1] + 1 > self.config.max_len:
                raise ValueError(f"prompt is {ids.shape[1]} tokens; at most "
                                 f"{self.config.max_len - 1} leave room for a target")
            new = []
            for _ in range(min(max_new_tokens, self.config.max_len - ids.shape[1])):
                logits = self.model(input_ids=ids, use_cache=False).logits[0, -1]
                token = int(logits.argmax())
                piece = self.tokenizer.decode([token])
                if new and (token == self.tokenizer.eos_token_id or any(c in piece for c in STOP)):
                    break
                new.append(token)
                ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
                if token == self.tokenizer.eos_token_id:
                    break
            return self.tokenizer.decode(new)
