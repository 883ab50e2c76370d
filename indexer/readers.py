"""Corpus readers: JSON Lines, plain text, Parquet and Hugging Face ``save_to_disk`` datasets,
streamed record by record. Each yields Documents, or BadRecords naming file, line and problem.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator

from tda.errors import CorpusError, one_line
from tda.schemas.corpus import BadRecord, CorpusOptions, Document
from tda.schemas.jsonl import BOM, jsonl_lines

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


def read_corpus(paths: list[str | Path], options: CorpusOptions) -> Iterator[Record]:
    """Every record of every source, in order."""
    for path in corpus_files(paths):
        if is_hf_dataset(path):
            yield from _read_dataset(path, options)
        elif path.suffix.lower() in JSONL:
            yield from _read_jsonl(path, options)
        elif path.suffix.lower() in TEXT:
            yield from _read_text(path, options)
        else:
            yield from _read_parquet(path, options)


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


def _read_jsonl(path: Path, options: CorpusOptions) -> Iterator[Record]:
    source = str(path)
    for line_no, rec in jsonl_lines(path):
        if isinstance(rec, str):
            yield BadRecord(source, line_no, rec)
            continue
        doc_id = rec.get(options.id_field) if options.id_field else f"{path.name}:{line_no}"
        yield _record(source, line_no, doc_id, rec.get(options.text_field), options)


def _read_text(path: Path, options: CorpusOptions) -> Iterator[Record]:
    source = str(path)
    if options.text_unit == "file":
        try:
            text = path.read_bytes().decode("utf-8").removeprefix(BOM)
        except UnicodeDecodeError as e:
            yield BadRecord(source, 1, f"not UTF-8 (byte {e.start})")
            return
        yield _record(source, 1, path.name, text, options)
        return
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield BadRecord(source, line_no, f"not UTF-8 (byte {e.start})")
                continue
            if line_no == 1:
                text = text.removeprefix(BOM)
            if text.strip():
                yield _record(source, line_no, f"{path.name}:{line_no}", text, options)


def _read_parquet(path: Path, options: CorpusOptions) -> Iterator[Record]:
    import pyarrow.parquet as pq

    source = str(path)
    try:    # pages written with checksums are verified: corrupt pages fail, not mislead
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise CorpusError(f"{path}: not a readable Parquet file: {one_line(e)}") from None
    columns = [c for c in (options.id_field, options.text_field) if c]
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise CorpusError(f"{path}: no column {missing[0]!r} (columns: {pf.schema_arrow.names})")
    row = 0
    batches = pf.iter_batches(columns=columns, batch_size=1024)
    while True:
        try:            # a corrupt page: OSError or ArrowInvalid (a ValueError) from pyarrow
            batch = next(batches, None)
            data = batch.to_pydict() if batch is not None else None
        except (OSError, ValueError) as e:
            raise CorpusError(f"{path}: unreadable Parquet data after row {row}: "
                              f"{one_line(e)}") from None
        if data is None:
            break
        for i, text in enumerate(data[options.text_field]):
            row += 1
            doc_id = data[options.id_field][i] if options.id_field else f"{path.name}:{row}"
            yield _record(source, row, doc_id, text, options)


def _read_dataset(path: Path, options: CorpusOptions) -> Iterator[Record]:
    import datasets

    source = str(path)
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
    ds = ds.select_columns(columns)
    try:    # arrow files are memory-mapped unchecked: corrupt offsets would crash the reader
        ds.data.table.validate(full=True)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: corrupt datasets data: {one_line(e)}") from None
    row = 0
    for batch in ds.iter(batch_size=1024):
        for i, text in enumerate(batch[options.text_field]):
            row += 1
            doc_id = batch[options.id_field][i] if options.id_field else f"{path.name}:{row}"
            yield _record(source, row, doc_id, text, options)


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
