"""The corpus scan, split across ranks: each reads its byte range of the corpus once.

Before any shard is made the build must know the corpus: its valid documents, how many
examples each becomes (tokens / ``max_len``, rounded up), bad and empty records, duplicate ids,
and where every shard begins. The corpus (all sources, concatenated) is cut into ``parts``
equal byte ranges, one per rank; a range owns the records that start in it (lines of JSON
Lines and text files, row groups of Parquet files, rows of datasets directories in proportion,
``readers.owned_span``). Each part reads, validates and tokenizes its records (``scan_part``);
the parts then exchange small summaries only:

- line numbers: a part counts lines from the start of its range; the lines of the parts before
  it give the offsets (errors, and FILE:LINE ids, are resolved after that);
- duplicate ids: every 64-bit id hash goes to its owner part (hash modulo parts); an owner
  finds repeated hashes, the parts holding them read those few records again and the id
  strings decide (two ids whose hashes merely collide are no error);
- shard starts: from the examples of the parts before it, a part knows the global example
  number of each of its documents, hence where shards (``shard_size`` consecutive examples,
  whatever the documents) begin inside its range: the source, byte offset or row, line and
  first chunk of the document holding each shard's first example, and each shard's tokens.

``scan_corpus`` runs the parts in this process (``parts``) or one per rank of a torchrun launch
(``ranks``); both give the same result. Memory per part: about 40 bytes per document of its
range. The result (``CorpusScan``, with its ``ShardTable``) is stored in the index, so a
resumed build does not scan again.
"""
from __future__ import annotations

import array
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tda.errors import CorpusError, TdaError
from tda.indexer import distributed
from tda.indexer.readers import (Cursor, Span, ids_from_lines, line_based, owned_span,
                                 read_source, source_size)
from tda.schemas.corpus import BadRecord, CorpusOptions

MAX_REPORTED = 20
TOKENIZE_BATCH = 512
TokenCounter = Callable[[list[str]], list[int]]


def token_counter(tokenizer) -> TokenCounter:
    """Tokens of each text as the chunker counts them (special tokens included)."""
    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    return count


def id_hash(doc_id: str) -> int:
    """64-bit hash of a document id (the duplicate check compares these first)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


@dataclass
class ShardTable:
    """Where each shard begins and what it holds, arrays [shards]: the source (index into the
    corpus files), position (byte offset or row) and 1-based line (row) of the document holding
    its first example, that example's chunk number in the document, and the shard's tokens."""

    source: np.ndarray
    position: np.ndarray
    line: np.ndarray
    chunk: np.ndarray
    tokens: np.ndarray

    FIELDS = ("source", "position", "line", "chunk", "tokens")

    def __len__(self) -> int:
        return len(self.source)

    def start(self, shard: int) -> tuple[int, int, int, int]:
        """(source, position, line, chunk) of shard ``shard``."""
        return (int(self.source[shard]), int(self.position[shard]), int(self.line[shard]),
                int(self.chunk[shard]))

    def equals(self, other: "ShardTable") -> bool:
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in self.FIELDS)


@dataclass
class CorpusScan:
    """What a pass over the corpus found: documents kept, examples and tokens they make, what
    was skipped and why, and (with a token counter) the shard table."""

    documents: int = 0
    examples: int = 0
    tokens: int = 0
    empty: int = 0
    bad: int = 0
    examples_of_bad: list[str] = field(default_factory=list)
    examples_of_empty: list[str] = field(default_factory=list)
    shard_size: int = 0
    shards: ShardTable | None = None
    bytes_read: list[int] = field(default_factory=list)     # per part


def scan_record(scan: CorpusScan, key: dict) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, record) to store a scan in the index (store/layout.py: scan/); ``key`` says
    what it was made from (files with size, mtime and fingerprint, reader options, tokenizer,
    max_len, shard size): a resume with the same key reuses it."""
    arrays = {f: getattr(scan.shards, f) for f in ShardTable.FIELDS}
    record = {"key": key, "documents": scan.documents, "examples": scan.examples,
              "tokens": scan.tokens, "empty": scan.empty, "bad": scan.bad,
              "examples_of_bad": scan.examples_of_bad,
              "examples_of_empty": scan.examples_of_empty, "shard_size": scan.shard_size}
    return arrays, record


