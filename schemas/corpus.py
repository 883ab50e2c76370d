"""Corpus records and how to read them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tda.schemas.fields import doc


@dataclass(frozen=True)
class Document:
    """One corpus document. ``source`` is its file (or dataset directory), ``line`` its 1-based
    line or row number there."""

    id: str
    text: str
    source: str
    line: int


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read: where, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class CorpusOptions:
    """How corpus files become documents."""

    id_field: str = doc("JSON Lines / Parquet / datasets field holding the document id; empty: "
                        "ids are FILE:LINE.", default="id")
    text_field: str = doc("Field holding the document text.", default="text")
    text_unit: Literal["line", "file"] = doc(
        "Plain text files: one document per line (id FILE:LINE) or per file (id FILE).",
        default="line")
    skip_bad: bool = doc("Skip and count malformed records instead of stopping at the first.",
                         default=False)
