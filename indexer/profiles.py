"""Correction profiles: R^-1/2 per tracked weight, and every example's vector transformed by it.

A profile lives in ``profiles/<name>/`` of the index: attributes ``settings`` (written first),
``transform`` (once the blocks are stored: lambda, K, eigenvalues at K) and ``complete`` (last,
after every shard is transformed); arrays ``transform/<block>`` [d_b, d_b] float32; and
``shards/<NNNNNN>/vectors``, unit rows R^-1/2 v / ||R^-1/2 v|| with the index's storage dtype.
A profile without ``complete`` is never searched; rerunning the same command finishes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tda.engine import preconditioner as P
from tda.indexer.store import IndexStore
from tda.schemas.index import COMPLETE_KEY, PROFILES
from tda.schemas.jsonl import read_jsonl

MODES = ("none", "train", "mixed")


class ProfileError(ValueError):
    """A profile that cannot be built or used as asked."""


@dataclass
class Profile:
    """A complete profile's transform: blocks [d_b, d_b] over column ``slices``."""

    name: str
    blocks: list[torch.Tensor]
    slices: list[slice]
    info: dict

    @classmethod
    def load(cls, store: IndexStore, name: str) -> "Profile":
        group = profile_group(store, name)
        if group is None or not group.attrs.get(COMPLETE_KEY):
            raise ProfileError(f"{store.url}: no complete profile {name!r} "
                               f"(profiles: {complete_profiles(store) or 'none'})")
        return cls(name, _read_blocks(group), block_slices(store), dict(group.attrs))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Unit rows [n, d] -> R^-1/2 v / ||R^-1/2 v||, float32."""
        x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).double()
        return P.normalize_rows(P.apply_blocks(self.blocks, self.slices, x)).float().numpy()


def block_slices(store: IndexStore) -> list[slice]:
    return P.block_slices([int(t["dim"]) for t in store.manifest.featurizer["tracked"]])


def profile_group(store: IndexStore, name: str):
    try:
        return store.root[f"{PROFILES}/{name}"]
    except KeyError:
        return None


def complete_profiles(store: IndexStore) -> list[str]:
    if PROFILES not in store.root:
        return []
    return sorted(n for n in store.root[PROFILES].group_keys()
                  if store.root[f"{PROFILES}/{n}"].attrs.get(COMPLETE_KEY))


def _read_blocks(group) -> list[torch.Tensor]:
    t = group["transform"]
    n = len(list(t.array_keys()))
    return [torch.from_numpy(t[f"{i:05d}"][:]).double() for i in range(n)]


# --------------------------------------------------------------------------- building
def read_queries(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, target) from JSON Lines; an unusable line is an error naming it."""
    out = []
    for n, rec in read_jsonl(path, ProfileError):
        prompt, target = rec.get("prompt"), rec.get("target")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProfileError(f"{path}:{n}: no prompt")
        if not isinstance(target, str) or not target.strip():
            raise ProfileError(f"{path}:{n}: target is empty: a query needs target tokens")
        out.append((prompt, target))
    if not out:
        raise ProfileError(f"{path}: no queries")
    return out


def sample_phi(store: IndexStore, n: int, seed: int) -> torch.Tensor:
    """phi of ``n`` training examples drawn uniformly without replacement (all if fewer):
    stored unit vector times its norm (or the vector itself when the index is not normalized),
    [n, d] float32."""
    rows = store.complete_shards()
    offsets = np.cumsum([0] + [rows[s] for s in sorted(rows)])
    total = int(offsets[-1])
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    normalized = store.manifest.featurizer["config"]["unit_normalize"]
    parts = []
    for i, shard in enumerate(sorted(rows)):
        local = pick[(pick >= offsets[i]) & (pick < offsets[i + 1])] - offsets[i]
        if local.size:
            data = store.read_shard(shard, ("vectors", "norm"))
            v = data["vectors"][local]
            parts.append(v * data["norm"][local, None] if normalized else v)
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def fit(train_phi: torch.Tensor, eval_phi: torch.Tensor | None, slices: list[slice],
        mode: str, components: int, damping: float) -> tuple[list[torch.Tensor], dict]:
    """The transform blocks R^-1/2 and what was chosen (lambda, K, eigenvalues at K)."""
    d = slices[-1].stop
    if not 1 <= components <= d:
        raise ProfileError(f"components K={components} must be between 1 and d={d}")
    if mode == "none":
        return [torch.eye(s.stop - s.start, dtype=torch.float64) for s in slices], \
            {"lambda": None}
    train = P.second_moment_blocks(train_phi, slices)
    info: dict = {"lambda": 0.0}
    blocks = train
    if mode == "mixed":
        evals = P.second_moment_blocks(eval_phi, slices)
        try:
            lam = P.mixing_lambda(train, evals, components)
        except ValueError as e:
            raise ProfileError(str(e)) from None
        blocks = [lam * e + (1 - lam) * t for e, t in zip(evals, train)]
        info = {"lambda": lam,
                "mu_K_train": float(P.pooled_eigenvalues(train)[components - 1]),
                "mu_K_eval": float(P.pooled_eigenvalues(evals)[components - 1])}
    return [P.inverse_sqrt(b, damping) for b in blocks], info
