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

    @classmethod
    def load(cls, store: IndexStore, name: str) -> "Profile":
        """Profile ``name`` of ``store``; ProfileMissing when it is absent or unfinished."""
        stored = store.profile(name)
        if stored is None or not stored.is_complete:
            raise ProfileMissing(f"{store.url}: no complete profile {name!r} "
                                 f"(profiles: {complete_profiles(store) or 'none'})")
        blocks = [torch.from_numpy(b).double() for b in stored.read_transform()]
        return cls(name, blocks, preconditioner.block_slices(store.manifest.engine.block_dims),
                   dict(stored.group.attrs))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Unit rows [n, d] -> R^-1/2 v / ||R^-1/2 v||, float32."""
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).double()
        return preconditioner.transform(self.blocks, self.slices, x).float().numpy()
