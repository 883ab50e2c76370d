"""Corpus readers: JSON Lines, plain text, Parquet and Hugging Face ``save_to_disk`` datasets,
streamed record by record. Each yields Documents, or BadRecords naming file, line and problem,
from any position (a ``Span``: byte offsets of lines, or rows), so that a rank reads only its
part; ``READ`` counts the bytes they take from storage.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tda.errors import CorpusError, one_line
from tda.schemas.corpus import BadRecord, CorpusOptions, Document
from tda.schemas.jsonl import BOM, parse_line

JSONL = (".jsonl", ".json", ".ndjson")
TEXT = (".txt", ".text")
PARQUET = (".parquet",)
Record = Document | BadRecord
_SURROGATE = re.compile("[\ud800-\udfff]")   # JSON \ud800 escapes give unencodable strings


def is_hf_dataset(path: Path) -> bool:
    """A Hugging Face ``save_to_disk`` directory (dataset_info.json or dataset_dict.json)."""
    return path.is_dir() and ((path / "dataset_info.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """Expand the given paths (files, directories of files, datasets directories) into the
    ordered list of sources to read. Raises CorpusError for a missing or unreadable path."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        if path.is_dir() and not is_hf_dataset(path):
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in JSONL + TEXT + PARQUET)
            if not files:
                raise CorpusError(f"{path}: directory holds no .jsonl, .txt or .parquet files")
            out += files
        else:
            if path.is_file() and path.suffix.lower() not in JSONL + TEXT + PARQUET:
                raise CorpusError(f"{path}: unknown corpus format {path.suffix!r} (use .jsonl, "
                                  ".txt, .parquet or a datasets directory)")
            try:
                if path.is_file():
                    with path.open("rb") as f:
                        f.read(1)
            except OSError as e:
                raise CorpusError(f"{path}: cannot read: {e.strerror}") from None
            out.append(path)
    return out


@dataclass(frozen=True)
class Span:
    """Where to read in one source: the records whose position is in [start, stop) (stop None:
    to the end). Positions are byte offsets of line starts in JSON Lines and text files (a
    start inside a line means the next line), 0-based rows of Parquet files and datasets
    directories, 0 for a text file read whole. ``line``: the 1-based line (row) number of the
    first line read, when known; line-based records count their lines from it."""

    start: int = 0
    stop: int | None = None
    line: int = 1


class Cursor:
    """How far a read got: ``lines``, the physical lines of a line-based span read so far."""

    def __init__(self) -> None:
        self.lines = 0


class ReadCounter:
    """Bytes of corpus data the readers took from storage in this process: raw file reads of
    JSON Lines and text (read-ahead included), the compressed column chunks of the Parquet row
    groups read, the Arrow buffers of the datasets rows read."""

    def __init__(self) -> None:
        self.bytes = 0


READ = ReadCounter()
READ_AHEAD = 64 << 10      # bytes a line reader reads ahead (past a part's end, at most)


def read_corpus(paths: list[str | Path], options: CorpusOptions) -> Iterator[Record]:
    """Every record of every source, in order."""
    for path in corpus_files(paths):
        for _, record in read_source(path, options):
            yield record


def read_source(path: Path, options: CorpusOptions, span: Span = Span(),
                cursor: Cursor | None = None) -> Iterator[tuple[int, Record]]:
    """(position, record) for the records of one source in ``span``, in order; ``cursor``
    follows the lines read."""
    if is_hf_dataset(path):
        yield from _read_dataset(path, options, span)
    elif path.suffix.lower() in JSONL:
        yield from _read_jsonl(path, options, span, cursor)
    elif path.suffix.lower() in TEXT:
        yield from _read_text(path, options, span, cursor)
    else:
        yield from _read_parquet(path, options, span)


def line_based(path: Path, options: CorpusOptions) -> bool:
    """Records are lines of the file (positions are byte offsets, line numbers counted)."""
    return not is_hf_dataset(path) and (path.suffix.lower() in JSONL or (
        path.suffix.lower() in TEXT and options.text_unit == "line"))


def ids_from_lines(path: Path, options: CorpusOptions) -> bool:
    """Document ids are FILE:LINE of a line-based file (the line number makes the id)."""
    return line_based(path, options) and (path.suffix.lower() in TEXT or not options.id_field)


