"""Breakdowns of the fact-tracing table: by how often a fact is stated in the corpus, and by
what kind of sentence each method's top results are.

- Frequency buckets (as the paper groups facts by their C4 frequency): a fact's frequency is
  the number of corpus texts that state it (its proponents, exact in a closed set), bucketed by
  ``pair_format.frequency_bucket`` (1, 2-3, 4-7, 8-15, 16-31, 32+).
- Sentence classes of a retrieved text relative to the query: ``own`` (states the query's
  fact), ``same_relation`` (states another fact of the query's relation: the same template
  family, e.g. another birthplace sentence for a birthplace query), ``other`` (anything else:
  other relations, distractors). Per class: its share of the top k and the tail-patch of its
  sentences, with bootstrap intervals that resample queries (a query's sentences move
  together).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tda.evaluation.metrics import summarize
from tda.evaluation.pair_format import frequency_bucket
from tda.schemas.queries import Query

CLASSES: tuple[str, ...] = ("own", "same_relation", "other")


def bucket_of(query: Query) -> int:
    """The query's frequency bucket (from the number of its proponents)."""
    return frequency_bucket(len(query.proponents))


def by_bucket(queries: Sequence[Query], values: Mapping[str, Sequence[float]]
              ) -> dict[int, dict[str, dict]]:
    """Per frequency bucket (only buckets with queries), per metric: the summary over the
    bucket's queries. ``values[metric]`` holds one value per query, in ``queries`` order, or
    None where the query was not scored (e.g. not tail-patched)."""
    out: dict[int, dict[str, dict]] = {}
    buckets = [bucket_of(q) for q in queries]
    for b in sorted(set(buckets)):
        rows = [i for i, x in enumerate(buckets) if x == b]
        entry: dict[str, dict] = {"queries": {"n": len(rows),
                                              "proponents_min": min(len(queries[i].proponents)
                                                                    for i in rows),
                                              "proponents_max": max(len(queries[i].proponents)
                                                                    for i in rows)}}
        for metric, per_query in values.items():
            got = [per_query[i] for i in rows if per_query[i] is not None]
            if got:
                entry[metric] = summarize(got)
        out[b] = entry
    return out


class SentenceClasses:
    """Which facts (and so relations) each corpus text states, from the queries' proponents."""

    def __init__(self, queries: Sequence[Query]):
        self.relation_of = {q.id: q.relation for q in queries}
        self.facts_of: dict[str, set[str]] = {}
        for q in queries:
            for doc in q.proponents:
                self.facts_of.setdefault(doc, set()).add(q.id)

    def classify(self, query: Query, doc_id: str) -> str:
        facts = self.facts_of.get(doc_id, set())
        if query.id in facts:
            return "own"
        if any(self.relation_of[f] == query.relation for f in facts):
            return "same_relation"
        return "other"


def class_breakdown(queries: Sequence[Query], ranked: Mapping[int, Sequence[str]],
                    deltas: Mapping[int, Sequence[float]] | None, classes: SentenceClasses,
                    k: int = 10, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per sentence class over the given queries' top ``k`` (``ranked[i]``: query i's document
    ids, best first): ``share`` (the class's share of all top-k slots, with a query-resampling
    interval), ``sentences`` (how many) and, where ``deltas[i]`` holds the tail-patch of query
    i's top-k sentences in the same order, ``tail_patch`` (mean over the class's sentences,
    query-resampling interval)."""
    rows = sorted(ranked)
    labels = {i: [classes.classify(queries[i], d) for d in list(ranked[i])[:k]] for i in rows}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rows), size=(n_resamples, len(rows))) if rows else None
    out: dict[str, dict] = {}
    for c in CLASSES:
        hits = np.array([sum(x == c for x in labels[i]) for i in rows], dtype=np.float64)
        slots = np.array([len(labels[i]) for i in rows], dtype=np.float64)
        entry: dict = {"sentences": int(hits.sum())}
        if slots.sum():
            entry["share"] = _ratio(hits, slots, draws)
        if deltas is not None:
            sums = np.array([sum(v for v, x in zip(deltas.get(i, ()), labels[i]) if x == c)
                             for i in rows], dtype=np.float64)
            counted = np.array([sum(1 for _, x in zip(deltas.get(i, ()), labels[i]) if x == c)
                                for i in rows], dtype=np.float64)
            if counted.sum():
                entry["tail_patch"] = _ratio(sums, counted, draws)
        out[c] = entry
    return out


def _ratio(num: np.ndarray, den: np.ndarray, draws) -> dict:
    """sum(num) / sum(den) over queries, with the 2.5/97.5 percentiles over query resamples."""
    mean = float(num.sum() / den.sum())
    boot = num[draws].sum(axis=1) / np.maximum(den[draws].sum(axis=1), 1e-300)
    boot = boot[den[draws].sum(axis=1) > 0]
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (mean, mean)
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": int(den.sum())}
