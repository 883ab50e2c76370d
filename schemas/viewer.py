"""What the browser page (``searcher/static/``) reads besides search: the server's features
(``GET /config``) and the evaluation reports it shows (``GET /reports...``), as pydantic models
(validated, and the server's OpenAPI schema).

A *report run* is one method's results in one ``.jsonl`` file of the TrackStar paper's released
format (``evaluation/pair_format.py``): a file written by ``tda eval run`` holds one method, one
written by ``tda search --format pair`` one per list it searched (its records' ``method``).
"""
from __future__ import annotations

from pydantic import BaseModel, Field

from tda.schemas.search import Mode


class ViewerConfig(BaseModel):
    """``GET /config``: what this server can do, so the page shows only what works."""

    search: bool = Field(..., description="An index is served: POST /search works.")
    bm25: bool = Field(False, description="The index has BM25 (modes bm25, both, fused).")
    default_mode: Mode | None = Field(None, description="The mode a request without one gets.")
    profiles: list[str] = Field(default_factory=list,
                                description="The index's complete correction profiles.")
    max_k: int = Field(..., description="Largest k a request may ask for.")
    reports: bool = Field(False, description="Report runs are served (GET /reports).")


class QueryMetrics(BaseModel):
    """One list's metrics, as ``pair_metrics`` defines them (the paper viewer's)."""

    mrr: float = Field(..., description="1 / rank of the first correct proponent, 0 if none.")
    recall10: float = Field(..., description="1 if any of the top 10 is correct, else 0.")
    precision10: float = Field(..., description="Correct among the top 10, / 10.")


class ReportRun(BaseModel):
    """One method's results in one report file."""

    id: str = Field(..., description="The run's name in URLs: the file's stem, with "
                                     "':METHOD' when the file holds several methods.")
    file: str = Field(..., description="The .jsonl file's name in the reports directory.")
    method: str = Field(..., description="The records' method (the file's stem when none).")
    queries: int = Field(..., description="Records (queries) of this run.")
    metrics: QueryMetrics | None = Field(None, description="Means over the run's queries; "
                                                           "null when it has no ground truth.")


class ReportList(BaseModel):
    """``GET /reports``: the runs of the reports directory, by file then method."""

    directory: str | None = Field(None, description="The reports directory (null: none).")
    runs: list[ReportRun] = Field(default_factory=list)


class ReportQuery(BaseModel):
    """One query of a run, without its passages (the query list and its filter)."""

    example_id: str
    prompt: str = Field(..., description="inputs_plaintext.")
    target: str = Field(..., description="targets_plaintext.")
    relation: str | None = None
    model_knows: bool | None = Field(None, description="Is the target the model's greedy "
                                                       "continuation (null: not recorded).")
    top_correct: bool | None = Field(None, description="Is the first proponent correct "
                                                       "(null: no ground truth).")
    correct10: int | None = Field(None, description="Correct proponents in the top 10.")
    metrics: QueryMetrics | None = None


class ReportQueries(BaseModel):
    """``GET /reports/{run}/queries``: every query of a run, in file order."""

    run: ReportRun
    queries: list[ReportQuery]


class Passage(BaseModel):
    """One proponent (or opponent) of a query, best first (opponents: lowest first)."""

    id: str
    text: str
    score: float
    correct: bool | None = Field(None, description="Does it state the fact (null: unknown).")


class ReportRecord(BaseModel):
    """``GET /reports/{run}/queries/{example_id}``: one query's whole record."""

    run: ReportRun
    query: ReportQuery
    fact_id: str | None = None
    ground_truth_ids: list[str] | None = Field(None, description="Every corpus text that "
                                                                 "states the fact.")
    model_confidence: float | None = None
    fact_frequency: int | None = None
    proponents: list[Passage]
    opponents: list[Passage] = Field(default_factory=list)