def scan_from_record(arrays: dict[str, np.ndarray], record: dict) -> CorpusScan:
    """The stored scan back (no bytes read)."""
    table = ShardTable(*(np.asarray(arrays[f], np.int64) for f in ShardTable.FIELDS))
    return CorpusScan(record["documents"], record["examples"], record["tokens"],
                      record["empty"], record["bad"], list(record["examples_of_bad"]),
                      list(record["examples_of_empty"]), record["shard_size"], table)


def file_keys(files: list[str], ranks: distributed.Ranks | None = None) -> list[dict]:
    """{name (resolved), size, mtime_ns, fingerprint} of each corpus source; with ``ranks``
    each rank fingerprints its share of the files (a fingerprint reads 2 MiB per file)."""
    from tda.indexer.readers import fingerprint
    spread = ranks is not None and ranks.distributed
    rank, world = (ranks.rank, ranks.world) if spread else (0, 1)

    def key(f: str) -> dict:
        path = Path(f)
        members = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        return {"name": str(path.resolve()), "size": source_size(path),
                "mtime_ns": max([p.stat().st_mtime_ns for p in members], default=0),
                "fingerprint": fingerprint(path)}
    mine = {i: key(f) for i, f in enumerate(files) if i % world == rank}
    if spread:
        for got in distributed.gather(ranks, mine):
            mine.update(got)
    return [mine[i] for i in range(len(files))]


# ---------------------------------------------------------------- one part
@dataclass
class _Piece:
    """One source's span as read by a part; ``lines``: physical lines it read."""

    source: int
    span: Span
    lines: int = 0


@dataclass
class PartScan:
    """One part's pass: per-document arrays in corpus order (relative lines for line-based
    sources, fixed up with the offsets of the parts before), and what it skipped."""

    part: int
    pieces: list[_Piece] = field(default_factory=list)
    doc_piece: array.array = field(default_factory=lambda: array.array("i"))
    doc_position: array.array = field(default_factory=lambda: array.array("q"))
    doc_line: array.array = field(default_factory=lambda: array.array("q"))
    doc_examples: array.array = field(default_factory=lambda: array.array("i"))
    doc_tokens: array.array = field(default_factory=lambda: array.array("q"))
    doc_hash: array.array = field(default_factory=lambda: array.array("Q"))
    bad: list[tuple[int, int, str]] = field(default_factory=list)     # piece, line, reason
    bad_count: int = 0
    empty: list[tuple[int, int]] = field(default_factory=list)        # piece, line
    empty_count: int = 0
    bytes_read: int = 0

    def summary(self) -> dict:
        """What the other parts need to know of this one (small)."""
        return {"part": self.part, "documents": len(self.doc_piece),
                "examples": int(np.frombuffer(self.doc_examples, np.int32).sum())
                if len(self.doc_examples) else 0,
                "tokens": int(np.frombuffer(self.doc_tokens, np.int64).sum())
                if len(self.doc_tokens) else 0,
                "pieces": [(p.source, p.lines) for p in self.pieces],
                "bad": self.bad, "bad_count": self.bad_count, "empty": self.empty,
                "empty_count": self.empty_count, "bytes_read": self.bytes_read}


def part_range(sizes: list[int], part: int, parts: int) -> list[tuple[int, int, int]]:
    """(source, start, stop) of the byte ranges of each source that ``part`` of ``parts`` owns;
    an empty source goes to the part whose range holds its place."""
    total = sum(sizes)
    lo, hi = part * total // parts, (part + 1) * total // parts
    out, g0 = [], 0
    for i, size in enumerate(sizes):
        if size == 0:
            if lo <= g0 < hi or (part == parts - 1 and g0 >= hi):
                out.append((i, 0, 0))
        else:
            a, b = max(lo - g0, 0), min(hi - g0, size)
            if b > a:
                out.append((i, a, b))
        g0 += size
    return out