def source_size(path: Path) -> int:
    """Bytes of a source on disk (a datasets directory: all its files)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def owned_span(path: Path, options: CorpusOptions, start: int, stop: int, size: int
               ) -> Span | None:
    """The records of ``path`` that bytes [start, stop) of it own (0 <= start <= stop <= size;
    the ranges of all parts partition [0, size]): lines that start there; Parquet row groups
    that start there; datasets rows in proportion; a text file read whole, or an empty source,
    belongs to the range that holds its byte 0. None when that range owns no record."""
    last = stop >= size
    if line_based(path, options) or (path.suffix.lower() in TEXT and not is_hf_dataset(path)):
        if line_based(path, options) and stop > start:
            return Span(start, None if last else stop)
        return Span(0, None) if start == 0 and (stop > 0 or size == 0) else None
    if is_hf_dataset(path):
        rows = len(_dataset(path, options))
        lo = -(-start * rows // size) if size else 0
        hi = rows if last else -(-stop * rows // size)
        return Span(lo, hi, lo + 1) if hi > lo else None
    groups = [(byte, row, n) for byte, row, n in row_groups(path)
              if start <= byte < stop or (last and byte >= start)]
    if not groups:
        return None
    return Span(groups[0][1], groups[-1][1] + groups[-1][2], groups[0][1] + 1)


def _record(source: str, line: int, doc_id, text, options: CorpusOptions) -> Record:
    if doc_id is None:
        return BadRecord(source, line, f"no {options.id_field!r} field")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        return BadRecord(source, line, f"id is a {type(doc_id).__name__}, not a string")
    if text is None:
        return BadRecord(source, line, f"no {options.text_field!r} field")
    if not isinstance(text, str):
        return BadRecord(source, line, f"text is a {type(text).__name__}, not a string")
    doc_id = str(doc_id)
    if not doc_id.strip() or "\x00" in doc_id or "\n" in doc_id:
        return BadRecord(source, line, "id is empty or holds a NUL or newline")
    if "\x00" in text:
        return BadRecord(source, line, "text holds a NUL character")
    for name, value in (("id", doc_id), ("text", text)):
        if not value.isascii() and _SURROGATE.search(value):
            return BadRecord(source, line, f"{name} holds a lone surrogate (not valid Unicode)")
    return Document(doc_id, text, source, line)


class _Counting(io.RawIOBase):
    """A raw file that adds the bytes it reads to READ."""

    def __init__(self, path: Path):
        self.raw = open(path, "rb", buffering=0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        READ.bytes += n or 0
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        super().close()


def _lines(path: Path, span: Span, cursor: Cursor | None) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, line number, raw line) of the lines that start in ``span``."""
    with io.BufferedReader(_Counting(path), buffer_size=READ_AHEAD) as f:
        offset = span.start
        if offset > 0:
            f.seek(offset - 1)
            if f.read(1) != b"\n":          # inside a line: it belongs to the span before
                offset += len(f.readline())
        line = span.line
        while span.stop is None or offset < span.stop:
            raw = f.readline()
            if not raw:
                return
            if cursor is not None:
                cursor.lines += 1
            yield offset, line, raw
            offset += len(raw)
            line += 1


def _read_jsonl(path: Path, options: CorpusOptions, span: Span, cursor: Cursor | None
                ) -> Iterator[tuple[int, Record]]:
    source = str(path)
    for offset, line_no, raw in _lines(path, span, cursor):
        rec = parse_line(raw, offset == 0)
        if rec is None:
            continue
        if isinstance(rec, str):
            yield offset, BadRecord(source, line_no, rec)
            continue
        doc_id = rec.get(options.id_field) if options.id_field else f"{path.name}:{line_no}"
        yield offset, _record(source, line_no, doc_id, rec.get(options.text_field), options)


def _read_text(path: Path, options: CorpusOptions, span: Span, cursor: Cursor | None
               ) -> Iterator[tuple[int, Record]]:
    source = str(path)
    if options.text_unit == "file":
        if span.start > 0:
            return
        data = path.read_bytes()
        READ.bytes += len(data)
        try:
            text = data.decode("utf-8").removeprefix(BOM)
        except UnicodeDecodeError as e:
            yield 0, BadRecord(source, 1, f"not UTF-8 (byte {e.start})")
            return
        yield 0, _record(source, 1, path.name, text, options)
        return
    for offset, line_no, raw in _lines(path, span, cursor):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            yield offset, BadRecord(source, line_no, f"not UTF-8 (byte {e.start})")
            continue
        if offset == 0:
            text = text.removeprefix(BOM)
        if text.strip():
            yield offset, _record(source, line_no, f"{path.name}:{line_no}", text, options)


