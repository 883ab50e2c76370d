"""Query files: JSON Lines of {prompt, target, ...}, the one reader for every command.

`tda search --queries` (target optional, per-query k/mode/profile), `tda precondition
--queries` (the task's queries for R_eval) and the evaluation's benchmark queries (id,
proponents) are all this format; each reader asks for the fields it needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tda.errors import RecordError
from tda.schemas.jsonl import read_jsonl

KNOWN = ("id", "prompt", "target", "proponents", "wikipedia_proponents", "relation")


@dataclass(frozen=True)
class Query:
    """One line of a query file. ``target`` None: not given (search then uses the model's own
    continuation). ``proponents``: ids of the documents that state the fact (benchmarks);
    ``extra``: every other field of the record (e.g. k, mode, profile for search)."""

    id: str
    prompt: str
    target: str | None
    proponents: tuple[str, ...] = ()
    wikipedia_proponents: tuple[str, ...] = ()
    relation: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    source: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)


def read_queries(path: str | Path, need_target: bool = False,
                 need_id: bool = False) -> list[Query]:
    """Every query of a JSON Lines file, in order. RecordError naming FILE:LINE for a line
    that is not an object, lacks a prompt, has an empty target (or none, with
    ``need_target``), or no id (with ``need_id``; else the id is FILE:LINE); and for a file
    with no queries."""
    out = []
    for n, rec in read_jsonl(path):
        prompt, target = rec.get("prompt"), rec.get("target")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError(f"{path}:{n}: no prompt")
        if target is None and need_target:
            raise RecordError(f"{path}:{n}: target is empty: a query needs target tokens")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise RecordError(f"{path}:{n}: target is empty: a query needs target tokens")
        if need_id and "id" not in rec:
            raise RecordError(f"{path}:{n}: not a query record (missing 'id')")
        try:
            out.append(Query(id=str(rec.get("id", f"{path}:{n}")), prompt=prompt, target=target,
                             proponents=tuple(rec.get("proponents", ())),
                             wikipedia_proponents=tuple(rec.get("wikipedia_proponents", ())),
                             relation=rec.get("relation", ""),
                             extra={k: v for k, v in rec.items() if k not in KNOWN},
                             source=str(path), line=n))
        except TypeError as e:
            raise RecordError(f"{path}:{n}: not a query record ({e})") from None
    if not out:
        raise RecordError(f"{path}: no queries")
    return out
