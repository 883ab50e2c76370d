"""Per-query retrieval results in the format of the TrackStar paper's released results.

The paper's authors release their results as JSON Lines, one object per query, and a viewer
that loads them (github.com/PAIR-code/pretraining-tda: the field list is in its ``README.md``,
"TDA method results"; the viewer reads them in ``demo/data_loader.ts`` and
``demo/example_view.ts``, and scores them with ``getGroundTruthMetrics`` in
``demo/metrics.ts``). tda writes the same fields, so that viewer and any tool written for it
load tda's results:

- ``example_id`` (str): the query's id. The viewer shows the T-REx layout (relation, ground
  truth, frequency) for ids that start with ``trex``; the evaluation's ids are
  ``trex-`` + the benchmark query id.
- ``query_set`` (str): which set of queries (e.g. the benchmark's name).
- ``inputs_plaintext`` (str): the prompt; ``targets_plaintext`` (str): the target.
- ``proponents`` (str[]), ``proponent_ids`` (str[]), ``proponent_scores`` (number[]): the
  retrieved passages' texts, ids and scores, best first (the method's own score: cosine for
  gradient methods, BM25's, or reciprocal-rank fusion's).
- ``opponents``, ``opponent_ids``, ``opponent_scores``: for methods with a notion of opponents
  (gradient methods; not BM25 or the fused list): the lowest scores, lowest first.
- T-REx records: ``fact_id`` (the fact's LAMA uuid), ``relation`` (e.g. ``P19``),
  ``proponent_correct`` (bool[]: does each proponent state the fact, by the benchmark's
  ground truth), ``has_trex_sentence`` (does any Wikipedia sentence of the corpus state it).
- Fields the viewer reads under its older names: ``model_confidence`` (the paper writes
  ``8b_confidence``, the share of the 8B model's samples that match; tda writes p(target |
  prompt) under the evaluated model), ``fact_frequency`` and ``frequency_bucket`` (the paper:
  ``c4_frequency`` and its bucket 0-5, from string matches in C4; tda: the number of corpus
  texts that state the fact, the closed set's exact count, bucketed by :func:`frequency_bucket`).
- tda's own additions (ignored by the viewer): ``method``, ``ground_truth_ids`` (every corpus
  text that states the fact, so coverage@k can be recomputed), ``model_knows`` (the target is
  the model's greedy continuation).

:func:`read_pair_jsonl` reads such a file back (checking the fields and their lengths), and
:func:`pair_metrics` computes the viewer's recall@10, precision@10 and MRR from it. The
evaluation writes one file per method (``evaluation/run.py``); ``tda search --format pair``
writes the same records for any queries (:func:`response_records`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tda.errors import EvalError, PairFormatError
from tda.evaluation.metrics import correct_flags, coverage_at, ground_truth_metrics
from tda.schemas.jsonl import read_jsonl
from tda.schemas.queries import Query
from tda.schemas.search import Hit, SearchResponse

# The field list of the release (README.md, "TDA method results").
REQUIRED_FIELDS: tuple[str, ...] = ("example_id", "inputs_plaintext", "targets_plaintext",
                                    "proponents", "proponent_ids", "proponent_scores")
OPPONENT_FIELDS: tuple[str, ...] = ("opponents", "opponent_ids", "opponent_scores")
TREX_FIELDS: tuple[str, ...] = ("fact_id", "relation", "proponent_correct",
                                "has_trex_sentence")
RELEASE_FIELDS: tuple[str, ...] = (("query_set",) + REQUIRED_FIELDS + OPPONENT_FIELDS
                                   + TREX_FIELDS + ("model_confidence", "fact_frequency",
                                                    "frequency_bucket"))
TDA_FIELDS: tuple[str, ...] = ("method", "ground_truth_ids", "model_knows")
FREQUENCY_BUCKETS = 6          # as the paper's c4_frequency_bucket: 0 .. 5


@dataclass
class PairRecord:
    """One query's results (fields as in the module docstring; None: not written)."""

    example_id: str
    inputs_plaintext: str
    targets_plaintext: str
    proponents: list[str]
    proponent_ids: list[str]
    proponent_scores: list[float]
    query_set: str | None = None
    opponents: list[str] | None = None
    opponent_ids: list[str] | None = None
    opponent_scores: list[float] | None = None
    fact_id: str | None = None
    relation: str | None = None
    proponent_correct: list[bool] | None = None
    has_trex_sentence: bool | None = None
    model_confidence: float | None = None
    fact_frequency: int | None = None
    frequency_bucket: int | None = None
    method: str | None = None
    ground_truth_ids: list[str] | None = None
    model_knows: bool | None = None
    extra: dict = field(default_factory=dict)   # other fields found when reading

    def to_dict(self) -> dict:
        """The JSON object: fields in the release's order, None fields left out."""
        d = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {**d, **self.extra}


