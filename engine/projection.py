"""Deterministic Gaussian projection matrices, one per (seed, weight name, side).

Query and index sides regenerate the same matrices from the manifest, so none are stored.
"""
from __future__ import annotations

import hashlib

import torch

SIDES = ("out", "in")


def projection_seed(seed: int, name: str, side: str) -> int:
    """A 63-bit generator seed derived from (seed, module name, side) by sha256."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def projection_matrix(seed: int, name: str, side: str, n: int, k: int, blocks: int = 1,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``blocks`` independent [n, k] matrices side by side, entries i.i.d. N(0, 1/k):
    shape [n, blocks*k]; block j is columns j*k:(j+1)*k.

    Drawn on the CPU in float64 and then cast, so every device and dtype sees the same numbers.
    """
    gen = torch.Generator(device="cpu").manual_seed(projection_seed(seed, name, side))
    p = torch.randn((n, blocks * k), generator=gen, dtype=torch.float64) / k ** 0.5
    return p.to(dtype=dtype, device=device)


def projection_digest(matrices) -> str:
    """sha256 (hex, 16 chars) over the first 16 rows of each projection matrix, rounded to
    float32: the index records it and the query side compares, so a torch that draws other
    normals (or other seeds) is an error, not silently different vectors."""
    h = hashlib.sha256()
    for p in matrices:
        rows = p[..., :16, :] if p.dim() == 3 else p[:16]
        h.update(rows.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
