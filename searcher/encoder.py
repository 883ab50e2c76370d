"""Query vectors with exactly the index's engine settings (model, moments, projection)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from tda.engine import Featurizer, load_model
from tda.engine.model import check_model
from tda.engine.sources import ModelSource
from tda.errors import ModelMismatch
from tda.store.index import IndexStore


class QueryEncoder:
    """Loads the index's model (or ``model_dir``, which must have the same fingerprint: else
    ModelMismatch) and encodes (prompt, target) queries into the index's vector space.
    Thread-safe: one call at a time holds ``lock`` (text generation takes it too)."""

    def __init__(self, store: IndexStore, model_dir: str | Path | None = None,
                 device: str | None = None, source: ModelSource | None = None):
        manifest = store.manifest
        source = source or self.check(store, model_dir)
        path = source.path
        config = manifest.engine.config
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(source, dtype=config.dtype, device=device)
        self.featurizer = Featurizer(self.model, self.tokenizer, config,
                                     optimizer_state=store.read_moments())
        names = [t.name for t in manifest.engine.tracked]
        if [w.name for w in self.featurizer.weights] != names or \
                self.featurizer.dim != manifest.dim:
            raise ModelMismatch(f"{path}: tracked weights or dimension differ from the index's "
                                f"({store.url})")
        digest = manifest.engine.projection_digest
        if digest is not None and digest != self.featurizer.projection_digest:
            raise ModelMismatch(
                f"{store.url}: projection matrices differ from the index's (digest "
                f"{self.featurizer.projection_digest} vs {digest}): this torch "
                f"({torch.__version__}) draws other normals from the same seeds than the one "
                f"that built the index ({manifest.engine.torch or 'unknown'}); query with that "
                f"torch version, or rebuild the index")
        self.config = config
        self.lock = threading.Lock()

    @staticmethod
    def check(store: IndexStore, model_dir: str | Path | None = None) -> ModelSource:
        """The model to load for ``store``'s queries: ``model_dir`` or the index's own, checked
        by fingerprint (ModelMismatch, ModelMissing); reads the model's files, loads nothing."""
        manifest = store.manifest
        return check_model(model_dir or manifest.model.path, manifest.model.fingerprint,
                           f"index {store.url}, built from {manifest.model.path}",
                           None if model_dir else manifest.model.base_model)

    def encode(self, queries: list[tuple[str, str]]) -> np.ndarray:
        """(prompt, target) pairs -> query vectors [m, d] float32, unit rows when the index is
        unit-normalized (QueryError names a bad query)."""
        with self.lock:
            return self.featurizer.encode_queries(queries)

    def phi(self, queries: list[tuple[str, str]]) -> torch.Tensor:
        """(prompt, target) pairs -> un-normalized phi [m, d] float32 (what R_eval is fitted
        from)."""
        with self.lock:
            feats = self.featurizer.featurize(self.featurizer.query_sequences(queries))
        if self.config.unit_normalize:
            return feats.vectors * feats.norm[:, None]
        return feats.vectors