def frequency_bucket(count: int) -> int:
    """Bucket of a fact's frequency (texts stating it): ``floor(log2(count))`` capped at 5, so
    1 -> 0, 2-3 -> 1, 4-7 -> 2, 8-15 -> 3, 16-31 -> 4, 32+ -> 5 (six buckets, as the paper's
    ``c4_frequency_bucket``; a count of 0 is bucket 0)."""
    if count < 0:
        raise EvalError(f"count must be >= 0, got {count}")
    return 0 if count <= 1 else min(FREQUENCY_BUCKETS - 1, int(math.log2(count)))


def write_pair_jsonl(path: str | Path, records: Iterable[PairRecord]) -> int:
    """Write records as JSON Lines (UTF-8, one object a line) through a temporary file renamed
    into place, so a reader never sees half a file. Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _check(path, n: int, rec: dict) -> PairRecord:
    def bad(msg: str) -> PairFormatError:
        return PairFormatError(f"{path}:{n}: {msg}")

    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise bad(f"not a results record: missing {', '.join(missing)}")
    for name in ("example_id", "inputs_plaintext", "targets_plaintext"):
        if not isinstance(rec[name], str):
            raise bad(f"{name} must be a string")
    lists = {"proponents": str, "proponent_ids": str, "proponent_scores": (int, float),
             "opponents": str, "opponent_ids": str, "opponent_scores": (int, float),
             "proponent_correct": bool, "ground_truth_ids": str}
    for name, kind in lists.items():
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(
                isinstance(v, kind) and not (kind != bool and isinstance(v, bool))
                for v in value):
            raise bad(f"{name} must be a list of {getattr(kind, '__name__', 'number')}s")
    width = len(rec["proponents"])
    for name in ("proponent_ids", "proponent_scores", "proponent_correct"):
        if rec.get(name) is not None and len(rec[name]) != width:
            raise bad(f"{name} has {len(rec[name])} entries, proponents {width}")
    if any(f in rec for f in OPPONENT_FIELDS):
        if not all(f in rec for f in OPPONENT_FIELDS):
            raise bad(f"opponents need all of {', '.join(OPPONENT_FIELDS)}")
        if len({len(rec[f]) for f in OPPONENT_FIELDS}) != 1:
            raise bad("opponents, opponent_ids and opponent_scores differ in length")
    known = {f for f in PairRecord.__dataclass_fields__ if f != "extra"}
    return PairRecord(**{k: v for k, v in rec.items() if k in known},
                      extra={k: v for k, v in rec.items() if k not in known})


def read_pair_jsonl(path: str | Path) -> list[PairRecord]:
    """Records of a results file (tda's or the paper's release); a record without the required
    fields, or with lists of mismatched lengths, raises PairFormatError naming FILE:LINE."""
    out = [_check(path, n, rec) for n, rec in read_jsonl(path, PairFormatError)]
    if not out:
        raise PairFormatError(f"{path}: no records")
    return out


def pair_metrics(records: Iterable[PairRecord], k: int = 10) -> dict[str, float]:
    """Means over records of the viewer's ``recall@k``, ``precision@k`` and ``mrr_first``
    (from ``proponent_correct``), and tda's ``coverage@k`` where ``ground_truth_ids`` are
    given. Records without ``proponent_correct`` cannot be scored: PairFormatError."""
    sums: dict[str, float] = {}
    n = covered = 0
    for rec in records:
        if rec.proponent_correct is None:
            raise PairFormatError(f"{rec.example_id}: no proponent_correct: cannot be scored")
        for name, value in ground_truth_metrics(rec.proponent_correct, k).items():
            sums[name] = sums.get(name, 0.0) + value
        n += 1
        if rec.ground_truth_ids:
            sums[f"coverage@{k}"] = sums.get(f"coverage@{k}", 0.0) + coverage_at(
                rec.proponent_ids, rec.ground_truth_ids, k)
            covered += 1
    if not n:
        raise PairFormatError("no records to score")
    out = {name: value / (covered if name.startswith("coverage") else n)
           for name, value in sums.items()}
    out["n"] = n
    return out


SEARCH_LISTS: tuple[str, ...] = ("trackstar", "bm25", "fused")


def response_records(queries: Sequence[Query], responses: Sequence[SearchResponse],
                     text_of: Callable[[str], str],
                     opponents: Sequence[Sequence[Hit]] | None = None,
                     query_set: str | None = None,
                     known: Sequence[bool | None] | None = None) -> Iterator[PairRecord]:
    """``tda search --format pair``: per query, one record per list its response holds
    (``method``: trackstar, bm25 or fused), in query order. ``proponents`` are the full texts
    (``text_of(example id)``), ``proponent_ids`` the example ids, ``proponent_scores`` the
    list's scores; ``opponents[i]`` (``Searcher.opponents``) goes with the trackstar list.
    ``targets_plaintext`` is the response's target (the model's continuation when the query
    gave none). A query with ground-truth ``proponents`` (document ids) also gets
    ``proponent_correct``, ``ground_truth_ids`` and its frequency; ``relation``, ``fact_id``
    (the record's ``uuid``, else its id) where the query has them; ``model_knows`` from
    ``known[i]`` (``queries.knows``: is the given target the model's greedy continuation)."""
    for i, (q, resp) in enumerate(zip(queries, responses)):
        truth = list(q.proponents)
        for name in SEARCH_LISTS:
            hits = getattr(resp, name)
            if not hits:
                continue
            rec = PairRecord(
                example_id=q.id, query_set=query_set, inputs_plaintext=resp.prompt,
                targets_plaintext=resp.target, proponents=[text_of(h.id) for h in hits],
                proponent_ids=[h.id for h in hits],
                proponent_scores=[float(h.score) for h in hits], method=name,
                relation=q.relation or None,
                fact_id=str(q.extra.get("uuid", q.id)) if q.relation or truth else None,
                model_knows=None if known is None else known[i])
            if truth:
                rec.proponent_correct = correct_flags([h.doc_id for h in hits], truth)
                rec.ground_truth_ids = truth
                rec.has_trex_sentence = bool(q.wikipedia_proponents)
                rec.fact_frequency = len(truth)
                rec.frequency_bucket = frequency_bucket(len(truth))
            if name == "trackstar" and opponents is not None:
                opp = opponents[i]
                rec.opponents = [text_of(h.id) for h in opp]
                rec.opponent_ids = [h.id for h in opp]
                rec.opponent_scores = [float(h.score) for h in opp]
            yield rec


def sample_pairs(src: str | Path, out: str | Path, queries: int = 40, top: int = 20) -> dict:
    """A small viewable copy of a report's ``pairs/`` directory: of every ``METHOD.jsonl``, the
    first ``queries`` records with their lists cut to the first ``top`` (proponents, their ids,
    scores and flags, and the opponents alike). Metrics computed from the copy are those of
    lists of ``top``. Returns {file: records written}."""
    src, out = Path(src), Path(out)
    files = sorted(src.glob("*.jsonl"))
    if not files:
        raise PairFormatError(f"{src}: no .jsonl results files")
    written = {}
    for file in files:
        recs = read_pair_jsonl(file)[:queries]
        for rec in recs:
            for name in ("proponents", "proponent_ids", "proponent_scores",
                         "proponent_correct") + OPPONENT_FIELDS:
                if getattr(rec, name) is not None:
                    setattr(rec, name, getattr(rec, name)[:top])
        written[file.name] = write_pair_jsonl(out / file.name, recs)
    return written

