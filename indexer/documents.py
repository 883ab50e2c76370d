"""From corpus records to the examples of each shard: validation, skipping, chunking, and
reading one shard's examples from where the scan says it starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tda.engine.batching import TokenSequence
from tda.errors import CorpusError
from tda.indexer.readers import Span, read_corpus, read_source
from tda.schemas.corpus import BadRecord, CorpusOptions, Document


def valid_documents(paths, options: CorpusOptions) -> Iterator[Document]:
    """The documents that get indexed, in corpus order, from the start: bad records stop the
    stream with a CorpusError naming file and line (or are skipped with ``skip_bad``); empty
    texts are skipped (the scan, indexer/scan.py, counts both)."""
    for rec in read_corpus(paths, options):
        if isinstance(rec, BadRecord):
            if not options.skip_bad:
                raise CorpusError(f"{rec} (use --skip-bad to skip and count such records)")
            continue
        if rec.text.strip():
            yield rec


@dataclass(frozen=True)
class Example:
    """One training example: a document or one chunk of it."""

    id: str
    doc_id: str
    text: str
    sequence: TokenSequence


def chunk_document(doc: Document, tokenizer, max_len: int) -> list[Example]:
    """Split a document into examples of at most ``max_len`` tokens. A document that fits keeps
    its id; a longer one becomes near-equal chunks with ids DOCID#0, DOCID#1, ... whose texts
    are the matching character spans. When the tokenizer starts sequences with special tokens
    (BOS), every chunk starts with them (they carry no loss), so a later chunk is not
    featurized as if it began mid-stream without one. Documents of a single token are dropped
    (nothing to predict): the list is empty."""
    try:
        enc = tokenizer(doc.text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):   # no offsets support
        enc, offsets = tokenizer(doc.text, add_special_tokens=True), None
    ids = list(enc["input_ids"])
    specials = set(getattr(tokenizer, "all_special_ids", None) or [])
    special = [i in specials for i in ids]
    n = len(ids)
    if n < 2:
        return []
    if n <= max_len:
        return [Example(doc.id, doc.id, doc.text, TokenSequence(tuple(ids), 1))]
    lead = 0
    while lead < n - 1 and special[lead]:
        lead += 1
    lead = lead if lead < max_len - 1 else 0
    body = n - lead
    pieces = -(-body // (max_len - lead))
    out = []
    for j in range(pieces):
        start, end = lead + j * body // pieces, lead + (j + 1) * body // pieces
        if offsets is not None:
            spans = [o for o in offsets[start:end] if o[1] > o[0]]
            text = doc.text[spans[0][0]:spans[-1][1]] if spans else ""
        else:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=True)
        out.append(Example(f"{doc.id}#{j}", doc.id, text,
                           TokenSequence(tuple(ids[:lead] + ids[start:end]), 1)))
    return out


class ShardReader:
    """Reads shards' examples from where the scan says each starts (source, position, line and
    chunk of its first document: indexer/scan.py's ShardTable), chunking documents as it goes.
    Reads nothing before a shard's start and stops at its last document; the next shard of the
    corpus continues the same read, so a rank reading a run of consecutive shards reads each
    byte once. Holds at most one shard's examples and the rest of one document."""

    def __init__(self, files: list[Path], options: CorpusOptions, tokenizer, max_len: int):
        self.files, self.options = files, options
        self.tokenizer, self.max_len = tokenizer, max_len
        self._docs: Iterator[tuple[int, int, Document]] | None = None
        self._pending: list[Example] = []         # the rest of a document cut by a shard end
        self._at: tuple[int, int, int] | None = None  # (source, position, chunk) of _pending[0]

    def _documents(self, source: int, position: int, line: int
                   ) -> Iterator[tuple[int, int, Document]]:
        for i in range(source, len(self.files)):
            span = Span(position, None, line) if i == source else Span()
            for pos, rec in read_source(self.files[i], self.options, span):
                if isinstance(rec, BadRecord):
                    if self.options.skip_bad:
                        continue
                    raise CorpusError(f"{rec}: not in the corpus as scanned (changed since?)")
                if rec.text.strip():
                    yield i, pos, rec

    def _pull(self, skip: int) -> bool:
        """The next document of the open read, chunked, its first ``skip`` chunks dropped."""
        item = next(self._docs, None) if self._docs is not None else None
        if item is None:
            self._docs, self._pending, self._at = None, [], None
            return False
        i, pos, doc = item
        self._pending = chunk_document(doc, self.tokenizer, self.max_len)[skip:]
        self._at = (i, pos, skip)
        return True

    def read(self, start: tuple[int, int, int, int], rows: int) -> list[Example]:
        """The ``rows`` examples of the shard that begins at ``start``."""
        source, position, line, chunk = start
        if self._docs is not None and not self._pending:
            self._pull(0)                   # the previous shard ended with a document
        if self._at != (source, position, chunk):        # not where the last read stopped
            self._docs = self._documents(source, position, line)
            if not self._pull(chunk) or self._at[:2] != (source, position):
                raise CorpusError(f"{self.files[source]}: no document at position {position} "
                                  f"(changed since it was scanned?)")
        out: list[Example] = []
        while True:
            take = self._pending[:rows - len(out)]
            out += take
            self._pending = self._pending[len(take):]
            if self._pending:
                i, pos, ch = self._at
                self._at = (i, pos, ch + len(take))
            if len(out) == rows:
                return out
            if not self._pull(0):
                raise CorpusError(f"{self.files[source]}: the corpus ended {rows - len(out)} "
                                  f"examples short of a shard starting at position {position} "
                                  f"(changed since it was scanned?)")
