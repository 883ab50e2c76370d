"""Reading LAMA T-REx facts (format: ../shared/data/README.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tda.errors import EvalError
from tda.schemas.jsonl import read_jsonl


@dataclass(frozen=True)
class Fact:
    """One Wikidata triple with the Wikipedia sentences that state it (``[MASK]`` filled)."""

    uuid: str
    relation: str
    subject: str
    object: str
    sentences: tuple[str, ...]


def read_facts(lama_dir: str | Path, relations: list[str] | None = None) -> Iterator[Fact]:
    """Facts of the given relations (all P*.jsonl files when None), in file order; each fact's
    sentences deduplicated in first-seen order."""
    lama_dir = Path(lama_dir)
    files = sorted(lama_dir.glob("P*.jsonl")) if relations is None else \
        [lama_dir / f"{r}.jsonl" for r in relations]
    for file in files:
        if not file.is_file():
            raise EvalError(f"{file}: no such relation file")
        for line_no, rec in read_jsonl(file, EvalError):
            try:
                sentences = dict.fromkeys(
                    e["masked_sentence"].replace("[MASK]", e["obj_surface"], 1)
                    for e in rec["evidences"])
                yield Fact(rec["uuid"], rec["predicate_id"], rec["sub_label"],
                           rec["obj_label"], tuple(sentences))
            except (KeyError, TypeError, AttributeError) as e:
                raise EvalError(f"{file}:{line_no}: not a LAMA fact record ({e!r})") from None


def read_sentences(lama_dir: str | Path, n: int, relations: list[str] | None = None) -> list[str]:
    """The first ``n`` distinct evidence sentences."""
    out: dict[str, None] = {}
    for fact in read_facts(lama_dir, relations):
        for s in fact.sentences:
            out.setdefault(s)
            if len(out) >= n:
                return list(out)
    return list(out)
