"""A correction profile loaded for search: query vectors transformed like the stored ones.

Fitting a profile is ``indexer/precondition.py``; its storage ``store/profiles.py``; the math
``engine/preconditioner.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tda.engine import preconditioner
from tda.errors import ProfileMissing
from tda.store.index import IndexStore
from tda.store.profiles import complete_profiles


@dataclass
class Profile:
    """A complete profile's transform: ``blocks`` R^-1/2 [d_b, d_b] float64 over the vector
    columns ``slices`` (one per tracked weight); ``info`` its stored attributes."""

    name: str
    blocks: list[torch.Tensor]
    slices: list[slice]
    info: dict
    unit_normalize: bool = True

    @classmethod
    def load(cls, store: IndexStore, name: str) -> "Profile":
        """Profile ``name`` of ``store``; ProfileMissing when it is absent or unfinished."""
        stored = store.profile(name)
        if stored is None or not stored.is_complete:
            raise ProfileMissing(f"{store.url}: no complete profile {name!r} "
                                 f"(profiles: {complete_profiles(store) or 'none'})")
        blocks = [torch.from_numpy(b).double() for b in stored.read_transform()]
        return cls(name, blocks, preconditioner.block_slices(store.manifest.engine.block_dims),
                   dict(stored.group.attrs), store.manifest.engine.config.unit_normalize)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Rows [n, d] -> R^-1/2 v, divided by its norm when the index is unit normalized
        (without it, Grad-Dot with R stays a dot product), float32."""
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).double()
        return preconditioner.transform(self.blocks, self.slices, x,
                                        self.unit_normalize).float().numpy()
