"""Reading JSON Lines: the one reader of every .jsonl tda takes (corpora, queries, search
requests, benchmark and evaluation files), with errors that name FILE:LINE.

``jsonl_lines`` yields every non-blank line's object, or the reason it is not one (bytes that
are not UTF-8, malformed JSON, nesting too deep, an integer of over 4,300 digits, a JSON value
that is not an object), so the corpus reader can skip and count bad records; ``parse_line``
does it for one line (the corpus reader reads byte ranges); ``read_jsonl`` raises at the first
bad line instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from tda.errors import RecordError, TdaError

BOM = "\ufeff"                       # a UTF-8 byte order mark opening a file is not text


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def parse_line(raw: bytes, first: bool = False) -> dict | str | None:
    """One line of a JSON Lines file: its object, the reason it is not one, or None when it is
    blank. ``first``: the file's first line (a byte order mark there is not text)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte {e.start})"
    if first:
        line = line.removeprefix(BOM)
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return f"malformed JSON: {e.msg} at column {e.colno}"
    except ValueError as e:      # an integer of over 4300 digits
        return f"malformed JSON: {_one_line(e)[:200]}"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    return rec


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict | str]]:
    """(1-based line number, object) for every non-blank line, or (line number, reason) for a
    line that is not a JSON object."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            rec = parse_line(raw, line_no == 1)
            if rec is not None:
                yield line_no, rec


def read_jsonl(path: str | Path, error: type[TdaError] = RecordError
               ) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line. A line that is not a JSON
    object raises ``error`` naming the file and line; so does a missing file."""
    if not Path(path).exists():
        raise error(f"{path}: no such file")
    for n, rec in jsonl_lines(path):
        if isinstance(rec, str):
            raise error(f"{path}:{n}: {rec}")
        yield n, rec
