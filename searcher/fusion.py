"""Reciprocal rank fusion (Cormack et al. 2009).

fused(d) = sum over lists L containing d of 1 / (RRF_K + rank_L(d)), ranks 1-based, RRF_K = 60.
Each list contributes its top ``depth`` entries; ties are broken by best single-list rank, then
by id, so the fused order is deterministic.
"""
from __future__ import annotations

from tda.schemas.search import RRF_K


def rrf(lists: dict[str, list[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Fuse ranked id lists; returns (id, fused score) best first."""
    scores: dict[str, float] = {}
    best: dict[str, int] = {}
    for ids in lists.values():
        for rank, doc in enumerate(ids, 1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
            best[doc] = min(best.get(doc, rank), rank)
    return sorted(scores.items(), key=lambda x: (-x[1], best[x[0]], x[0]))