def scan_part(files: list[Path], sizes: list[int], options: CorpusOptions, part: int,
              parts: int, count_tokens: TokenCounter | None, max_len: int) -> PartScan:
    """Read, validate and (with ``count_tokens``) tokenize the records ``part`` owns. Without
    ``skip_bad`` the part stops at its first bad record (the scan fails there, or earlier)."""
    from tda.indexer.readers import READ
    started = READ.bytes
    scan = PartScan(part)
    texts: list[str] = []

    def flush() -> None:
        if not texts:
            return
        counts = count_tokens(texts) if count_tokens else [2] * len(texts)
        for n in counts:
            scan.doc_examples.append(0 if n < 2 else -(-n // max_len) if count_tokens else 1)
            scan.doc_tokens.append(n if n >= 2 and count_tokens else 0)
        texts.clear()

    stop = False
    for source, a, b in part_range(sizes, part, parts):
        path = files[source]
        span = owned_span(path, options, a, b, sizes[source])
        if span is None:
            continue
        piece = _Piece(source, span)
        scan.pieces.append(piece)
        k = len(scan.pieces) - 1
        from_lines = ids_from_lines(path, options)
        cursor = Cursor()
        for position, rec in read_source(path, options, span, cursor):
            if isinstance(rec, BadRecord):
                scan.bad_count += 1
                if len(scan.bad) < MAX_REPORTED:
                    scan.bad.append((k, rec.line, rec.reason))
                if not options.skip_bad:
                    stop = True
                    break
                continue
            if not rec.text.strip():
                scan.empty_count += 1
                if len(scan.empty) < MAX_REPORTED:
                    scan.empty.append((k, rec.line))
                continue
            scan.doc_piece.append(k)
            scan.doc_position.append(position)
            scan.doc_line.append(rec.line)
            scan.doc_hash.append(0 if from_lines else id_hash(rec.id))
            texts.append(rec.text)
            if len(texts) >= TOKENIZE_BATCH:
                flush()
        piece.lines = cursor.lines
        if stop:
            break
    flush()
    scan.bytes_read = READ.bytes - started
    return scan


# ---------------------------------------------------------------- combining the parts
@dataclass
class _Offsets:
    """Derived from every part's summary: line offsets of each part's pieces, the global
    example number each part starts at."""

    line_base: dict[int, list[int]]
    example_base: list[int]


def _offsets(summaries: list[dict], files: list[Path], options: CorpusOptions) -> _Offsets:
    seen: dict[int, int] = {}
    line_base: dict[int, list[int]] = {}
    example_base, examples = [], 0
    for s in summaries:
        bases = []
        for source, lines in s["pieces"]:
            counted = line_based(files[source], options)
            bases.append(seen.get(source, 0) if counted else 0)
            if counted:
                seen[source] = seen.get(source, 0) + lines
        line_base[s["part"]] = bases
        example_base.append(examples)
        examples += s["examples"]
    return _Offsets(line_base, example_base)


def _where(files, summary, offsets: _Offsets, piece: int, line: int) -> str:
    source = summary["pieces"][piece][0]
    return f"{files[source]}:{offsets.line_base[summary['part']][piece] + line}"


def _skipped(files, summaries, offsets, options: CorpusOptions) -> CorpusScan:
    """Counts and the first reported bad and empty records; CorpusError at the first bad
    record without ``skip_bad``."""
    scan = CorpusScan(documents=sum(s["documents"] for s in summaries),
                      examples=sum(s["examples"] for s in summaries),
                      tokens=sum(s["tokens"] for s in summaries),
                      bad=sum(s["bad_count"] for s in summaries),
                      empty=sum(s["empty_count"] for s in summaries),
                      bytes_read=[s["bytes_read"] for s in summaries])
    for s in summaries:
        for piece, line, reason in s["bad"]:
            text = f"{_where(files, s, offsets, piece, line)}: {reason}"
            if not options.skip_bad:
                raise CorpusError(f"{text} (use --skip-bad to skip and count such records)")
            if len(scan.examples_of_bad) < MAX_REPORTED:
                scan.examples_of_bad.append(text)
        for piece, line in s["empty"]:
            if len(scan.examples_of_empty) < MAX_REPORTED:
                scan.examples_of_empty.append(_where(files, s, offsets, piece, line))
    return scan


def _global_lines(part: PartScan, offsets: _Offsets) -> np.ndarray:
    bases = np.asarray(offsets.line_base[part.part] or [0], np.int64)
    pieces = np.frombuffer(part.doc_piece, np.int32) if len(part.doc_piece) else \
        np.zeros(0, np.int32)
    lines = np.frombuffer(part.doc_line, np.int64) if len(part.doc_line) else \
        np.zeros(0, np.int64)
    return lines + bases[pieces]


def _fill_line_hashes(part: PartScan, files, options, offsets: _Offsets) -> None:
    """Hashes of FILE:LINE ids, now that the lines are known."""
    lines = _global_lines(part, offsets)
    for i, (k, line) in enumerate(zip(part.doc_piece, lines.tolist())):
        path = files[part.pieces[k].source]
        if ids_from_lines(path, options):
            part.doc_hash[i] = id_hash(f"{path.name}:{line}")


def _hash_rows(part: PartScan) -> np.ndarray:
    """[documents, 3] int64: hash (as int64 bits), part, document index in the part."""
    n = len(part.doc_hash)
    rows = np.empty((n, 3), np.int64)
    if n:
        rows[:, 0] = np.frombuffer(part.doc_hash, np.uint64).view(np.int64)
        rows[:, 1] = part.part
        rows[:, 2] = np.arange(n)
    return rows


def _repeats(rows: np.ndarray) -> list[list[tuple[int, int]]]:
    """Groups of (part, index) sharing a hash, among ``rows`` [n, 3]."""
    if len(rows) < 2:
        return []
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
    rows = rows[order]
    same = rows[1:, 0] == rows[:-1, 0]
    if not same.any():
        return []
    groups, current = [], None
    for i in np.flatnonzero(same).tolist():
        if current is None or current[-1] != (int(rows[i, 1]), int(rows[i, 2])):
            current = [(int(rows[i, 1]), int(rows[i, 2]))]
            groups.append(current)
        current.append((int(rows[i + 1, 1]), int(rows[i + 1, 2])))
    return groups


def _identify(part: PartScan, wanted: list[int], files, options, offsets: _Offsets
              ) -> dict[int, tuple[str, str]]:
    """{document index: (id, FILE:LINE)} for some documents of this part, read again."""
    lines = _global_lines(part, offsets)
    out = {}
    for i in wanted:
        path = files[part.pieces[part.doc_piece[i]].source]
        line = int(lines[i])
        where = f"{path}:{line}"
        if ids_from_lines(path, options):
            out[i] = (f"{path.name}:{line}", where)
            continue
        pos = part.doc_position[i]
        span = Span(pos, pos + 1, line) if line_based(path, options) else Span(pos, pos + 1,
                                                                                pos + 1)
        rec = next(r for _, r in read_source(path, options, span))
        out[i] = (rec.id, where)
    return out


def _first_duplicate(groups: list[list[tuple[int, int]]],
                     named: dict[tuple[int, int], tuple[str, str]]) -> None:
    """CorpusError at the document (in corpus order) whose id was seen before."""
    worst = None
    for group in groups:
        first: dict[str, tuple[int, int]] = {}
        for key in sorted(group):
            doc_id, _ = named[key]
            if doc_id in first:
                if worst is None or key < worst[0]:
                    worst = (key, first[doc_id], doc_id)
                break
            first[doc_id] = key
    if worst is not None:
        key, earlier, doc_id = worst
        raise CorpusError(f"{named[key][1]}: duplicate id {doc_id!r} (first at "
                          f"{named[earlier][1]})")


def _shard_part(part: PartScan, offsets: _Offsets, shard_size: int) -> dict:
    """Shard starts inside this part's range, and its examples' tokens per shard."""
    n_ex = np.frombuffer(part.doc_examples, np.int32).astype(np.int64) \
        if len(part.doc_examples) else np.zeros(0, np.int64)
    base = offsets.example_base[part.part]
    total = int(n_ex.sum())
    if total == 0:
        return {"starts": [], "tokens": {}}
    ends = base + np.cumsum(n_ex)
    begins = ends - n_ex
    first_shard = -(-base // shard_size)
    bounds = np.arange(first_shard * shard_size, base + total, shard_size, dtype=np.int64)
    docs = np.searchsorted(ends, bounds, side="right")
    lines = _global_lines(part, offsets)
    starts = [(int(b // shard_size), part.pieces[part.doc_piece[d]].source,
               int(part.doc_position[d]), int(lines[d]), int(b - begins[d]))
              for b, d in zip(bounds.tolist(), docs.tolist())]
    # tokens of every example (chunk j of a document of n tokens in p pieces:
    # (j + 1) n // p - j n // p), summed per shard
    n_tok = np.frombuffer(part.doc_tokens, np.int64)
    doc_of = np.repeat(np.arange(len(n_ex)), n_ex)
    j = np.arange(total) - np.repeat(begins - base, n_ex)
    n, p = n_tok[doc_of], n_ex[doc_of]
    lengths = (j + 1) * n // p - j * n // p
    shards = (base + np.arange(total)) // shard_size
    lo = int(shards[0])
    sums = np.bincount(shards - lo, weights=lengths)
    return {"starts": starts, "tokens": {lo + i: int(v) for i, v in enumerate(sums.tolist())}}


def _shard_table(parts_out: list[dict], examples: int, shard_size: int) -> ShardTable:
    n = -(-examples // shard_size)
    table = ShardTable(np.zeros(n, np.int32), np.zeros(n, np.int64), np.zeros(n, np.int64),
                       np.zeros(n, np.int32), np.zeros(n, np.int64))
    for out in parts_out:
        for shard, source, position, line, chunk in out["starts"]:
            table.source[shard], table.position[shard] = source, position
            table.line[shard], table.chunk[shard] = line, chunk
        for shard, tokens in out["tokens"].items():
            table.tokens[shard] += tokens
    return table


# ---------------------------------------------------------------- the scan
def scan_corpus(paths: list[str | Path], options: CorpusOptions,
                count_tokens: TokenCounter | None = None, max_len: int = 1 << 30,
                shard_size: int = 0, parts: int = 1,
                ranks: distributed.Ranks | None = None) -> CorpusScan:
    """Scan the corpus in ``parts`` byte ranges in this process, or one per rank with
    ``ranks`` (a torchrun launch; every rank calls this and gets the same result). Raises
    CorpusError at the first bad record (without ``skip_bad``), else at the first duplicate id
    naming both places. With ``count_tokens`` and ``shard_size`` the result has the shard
    table; without, every document counts as one example."""
    from tda.indexer.readers import corpus_files
    files = corpus_files(paths)
    sizes = [source_size(f) for f in files]
    spread = ranks is not None and ranks.distributed
    world = ranks.world if spread else parts
    mine = [ranks.rank] if spread else list(range(parts))

    def everyone(items: list) -> list:
        return [x for got in distributed.gather(ranks, items) for x in got] if spread \
            else items

    local, failures = [], []
    for p in mine:          # a part that cannot read its range fails every rank, not just one
        try:
            local.append(scan_part(files, sizes, options, p, world, count_tokens, max_len))
        except TdaError as e:
            failures.append((p, e))
    failures = everyone(failures)
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    summaries = everyone([p.summary() for p in local])
    offsets = _offsets(summaries, files, options)
    scan = _skipped(files, summaries, offsets, options)
    for p in local:
        _fill_line_hashes(p, files, options, offsets)
    # duplicate ids: every hash to its owner part, repeats found there, then named
    rows = [_hash_rows(p) for p in local]
    if spread:
        owned = distributed.exchange_rows(ranks, [r[_owner(r, world) == q] for r in rows
                                                  for q in range(world)])
        groups = everyone(_repeats(owned))
    else:
        groups = _repeats(np.concatenate(rows)) if rows else []
    if groups:
        wanted: dict[int, list[int]] = {}
        for group in groups:
            for part, i in group:
                wanted.setdefault(part, []).append(i)
        named = {}
        for p in local:
            named.update({(p.part, i): v for i, v in _identify(
                p, sorted(set(wanted.get(p.part, []))), files, options, offsets).items()})
        named = {k: v for got in everyone([named]) for k, v in got.items()}
        _first_duplicate(groups, named)
    if count_tokens is not None and shard_size:
        scan.shard_size = shard_size
        scan.shards = _shard_table(everyone([_shard_part(p, offsets, shard_size)
                                             for p in local]), scan.examples, shard_size)
    return scan


def _owner(rows: np.ndarray, world: int) -> np.ndarray:
    return rows[:, 0].view(np.uint64) % np.uint64(world) if len(rows) else \
        np.zeros(0, np.uint64)
