"""A correction profile as stored: ``profiles/<name>/`` of the index (layout: store/layout.py).

Attributes ``settings`` (written first), ``transform`` (once the blocks are stored: lambda,
K, eigenvalues at K) and ``complete`` (last, after every shard is transformed: the build's
summary); arrays ``transform/<IIIII>`` [d_b, d_b] float32, one R^-1/2 block per tracked weight;
and ``shards/<NNNNNN>/vectors`` (``IndexStore.write_profile_shard``), unit rows
R^-1/2 v / ||R^-1/2 v|| in the index's storage dtype. A profile without ``complete`` is never
searched. Fitting R is ``indexer/precondition.py``; applying it at search time is
``searcher/profiles.py``.
"""
from __future__ import annotations

import numpy as np

from tda.store.faults import crash_point
from tda.store.layout import COMPLETE_KEY, SETTINGS_KEY, TRANSFORM, TRANSFORM_KEY, block_name


def complete_profiles(store) -> list[str]:
    """The names of ``store``'s complete profiles (the only ones search uses), sorted."""
    return [n for n in store.profile_names() if store.profile(n).is_complete]


class StoredProfile:
    """One profile group of an index (``IndexStore.profile(name)``)."""

    def __init__(self, store, name: str, group):
        self.store, self.name, self.group = store, name, group

    @property
    def settings(self) -> dict | None:
        """What the profile was asked to be (mode, sample, K, damping, seed, queries)."""
        return self.group.attrs.get(SETTINGS_KEY)

    @settings.setter
    def settings(self, value: dict) -> None:
        self.group.attrs[SETTINGS_KEY] = value

    @property
    def transform_info(self) -> dict | None:
        """What fitting chose (lambda, K, eigenvalues at K, sample sizes); None before."""
        return self.group.attrs.get(TRANSFORM_KEY)

    @property
    def summary(self) -> dict | None:
        """The finished build's summary; None while the profile is unfinished."""
        return self.group.attrs.get(COMPLETE_KEY)

    @property
    def is_complete(self) -> bool:
        """Whether the build finished (only then is the profile searched)."""
        return bool(self.summary)

    def write_transform(self, blocks: list[np.ndarray], info: dict) -> None:
        """Store the R^-1/2 blocks ([d_b, d_b] each, in tracked order) as float32, then
        ``info`` (which marks the transform as stored)."""
        if TRANSFORM in self.group:
            del self.group[TRANSFORM]
        t = self.group.create_group(TRANSFORM)
        for i, b in enumerate(blocks):
            arr = t.create_array(block_name(i), shape=tuple(b.shape), dtype="float32")
            arr[:] = np.asarray(b, dtype=np.float32)
        crash_point("profile-transform")
        self.group.attrs[TRANSFORM_KEY] = info

    def read_transform(self) -> list[np.ndarray]:
        """The R^-1/2 blocks as stored: [d_b, d_b] float32 each, in tracked order."""
        t = self.group[TRANSFORM]
        n = len(list(t.array_keys()))
        return [t[block_name(i)][:] for i in range(n)]

    def mark_complete(self, summary: dict) -> None:
        """Written last: from now on the profile is searched."""
        self.group.attrs[COMPLETE_KEY] = summary
