"""From corpus records to the examples of each shard: validation, skipping, chunking."""
from __future__ import annotations

import array
import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from tda.engine.batching import TokenSequence
from tda.errors import CorpusError
from tda.indexer.readers import read_corpus
from tda.schemas.corpus import BadRecord, CorpusOptions, Document

MAX_REPORTED = 20


@dataclass
class CorpusScan:
    """What a pass over the corpus found: documents kept, and what was skipped and why."""

    documents: int = 0
    empty: int = 0
    bad: int = 0
    examples_of_bad: list[str] = field(default_factory=list)
    examples_of_empty: list[str] = field(default_factory=list)


def valid_documents(paths, options: CorpusOptions, scan: CorpusScan | None = None
                    ) -> Iterator[Document]:
    """The documents that get indexed, in corpus order: bad records stop the stream with a
    CorpusError naming file and line (or are skipped and counted with ``skip_bad``); empty
    texts are skipped and counted. Every rank applies the same rule, so document ordinals agree.
    """
    scan = scan if scan is not None else CorpusScan()
    for rec in read_corpus(paths, options):
        if isinstance(rec, BadRecord):
            if not options.skip_bad:
                raise CorpusError(f"{rec} (use --skip-bad to skip and count such records)")
            scan.bad += 1
            if len(scan.examples_of_bad) < MAX_REPORTED:
                scan.examples_of_bad.append(str(rec))
            continue
        if not rec.text.strip():
            scan.empty += 1
            if len(scan.examples_of_empty) < MAX_REPORTED:
                scan.examples_of_empty.append(f"{rec.source}:{rec.line}")
            continue
        scan.documents += 1
        yield rec


def scan_corpus(paths, options: CorpusOptions) -> CorpusScan:
    """Read the whole corpus once: counts, bad records, and duplicate ids (an error naming both
    places). Memory: a 64-bit id hash per document in a flat array (8 bytes; up to 16 while
    it grows. A Python set of them took ~80 bytes a document: 6 GB on rank 0 for 78M
    documents). Repeated hashes are found by sorting after the pass; only then is the corpus
    read again, keeping just the documents with a repeated hash, to name both places (two ids
    whose hashes merely collide are no error)."""
    scan = CorpusScan()
    hashes = array.array("Q")
    for doc in valid_documents(paths, options, scan):
        hashes.append(_id_hash(doc.id))
    if len(hashes) > 1:
        keys = np.frombuffer(hashes, dtype=np.uint64)
        keys.sort()                      # in place: the array's own buffer
        repeated = keys[1:][keys[1:] == keys[:-1]]
        if repeated.size:
            _raise_duplicate(paths, options, set(repeated.tolist()))
    return scan


def _raise_duplicate(paths, options: CorpusOptions, suspects: set[int]) -> None:
    """CorpusError at the first document whose id was seen before, naming the earlier one."""
    first: dict[str, Document] = {}
    for doc in valid_documents(paths, options):
        if _id_hash(doc.id) not in suspects:
            continue
        if doc.id in first:
            raise CorpusError(f"{doc.source}:{doc.line}: duplicate id {doc.id!r} "
                              f"(first at {first[doc.id].source}:{first[doc.id].line})")
        first[doc.id] = doc


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


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


def shard_documents(paths, options: CorpusOptions, shard_size: int,
                    wanted: set[int]) -> Iterator[tuple[int, list[Document]]]:
    """(shard index, its documents) for the shards in ``wanted``, in order. Shard s holds valid
    documents [s * shard_size, (s + 1) * shard_size). Stops once every wanted shard is out."""
    if not wanted:
        return
    last = max(wanted)
    current: list[Document] = []
    shard = 0
    for i, doc in enumerate(valid_documents(paths, options)):
        shard = i // shard_size
        if shard > last:
            return
        if shard in wanted:
            current.append(doc)
            if (i + 1) % shard_size == 0:
                yield shard, current
                current = []
    if current:
        yield shard, current
