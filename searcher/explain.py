"""Token salience of TrackStar hits at search time (``explain=True``): each hit's score split
into one term per token of its example (the math: engine/salience.py), with one forward and
one backward over all the hits being explained."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from tda.engine import preconditioner
from tda.engine.salience import (METHOD, example_tokens, token_contributions, warn_mismatch,
                                 word_spans)
from tda.schemas.search import Hit, Salience

LOSS_RTOL = 1e-3      # stored loss vs recomputed: float32 sums of the same tokens agree to this


@dataclass
class Job:
    """One hit to explain: where its example is (``shard``, ``row``), the query vector it was
    scored with (``query`` [d] float32, after the profile transform) and the ``profile``."""

    hit: Hit
    shard: int
    row: int
    query: np.ndarray
    profile: object | None          # searcher.profiles.Profile


def explain(encoder, rows, jobs: list[Job]) -> list[list[str]]:
    """Set ``hit.salience`` on every job's hit; returns each job's warnings (its example's
    text retokenizes to another length or loss than the index stored)."""
    if not jobs:
        return []
    recs = rows.fields([(j.shard, j.row) for j in jobs], ("ids", "doc_ids", "text", "n_tokens",
                                                         "loss"))
    featurizer = encoder.featurizer
    notes: list[list[str]] = [[] for _ in jobs]
    toks = []
    for i, rec in enumerate(recs):
        ex_id, doc_id = str(rec["ids"]), str(rec["doc_ids"])
        t = example_tokens(featurizer.tokenizer, str(rec["text"]), int(rec["n_tokens"]),
                           chunk=ex_id != doc_id, max_len=featurizer.config.max_len)
        if not t.matches:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warn_mismatch(ex_id, len(t.sequence.ids), int(rec["n_tokens"]))
            notes[i] += [str(w.message) for w in caught]
        toks.append(t)
    # one pulled-back query per distinct (query, profile)
    keys: dict[tuple[bytes, int], int] = {}
    queries, query_of = [], []
    for j in jobs:
        key = (np.asarray(j.query, dtype=np.float32).tobytes(), id(j.profile))
        if key not in keys:
            keys[key] = len(queries)
            queries.append(pull_back(j.query, j.profile))
        query_of.append(keys[key])
    with encoder.lock:
        tc = token_contributions(featurizer, [t.sequence for t in toks], np.stack(queries),
                                 query_of)
    phi = tc.phi.double().cpu()
    unit = featurizer.config.unit_normalize
    for i, (job, rec, t) in enumerate(zip(jobs, recs, toks)):
        norm = 1.0
        if unit:
            x = phi[i:i + 1]
            if job.profile is not None:
                x = preconditioner.apply_blocks(job.profile.blocks, job.profile.slices, x)
            norm = float(x.norm())
        values = tc.raw[i] / max(norm, 1e-300)
        stored = float(rec["loss"])
        if t.matches and abs(tc.loss[i] - stored) > LOSS_RTOL * max(1.0, abs(stored)):
            notes[i].append(f"{rec['ids']}: its retokenized text has loss {tc.loss[i]:.4g} nats, "
                         f"the index stored {stored:.4g}: its salience is of the retokenized "
                         f"text")
        text = str(rec["text"])
        # one validation of the whole record: a Span(...) per token paid pydantic's per-call
        # overhead ~12k times per top-10 query (about a third of explain's own cost)
        job.hit.salience = Salience.model_validate({
            "method": METHOD, "text": text, "score": float(values.sum()),
            "tokens": [{"start": int(s), "end": int(e), "value": float(v)}
                       for (s, e), v in zip(t.spans, values)],
            "words": [{"start": int(s), "end": int(e), "value": float(v)}
                      for s, e, v in word_spans(text, t.spans, values)]})
    return notes


def pull_back(query: np.ndarray, profile) -> np.ndarray:
    """The query vector as scored, moved to phi's space: with a profile, score =
    <q, R^-1/2 phi> / ||R^-1/2 phi|| = <(R^-1/2)^T q, phi> / ||R^-1/2 phi||; float64 [d]."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float64).reshape(1, -1))
    if profile is None:
        return q[0].numpy()
    return preconditioner.apply_blocks([b.T for b in profile.blocks], profile.slices, q)[0].numpy()
