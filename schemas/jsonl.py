"""Reading JSON Lines records (queries, benchmark files) with errors that name FILE:LINE."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class RecordError(ValueError):
    """A JSON Lines record that cannot be used; the message starts with FILE:LINE."""


def read_jsonl(path: str | Path, error: type[ValueError] = RecordError
               ) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line. A line that is not a JSON
    object raises ``error`` naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: malformed JSON: {e.msg} at column {e.colno}") \
                    from None
            if not isinstance(rec, dict):
                raise error(f"{path}:{n}: a JSON {type(rec).__name__}, not an object")
            yield n, rec
