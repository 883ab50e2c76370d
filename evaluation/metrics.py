"""Fact-tracing retrieval metrics, as the TrackStar paper's released viewer defines them, and
bootstrap intervals.

The definitions follow ``getGroundTruthMetrics`` in ``demo/metrics.ts`` of the paper authors'
release (github.com/PAIR-code/pretraining-tda, Chang et al. 2024), which scores one query's
retrieved list from ``proponent_correct`` (does each retrieved passage state the fact?):

- ``recall@10`` (:func:`recall_at`): 1 when any of the top 10 is correct, else 0 (a hit rate);
- ``precision@10`` (:func:`precision_at`): correct among the top 10, divided by 10;
- ``mrr_first`` (:func:`reciprocal_rank`, the paper's MRR): 1 / rank of the first correct
  passage in the list, 0 when none is. tda's lists hold the top 100 (``cutoff``).

tda's earlier "recall@10", the share of the query's proponents found in the top 10, is kept as
``coverage@10`` (:func:`coverage_at`). :func:`ground_truth_metrics` computes the paper's three
from a ``proponent_correct`` list exactly as the viewer does.

One query's ranking is a list of retrieved ids, best first; its ground truth is the set of
documents that state the fact (the query's *proponents*). Rankings over chunks (``DOCID#N``) are
first reduced to documents with :func:`to_documents`, so that a document counts once, at the
rank of its best chunk.

A query with no ground-truth proponent cannot be scored: the ranking metrics raise
``EvalError`` (a ``ValueError``) for an empty ``relevant`` set rather than silently counting it
as a miss (filter such queries out, and report how many).
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Mapping, Sequence

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


def correct_flags(ranked_ids: Iterable[str], relevant: Iterable[str],
                  cutoff: int | None = None) -> list[bool]:
    """Per retrieved id (the first ``cutoff``, all when None): is it a ground-truth proponent?
    This is the release format's ``proponent_correct``. Raises EvalError for an empty
    ``relevant``."""
    relevant = _check_relevant(relevant)
    ids = ranked_ids if cutoff is None else islice(ranked_ids, cutoff)
    return [example_id in relevant for example_id in ids]


def ground_truth_metrics(correct: Sequence[bool], k: int = 10) -> dict[str, float]:
    """The paper viewer's metrics of one retrieved list from its ``proponent_correct`` flags:
    ``recall@k`` (1.0 if any of the first k is correct), ``precision@k`` (correct among the
    first k / k; the viewer reports 0 for a list shorter than k, and so does this) and
    ``mrr_first`` (1 / 1-based position of the first correct flag in the whole list, 0.0 when
    none)."""
    if k < 1:
        raise EvalError(f"k must be >= 1, got {k}")
    flags = [bool(c) for c in correct]
    first = flags.index(True) + 1 if True in flags else 0
    return {f"recall@{k}": float(any(flags[:k])),
            f"precision@{k}": sum(flags[:k]) / k if len(flags) >= k else 0.0,
            "mrr_first": 1.0 / first if first else 0.0}


def reciprocal_rank(ranked_ids: Iterable[str], relevant: Iterable[str], cutoff: int = 100) -> float:
    """1 / rank (1-based) of the first ground-truth proponent among the top ``cutoff`` retrieved
    ids, 0.0 when none is there: the paper's ``mrr_first`` of a list of ``cutoff`` (its mean
    over queries is the MRR). Raises EvalError for an empty ``relevant`` or cutoff < 1."""
    if cutoff < 1:
        raise EvalError(f"cutoff must be >= 1, got {cutoff}")
    return ground_truth_metrics(correct_flags(ranked_ids, relevant, cutoff))["mrr_first"]


def recall_at(ranked_ids: Iterable[str], relevant: Iterable[str], k: int = 10) -> float:
    """The paper's recall@k: 1.0 when at least one of the top ``k`` retrieved ids is a
    ground-truth proponent, else 0.0 (its mean over queries is a hit rate). Raises EvalError
    for an empty ``relevant`` or k < 1."""
    if k < 1:
        raise EvalError(f"k must be >= 1, got {k}")
    return float(any(correct_flags(ranked_ids, relevant, k)))


def precision_at(ranked_ids: Iterable[str], relevant: Iterable[str], k: int = 10) -> float:
    """The paper's precision@k: ground-truth proponents among the top ``k`` retrieved ids,
    divided by ``k`` (a ranking shorter than k scores 0.0, as in the viewer; a repeated id
    counts at each position, as a flag list does). Raises EvalError for an empty ``relevant``
    or k < 1."""
    return ground_truth_metrics(correct_flags(ranked_ids, relevant, k), k)[f"precision@{k}"]


def coverage_at(ranked_ids: Iterable[str], relevant: Iterable[str], k: int = 10) -> float:
    """Coverage@k (tda's former "recall@k"): the fraction of the query's ground-truth
    proponents found in the top ``k``, ``|set(top k) & relevant| / |relevant|`` (a repeated id
    counts once). With more than ``k`` proponents the best possible value is
    ``k / |relevant|``. Reduce chunk rankings with :func:`to_documents` first. Raises
    EvalError for an empty ``relevant`` or k < 1."""
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
