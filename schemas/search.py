"""Search requests and responses (pydantic: validated, JSON-serializable, and the server's
OpenAPI schema). Version: SEARCH_SCHEMA_VERSION."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SEARCH_SCHEMA_VERSION = 1
Mode = Literal["trackstar", "bm25", "both", "fused"]
LISTS = ("trackstar", "bm25", "fused")
RRF_K = 60


class SearchRequest(BaseModel):
    """One attribution query: which training examples made the model say ``target`` after
    ``prompt``?"""

    prompt: str = Field(..., min_length=1, description="Text the model continues.")
    target: str | None = Field(None, description="The continuation to attribute; omitted: the "
                                                 "model's own greedy continuation.")
    k: int = Field(10, ge=1, description="Results per list.")
    mode: Mode | None = Field(None, description="trackstar | bm25 | both (both lists and the "
                                                "fused one) | fused (fused list only); "
                                                "default: both when the index has BM25, else "
                                                "trackstar.")
    profile: str | None = Field(None, description="Correction profile (tda precondition); "
                                                  "none: unit-normalized vectors as indexed.")
    explain: bool = Field(False, description="Token salience for each TrackStar hit: how much "
                                             "each of its tokens adds to its score.")


class Span(BaseModel):
    """A stretch of an example's text and what it adds to the hit's score."""

    start: int = Field(..., description="First character, an offset into Salience.text.")
    end: int = Field(..., description="One past the last character (start == end for a "
                                      "special token such as BOS, which has no text).")
    value: float = Field(..., description="Its contribution to the score (same units).")


class Salience(BaseModel):
    """Where a TrackStar hit's score comes from, token by token: the contributions add up to
    ``score``, the hit's score recomputed from the example's tokens."""

    method: str = Field(..., description="How the score is split into per-token terms.")
    text: str = Field(..., description="The example's whole text as indexed.")
    score: float = Field(..., description="Sum of the token contributions: the hit's score "
                                          "recomputed (equal to it up to the index's storage "
                                          "precision).")
    tokens: list[Span] = Field(..., description="One span per token of the example, in order.")
    words: list[Span] = Field(..., description="The tokens summed over whitespace-separated "
                                               "words (what the viewer draws).")


class Hit(BaseModel):
    """One training example in one ranked list."""

    id: str = Field(..., description="Example id (DOCID, or DOCID#N for a chunk).")
    doc_id: str
    snippet: str = Field(..., description="The example's text, cut to a snippet.")
    score: float = Field(..., description="Score in this list: cosine for trackstar, BM25 for "
                                          "bm25, reciprocal-rank-fusion for fused.")
    ranks: dict[str, int | None] = Field(
        ..., description="1-based rank in each list (trackstar, bm25, fused); null when the "
                         "example is not in that list's top k.")
    salience: Salience | None = Field(None, description="Per-token contributions to the "
                                                        "score (TrackStar hits, explain=true).")


class SearchResponse(BaseModel):
    """The answer to one SearchRequest: up to k hits per requested list, best first."""

    schema_version: int = SEARCH_SCHEMA_VERSION
    prompt: str
    target: str
    target_generated: bool = Field(..., description="True when the target is the model's "
                                                    "greedy continuation, not given.")
    mode: Mode
    profile: str | None = None
    k: int
    trackstar: list[Hit] = Field(default_factory=list)
    bm25: list[Hit] = Field(default_factory=list)
    fused: list[Hit] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list, description="E.g. shards left out as "
                                                                   "corrupt (--allow-partial).")


class BatchRequest(BaseModel):
    """Several queries answered in one pass over the vectors (``POST /search/batch``)."""

    requests: list[SearchRequest] = Field(..., min_length=1,
                                          description="The queries, answered in this order.")


class BatchResponse(BaseModel):
    """One SearchResponse per request of a BatchRequest, in order."""

    responses: list[SearchResponse]


class IndexedExample(BaseModel):
    """One training example as indexed (``GET /documents/{id}``, ``Searcher.document``): a
    corpus document, or one chunk of a long one. Not a corpus ``Document`` (schemas/corpus.py),
    which is a record as read."""

    id: str = Field(..., description="Example id (DOCID, or DOCID#N for a chunk).")
    doc_id: str = Field(..., description="The corpus document it came from.")
    text: str
    n_tokens: int = Field(..., description="Tokens of the example (special tokens included).")
    loss: float = Field(..., description="The model's summed NLL of the example, nats.")


class HealthResponse(BaseModel):
    """``GET /health``: the server is up."""

    status: Literal["ok"] = "ok"
    token_required: bool = Field(False, description="Every other endpoint needs a bearer "
                                                    "token (the page asks for it).")
