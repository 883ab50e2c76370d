"""Token-budget batches with length bucketing."""
from __future__ import annotations

from tda.engine.batching import TokenSequence


def budget_batches(seqs: list[TokenSequence], batch_tokens: int) -> list[list[int]]:
    """Group sequence positions into batches whose padded size (rows x longest row) stays within
    ``batch_tokens`` (a single longer sequence gets a batch of its own). Longest first, so
    lengths within a batch are close and the most memory-hungry batch runs first."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].ids))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        n = len(seqs[i].ids)
        w = max(width, n)
        if current and w * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, w = [], n
        current.append(i)
        width = w
    if current:
        batches.append(current)
    return batches
