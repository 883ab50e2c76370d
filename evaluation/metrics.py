"""Fact-tracing retrieval metrics: reciprocal rank, recall@k, bootstrap intervals.

One query's ranking is a list of retrieved ids, best first; its ground truth is the set of
documents that state the fact (the query's *proponents*). Rankings over chunks (``DOCID#N``) are
first reduced to documents with :func:`to_documents`, so that a document counts once, at the
rank of its best chunk.

A query with no ground-truth proponent cannot be scored: both metrics raise ``EvalError`` (a
``ValueError``) for an empty ``relevant`` set rather than silently counting it as a miss
(filter such queries out, and report how many).
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Mapping

import numpy as np

from tda.errors import EvalError


def to_documents(ranked_ids: Iterable[str], doc_of: Mapping[str, str] | None = None) -> list[str]:
    """Map a ranking of example ids to a ranking of document ids.

    Each id becomes ``doc_of[id]`` when a mapping is given (an id missing from it is a
    ``KeyError``), else stays as it is. Only the first occurrence of each document is kept, so a
    document's rank is the rank of its first (best) chunk and the documents after it move up.
    Ids are not parsed: a ``DOCID#N`` chunk id needs the mapping (document ids may themselves
    contain ``#``; the index stores each row's ``doc_id``).
    """
    out: list[str] = []
    seen: set[str] = set()
    for example_id in ranked_ids:
        doc = doc_of[example_id] if doc_of is not None else example_id
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def _check_relevant(relevant: Iterable[str]) -> set[str]:
    relevant = set(relevant)
    if not relevant:
        raise EvalError("no ground-truth proponents for this query: it cannot be scored")
    return relevant


def reciprocal_rank(ranked_ids: Iterable[str], relevant: Iterable[str], cutoff: int = 100) -> float:
    """1 / rank (1-based) of the first ground-truth proponent among the top ``cutoff`` retrieved
    ids, 0.0 when none is there. The mean over queries is the MRR of the TrackStar paper
    (Chang et al. 2024, cutoff 100). Raises ValueError for an empty ``relevant`` or cutoff < 1."""
    if cutoff < 1:
        raise EvalError(f"cutoff must be >= 1, got {cutoff}")
    relevant = _check_relevant(relevant)
    for rank, example_id in enumerate(islice(ranked_ids, cutoff), 1):
        if example_id in relevant:
            return 1.0 / rank
    return 0.0


def recall_at(ranked_ids: Iterable[str], relevant: Iterable[str], k: int = 10) -> float:
    """Recall@k: the fraction of the query's ground-truth proponents found in the top ``k``,
    ``|set(top k) & relevant| / |relevant|`` (a repeated id counts once). With more than ``k``
    proponents the best possible value is ``k / |relevant|``. Reduce chunk rankings with
    :func:`to_documents` first. Raises ValueError for an empty ``relevant`` or k < 1."""
    if k < 1:
        raise EvalError(f"k must be >= 1, got {k}")
    relevant = _check_relevant(relevant)
    return len(set(islice(ranked_ids, k)) & relevant) / len(relevant)


def _as_values(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                   dtype=np.float64).ravel()
    if x.size == 0:
        raise EvalError("no values: need at least one query")
    if not np.all(np.isfinite(x)):
        raise EvalError("values must be finite (got NaN or infinity)")
    return x


def bootstrap_ci(values: Iterable[float], n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries.

    Draws ``n_resamples`` resamples of the queries with replacement (numpy ``default_rng(seed)``),
    takes each resample's mean and returns the ``(1 - level) / 2`` and ``(1 + level) / 2``
    percentiles of those means. Deterministic for a seed. A single value gives ``(v, v)``.
    """
    if not 0.0 < level < 1.0:
        raise EvalError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise EvalError(f"n_resamples must be >= 1, got {n_resamples}")
    x = _as_values(values)
    n = x.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    rows = max(1, min(n_resamples, (1 << 22) // n))      # bound the index block's memory
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def summarize(values: Iterable[float], n_resamples: int = 1000, level: float = 0.95,
              seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}`` of per-query values (the interval from
    :func:`bootstrap_ci` with the same arguments)."""
    x = _as_values(values)
    low, high = bootstrap_ci(x, n_resamples=n_resamples, level=level, seed=seed)
    return {"mean": float(x.mean()), "ci_low": low, "ci_high": high, "n": int(x.size)}