def _parquet_file(path: Path):
    import pyarrow.parquet as pq
    try:    # pages written with checksums are verified: corrupt pages fail, not mislead
        return pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise CorpusError(f"{path}: not a readable Parquet file: {one_line(e)}") from None


def _compressed(group, columns: list[str] | None = None) -> int:
    """Compressed bytes of a row group's column chunks (of ``columns``; all when None)."""
    chunks = [group.column(c) for c in range(group.num_columns)]
    return sum(c.total_compressed_size for c in chunks
               if columns is None or c.path_in_schema in columns)


def row_groups(path: Path) -> list[tuple[int, int, int]]:
    """(first byte, first row, rows) of each row group of a Parquet file; bytes count the
    compressed column chunks of the groups before it."""
    md = _parquet_file(path).metadata
    out, byte, row = [], 0, 0
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        out.append((byte, row, group.num_rows))
        byte += _compressed(group)
        row += group.num_rows
    return out


def _read_parquet(path: Path, options: CorpusOptions, span: Span
                  ) -> Iterator[tuple[int, Record]]:
    source = str(path)
    pf = _parquet_file(path)
    columns = [c for c in (options.id_field, options.text_field) if c]
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise CorpusError(f"{path}: no column {missing[0]!r} (columns: {pf.schema_arrow.names})")
    md = pf.metadata
    stop = md.num_rows if span.stop is None else min(span.stop, md.num_rows)
    lo = 0
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        hi = lo + group.num_rows
        if hi <= span.start or lo >= stop:
            lo = hi
            continue
        READ.bytes += _compressed(group, columns)
        row = lo
        batches = pf.iter_batches(columns=columns, batch_size=1024, row_groups=[g])
        while row < min(hi, stop):
            try:        # a corrupt page: OSError or ArrowInvalid (a ValueError) from pyarrow
                batch = next(batches, None)
                data = batch.to_pydict() if batch is not None else None
            except (OSError, ValueError) as e:
                raise CorpusError(f"{path}: unreadable Parquet data after row {row}: "
                                  f"{one_line(e)}") from None
            if data is None:
                break
            for i, text in enumerate(data[options.text_field]):
                if span.start <= row < stop:
                    doc_id = data[options.id_field][i] if options.id_field else \
                        f"{path.name}:{row + 1}"
                    yield row, _record(source, row + 1, doc_id, text, options)
                row += 1
        lo = hi


def _dataset(path: Path, options: CorpusOptions):
    import datasets
    try:    # a broken state.json or arrow file; an empty dataset (IndexError in datasets)
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for these
        raise CorpusError(f"{path}: not a readable datasets directory: "
                          f"{type(e).__name__}: {one_line(e)}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise CorpusError(f"{path}: a DatasetDict with splits {list(ds)}; pass one split's "
                          f"directory, e.g. {path / next(iter(ds))}")
    columns = [c for c in (options.id_field, options.text_field) if c]
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise CorpusError(f"{path}: no column {missing[0]!r} (columns: {ds.column_names})")
    return ds.select_columns(columns)


def _read_dataset(path: Path, options: CorpusOptions, span: Span
                  ) -> Iterator[tuple[int, Record]]:
    source = str(path)
    ds = _dataset(path, options)
    stop = len(ds) if span.stop is None else min(span.stop, len(ds))
    if stop <= span.start:
        return
    part = ds.select(range(span.start, stop)) if (span.start, stop) != (0, len(ds)) else ds
    try:    # arrow files are memory-mapped unchecked: corrupt offsets would crash the reader
        part.data.table.validate(full=True)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: corrupt datasets data: {one_line(e)}") from None
    READ.bytes += part.data.table.nbytes
    row = span.start
    for batch in part.iter(batch_size=1024):
        for i, text in enumerate(batch[options.text_field]):
            doc_id = batch[options.id_field][i] if options.id_field else f"{path.name}:{row + 1}"
            yield row, _record(source, row + 1, doc_id, text, options)
            row += 1


def fingerprint(path: Path) -> str:
    """A cheap content fingerprint of a corpus source: sizes and the sha256 of the first and last
    MiB of each file (a datasets directory: of each of its files)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()[:16]
