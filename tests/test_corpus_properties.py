"""Property-based tests (hypothesis) over corpus files: invalid UTF-8, huge lines, empty lines,
wrong field types, NUL bytes, lone surrogates, BOMs, CRLF, duplicate ids, mixed encodings,
corrupt Parquet and datasets directories. Each gives a named error (CorpusError naming the
file, and the line where there is one) or a counted skip: never another exception, never a
silently altered id or text.

Every generated line carries what it must read as (a document with this id and text, a bad
record, or nothing), so the properties check the readers against the generator, not against a
second implementation of them. Run with ``-s`` to see how many corpus files were tried;
TDA_PROPERTY_SCALE=10 tries ten times as many examples per property (a longer, deeper run)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tda.tests.indexing import read_index, tda
from tda.indexer.documents import valid_documents
from tda.indexer.scan import scan_corpus
from tda.errors import CorpusError
from tda.indexer.readers import read_corpus
from tda.schemas.corpus import BadRecord, CorpusOptions, Document

TRIED = {"files": 0, "records": 0, "bytes": 0}
STARTED = time.perf_counter()
BOM = b"\xef\xbb\xbf"
MB = 1 << 20


def teardown_module():
    print(f"\ncorpus properties: {TRIED['files']} corpus files tried ({TRIED['records']:,} "
          f"lines or rows, {TRIED['bytes'] / MB:.1f} MiB) in "
          f"{time.perf_counter() - STARTED:.1f} s")


def fast(n: int):
    """n examples (times TDA_PROPERTY_SCALE), the same ones every run so that CI is repeatable;
    TDA_PROPERTY_RANDOM=1 draws fresh ones (to explore: run it with a large scale)."""
    n = max(1, round(n * float(os.environ.get("TDA_PROPERTY_SCALE", "1"))))
    explore = os.environ.get("TDA_PROPERTY_RANDOM") == "1"
    return settings(max_examples=n, deadline=None, database=None, print_blob=False,
                    derandomize=not explore,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def _count(path: Path, records: int) -> None:
    TRIED["files"] += 1
    TRIED["records"] += records
    TRIED["bytes"] += path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Generated lines: the bytes written and what they must read as

@dataclass(frozen=True)
class Line:
    raw: bytes                  # the line without its ending; never holds b"\n"
    kind: str                   # "doc", "bad" or "blank" (no record at all)
    id: str | None = None       # kind "doc": the id and text the reader must give back
    text: str | None = None
    why: str = ""               # kind "bad": text the reason must hold ("" = any reason)
    first: Line | None = None   # what this line reads as when it opens the file (a BOM line)

    def __repr__(self) -> str:  # failing examples stay readable with megabyte lines
        raw = self.raw if len(self.raw) < 200 else self.raw[:80] + b"..." + self.raw[-40:]
        return f"Line({self.kind}, {raw!r}, id={_short(self.id)}, why={self.why!r})"


def _short(s):
    return repr(s) if s is None or len(s) < 100 else repr(s[:60] + "...")


CHARS = st.characters(exclude_categories=("Cs",))                 # any code point, NUL too
NO_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
SPACE = " \t\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000"
TEXTS = st.one_of(st.text(NO_NUL, max_size=30), st.sampled_from(
    ["Allan Peiper was born in Alexandra", "", "   ", "\t", "😀 emoji 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\r\nb",
     "line\u2028sep\x85nel", "\\u0000 is not a NUL", "\"quoted\" {json}",
     "עברית العربية", "\ufeffzero-width no-break space"]))
POOL = ["a", "b", "c", "0", "1", "x y", "é", "😀", "a\r", "\ufeffa", "c.txt:1", "c.txt:2"]
IDS = st.one_of(st.sampled_from(POOL),
                st.text(NO_NUL, min_size=1, max_size=12).filter(lambda s: s.strip()
                                                               and "\n" not in s))
MISSING = object()


@st.composite
def json_line(draw, doc_id, text, ascii_only: bool | None = None, extras: bool = True) -> str:
    """One JSON object line (no ending) with the fields in any order, extra fields, and JSON
    whitespace around it; MISSING leaves a field out."""
    fields = [("id", doc_id), ("text", text)]
    if extras:
        fields += draw(st.lists(st.tuples(st.sampled_from(["meta", "url", "ID", "Text", "n"]),
                                          st.one_of(st.none(), st.integers(), TEXTS)),
                                max_size=2))
    obj = dict(f for f in draw(st.permutations(fields)) if f[1] is not MISSING)
    ensure_ascii = draw(st.booleans()) if ascii_only is None else ascii_only
    compact = draw(st.booleans())
    body = json.dumps(obj, ensure_ascii=ensure_ascii,
                      separators=(",", ":") if compact else (", ", ": "))
    pad = st.text(" \t\r", max_size=2)
    return draw(pad) + body + draw(pad)


@st.composite
def doc_line(draw, ids=IDS, texts=TEXTS) -> Line:
    doc_id = draw(st.one_of(ids, ids, st.integers(-10**30, 10**30)))
    text = draw(texts)
    line = draw(json_line(doc_id, text))
    return Line(line.encode(), "doc", str(doc_id), text)


BAD_IDS = [1.5, float("inf"), True, False, None, MISSING, [], ["a"], {"id": "a"}, "", "  ",
           "\t\r", "a\nb", "a\x00b", "\x00"]
BAD_TEXTS = [1, 0, -2.5, True, None, MISSING, [], ["text"], {"text": "x"}, "nul\x00byte",
             "\x00"]


@st.composite
def wrong_types_line(draw) -> Line:
    """Wrong types or values in the id or the text field (or both): float, bool, null, list,
    nested object, missing, empty or whitespace id, NUL or newline in the id, NUL in the text."""
    bad_id, bad_text = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    doc_id = draw(st.sampled_from(BAD_IDS)) if bad_id else draw(IDS)
    text = draw(st.sampled_from(BAD_TEXTS)) if bad_text else draw(TEXTS)
    return Line(draw(json_line(doc_id, text)).encode(), "bad")


@st.composite
def nul_line(draw) -> Line:
    """A NUL byte written raw anywhere in a record: inside a JSON string it is an invalid
    control character, outside one neither whitespace nor a token."""
    line = draw(json_line(draw(IDS), draw(TEXTS)))
    at = draw(st.integers(0, len(line)))
    return Line((line[:at] + "\x00" + line[at:]).encode(), "bad", why="JSON")


@st.composite
def surrogate_line(draw) -> Line:
    """A lone surrogate (\\ud800..\\udfff escape) in the id or the text: valid JSON, but not
    Unicode that can be encoded, hashed, tokenized or stored."""
    field = draw(st.sampled_from(["id", "text"]))
    doc_id, text = draw(IDS), draw(TEXTS)
    s = doc_id if field == "id" else text
    at = draw(st.integers(0, len(s)))
    s = s[:at] + chr(draw(st.integers(0xD800, 0xDFFF))) + s[at:]
    doc_id, text = (s, text) if field == "id" else (doc_id, s)
    return Line(draw(json_line(doc_id, text, ascii_only=True)).encode(), "bad", why="surrogate")


INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98",
                b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3\x28"]


@st.composite
def invalid_utf8_line(draw) -> Line:
    """A record with an invalid UTF-8 sequence (stray continuation byte, truncated sequence,
    overlong form, encoded surrogate, above U+10FFFF) put anywhere between two characters, or
    plain random bytes."""
    if draw(st.booleans()):
        return Line(b"\xff" + draw(st.binary(max_size=40)).replace(b"\n", b""), "bad",
                    why="not UTF-8")
    line = draw(json_line(draw(IDS), draw(TEXTS), ascii_only=False))
    at = draw(st.integers(0, len(line)))
    raw = line[:at].encode() + draw(st.sampled_from(INVALID_UTF8)) + line[at:].encode()
    return Line(raw, "bad", why="not UTF-8")


def _alphabet(codec: str) -> str:
    out = []
    for b in range(0x20, 0x100):
        try:
            out.append(bytes([b]).decode(codec))
        except UnicodeDecodeError:
            pass
    return "".join(out)


@st.composite
def legacy_encoding_line(draw) -> Line:
    """A record written in latin-1 or cp1252 into a UTF-8 file. Its bytes are seldom valid
    UTF-8 (then: a bad record); when they happen to be ("Ã©" in latin-1 is "é" in UTF-8), the
    UTF-8 reading of the text is what any reader must give back."""
    codec = draw(st.sampled_from(["latin-1", "cp1252"]))
    text = draw(st.text(_alphabet(codec), min_size=1, max_size=20).filter(
        lambda s: not s.isascii()))
    doc_id = draw(st.text("abcxyz0123456789-_", min_size=1, max_size=8))
    raw = draw(json_line(doc_id, text, ascii_only=False, extras=False)).encode(codec)
    try:
        as_utf8 = text.encode(codec).decode("utf-8")
    except UnicodeDecodeError:
        return Line(raw, "bad", why="not UTF-8")
    return Line(raw, "doc", doc_id, as_utf8)


GARBAGE = ["{not json", "{'id': 'a', 'text': 'b'}", '{"id": "a", "text": "b"',
           '{"id": "a" "text": "b"}', "id,text", "}{", '{"id": "a", "text": "b"}}',
           '{"id": "a", "text": "b"} {"id": "c", "text": "d"}', "tru", "[", '"unterminated',
           '{"id": \'x\', "text": "y"}', '{"id": "a", "text": "b",}', "{id: 1}", "0x10",
           '{"id": "a", "text": "\\x41"}', '{"id": "a", "text": "\\u12"}', "//comment"]


@st.composite
def invalid_json_line(draw) -> Line:
    """Malformed JSON: a cut-off record, known-bad syntax, an integer over Python's 4300-digit
    limit, nesting deeper than the recursion limit."""
    how = draw(st.sampled_from(["cut", "garbage", "huge int", "deep", "deep field"]))
    if how == "cut":
        line = json.dumps({"id": draw(IDS), "text": draw(TEXTS)}, ensure_ascii=False)
        return Line(line[:draw(st.integers(1, len(line) - 1))].encode(), "bad", why="JSON")
    if how == "garbage":
        return Line(draw(st.sampled_from(GARBAGE)).encode(), "bad", why="JSON")
    if how == "huge int":
        digits = "9" * draw(st.integers(4301, 6000))
        line = draw(st.sampled_from(['{"id": %s, "text": "b"}', '{"id": "a", "text": %s}',
                                     '{"id": "a", "text": "b", "n": -%s}']))
        return Line((line % digits).encode(), "bad", why="JSON")
    depth = draw(st.integers(30_000, 100_000))
    nested = "[" * depth + "]" * draw(st.sampled_from([0, depth]))
    if how == "deep":
        return Line(nested.encode(), "bad", why="JSON")
    return Line(('{"id": "a", "text": "b", "n": %s}' % nested).encode(), "bad", why="JSON")


@st.composite
def non_object_line(draw) -> Line:
    value = draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), TEXTS,
                           st.lists(st.one_of(st.integers(), TEXTS), max_size=3)))
    return Line(json.dumps(value).encode(), "bad", why="not an object")


@st.composite
def blank_line(draw) -> Line:
    return Line(draw(st.text(SPACE, max_size=6)).encode(), "blank")


@st.composite
def bom_line(draw) -> Line:
    """A record opened by a BOM: at the start of a file a BOM is not text; anywhere else it is
    U+FEFF before the JSON, which JSON does not allow."""
    good = draw(doc_line())
    return Line(BOM + good.raw, "bad", why="JSON", first=good)


@st.composite
def huge_line(draw) -> Line:
    """A 1-5 MB line: a document (id or text that long), or a bad one (cut off, a NUL or an
    invalid byte at its very end)."""
    size = draw(st.integers(1 * MB, 5 * MB))
    unit = draw(st.text(NO_NUL, min_size=1, max_size=8).filter(lambda s: s.strip()))
    big = unit * (size // len(unit.encode()) + 1)
    how = draw(st.sampled_from(["text", "id", "cut", "nul", "invalid"]))
    if how == "id":
        line = json.dumps({"id": big, "text": "t"}, ensure_ascii=False).encode()
        if "\n" in big:                      # ids are one line: a named bad record
            return Line(line, "bad", why="NUL or newline")
        return Line(line, "doc", big, "t")
    line = json.dumps({"id": "huge", "text": big}, ensure_ascii=False).encode()
    if how == "text":
        return Line(line, "doc", "huge", big)
    if how == "cut":
        return Line(line[:-2], "bad", why="JSON")
    if how == "nul":
        return Line(line[:-2] + b"\\u0000" + line[-2:], "bad", why="NUL")
    return Line(line[:-2] + b"\xff" + line[-2:], "bad", why="not UTF-8")


ANY_LINE = st.one_of(doc_line(), doc_line(), doc_line(), doc_line(), wrong_types_line(),
                     nul_line(), surrogate_line(), invalid_utf8_line(), legacy_encoding_line(),
                     invalid_json_line(), non_object_line(), blank_line(), blank_line(),
                     bom_line())


@st.composite
def jsonl_files(draw, lines=ANY_LINE, max_lines: int = 25, huge: bool = False):
    """(lines, the file's bytes, expected reading per line). The first line may carry a BOM;
    lines end in LF or CRLF, the last one maybe in nothing."""
    body = draw(st.lists(lines, max_size=max_lines))
    if huge:
        body.insert(draw(st.integers(0, len(body))), draw(huge_line()))
    bom = draw(st.booleans()) and bool(body)
    out, expected = [], []
    for i, line in enumerate(body):
        raw = line.raw
        if i == 0 and bom:
            raw = BOM + raw
        end = draw(st.sampled_from([b"\n", b"\r\n"] + ([b""] if i == len(body) - 1 else [])))
        out.append(raw + end)
        expected.append(line.first if i == 0 and line.first and not bom else line)
    return expected, b"".join(out)


def _write(directory: str, name: str, data: bytes, records: int) -> Path:
    path = Path(directory) / name
    path.write_bytes(data)
    _count(path, records)
    return path


def _records_or_named_error(path: Path):
    """A damaged file reads as a one-line CorpusError naming it (None), or as records numbered
    1, 2, ... (returned)."""
    try:
        recs = list(read_corpus([path], CorpusOptions()))
    except CorpusError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        return None
    assert [r.line for r in recs] == list(range(1, len(recs) + 1))
    return recs


def _check_records(recs: list, expected: list[Line], source: str, ids_from_lines=None) -> None:
    """One record per non-blank line, in order, with its 1-based line number: documents with
    exactly the id and text written, bad records with a one-line reason."""
    want = [(i, line) for i, line in enumerate(expected, 1) if line.kind != "blank"]
    assert [r.line for r in recs] == [i for i, _ in want], [type(r).__name__ for r in recs]
    for rec, (i, line) in zip(recs, want):
        assert rec.source == source
        if line.kind == "doc":
            doc_id = line.id if ids_from_lines is None else ids_from_lines(i)
            assert rec == Document(doc_id, line.text, source, i), line
        else:
            assert isinstance(rec, BadRecord), (rec, line)
            assert rec.reason.strip() and "\n" not in rec.reason and "\r" not in rec.reason
            assert line.why in rec.reason, (rec.reason, line)


# ---------------------------------------------------------------------------------------------
# JSON Lines

@fast(150)
@given(jsonl_files())
def test_jsonl_one_record_per_nonblank_line(case):
    expected, data = case
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "c.jsonl", data, len(expected))
        recs = list(read_corpus([path], CorpusOptions()))
        _check_records(recs, expected, str(path))
        # with no id field every id is FILE:LINE, whatever the id field held
        by_line = list(read_corpus([path], CorpusOptions(id_field="")))
        assert [r.line for r in by_line] == [r.line for r in recs]
        for new, old in zip(by_line, recs):
            assert isinstance(new, BadRecord) or new.id == f"c.jsonl:{new.line}"
            if isinstance(old, Document):
                assert new == Document(f"c.jsonl:{old.line}", old.text, old.source, old.line)


_HUGE_ID_WITH_NEWLINES = json.dumps({"id": "0\n" * (MB // 2), "text": "t"}).encode()


@fast(12)
@given(jsonl_files(max_lines=4, huge=True))
@example(([Line(_HUGE_ID_WITH_NEWLINES, "bad", why="NUL or newline")],   # found by CI
          _HUGE_ID_WITH_NEWLINES + b"\n"))
def test_jsonl_huge_lines(case):
    expected, data = case
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "huge.ndjson", data, len(expected))
        _check_records(list(read_corpus([path], CorpusOptions())), expected, str(path))


def _expected_scan(expected: list[tuple[str, int, Line]]):
    """From (source, line, Line) in corpus order: the bad places, the documents with text,
    the empty ones, and the first duplicate (place, id, earlier place) among those with text."""
    bad = [(s, i) for s, i, ln in expected if ln.kind == "bad"]
    docs = [(s, i, ln) for s, i, ln in expected if ln.kind == "doc"]
    kept = [(s, i, ln) for s, i, ln in docs if ln.text.strip()]
    seen, dup = {}, None
    for s, i, ln in kept:
        if ln.id in seen:
            dup = ((s, i), ln.id, seen[ln.id])
            break
        seen[ln.id] = (s, i)
    return bad, kept, len(docs) - len(kept), dup


def _check_scan(paths, options: CorpusOptions, expected) -> None:
    """scan_corpus stops at the first bad record (without skip_bad), then at the first repeated
    id naming both places; otherwise documents + empty + bad counts every non-blank record."""
    bad, kept, empty, dup = _expected_scan(expected)
    event("scan: stops at a bad record" if bad and not options.skip_bad else
          "scan: stops at a duplicate id" if dup else "scan: counts")
    if bad and not options.skip_bad:
        with pytest.raises(CorpusError) as e:
            scan_corpus(paths, options)
        s, i = bad[0]
        assert str(e.value).startswith(f"{s}:{i}: ") and "--skip-bad" in str(e.value)
        assert "\n" not in str(e.value)
        return
    if dup:
        (s, i), doc_id, (s0, i0) = dup
        with pytest.raises(CorpusError) as e:
            scan_corpus(paths, options)
        assert str(e.value) == f"{s}:{i}: duplicate id {doc_id!r} (first at {s0}:{i0})"
        return
    scan = scan_corpus(paths, options)
    assert (scan.documents, scan.empty, scan.bad) == (len(kept), empty, len(bad))
    assert scan.documents + scan.empty + scan.bad == sum(ln.kind != "blank"
                                                         for _, _, ln in expected)
    assert [x.split(": ")[0] for x in scan.examples_of_bad] == [f"{s}:{i}" for s, i in bad][:20]
    got = [(d.source, d.line, d.id, d.text) for d in valid_documents(paths, options)]
    assert got == [(s, i, ln.id, ln.text) for s, i, ln in kept]


FEW_IDS = st.sampled_from(["a", "b", "0", "é"])             # int id 0 reads as "0" too
DUPLICATE_PRONE = st.one_of(doc_line(FEW_IDS), doc_line(FEW_IDS), doc_line(FEW_IDS), doc_line(),
                            doc_line(FEW_IDS, texts=st.sampled_from(["", " \t"])),
                            wrong_types_line(), invalid_utf8_line(), surrogate_line(),
                            legacy_encoding_line(), blank_line())


@fast(120)
@given(jsonl_files(lines=DUPLICATE_PRONE, max_lines=12), st.booleans())
def test_scan_names_first_bad_record_or_duplicate(case, skip_bad):
    expected, data = case
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "c.jsonl", data, len(expected))
        _check_scan([path], CorpusOptions(skip_bad=skip_bad),
                    [(str(path), i, ln) for i, ln in enumerate(expected, 1)])


# ---------------------------------------------------------------------------------------------
# Plain text

TEXT_LINES = st.one_of(
    st.binary(max_size=30),                                          # arbitrary bytes
    st.text(CHARS, max_size=30).map(str.encode),                     # UTF-8, NUL included
    st.text(_alphabet("latin-1"), max_size=20).map(lambda s: s.encode("latin-1")),
    st.text(_alphabet("cp1252"), max_size=20).map(lambda s: s.encode("cp1252")),
    st.text(SPACE, max_size=4).map(str.encode),
    st.sampled_from(INVALID_UTF8),
    st.just("\ufeffBOM inside the file".encode()),
).map(lambda b: b.replace(b"\n", b""))


def _text_line(raw: bytes, first: bool) -> Line:
    """What one line of a .txt file must read as: a bad record when it is not UTF-8 or holds a
    NUL, nothing when blank (after its CR/LF ending), else a document of the line's text."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return Line(raw, "bad", why="not UTF-8")
    if first:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return Line(raw, "blank")
    if "\x00" in text:
        return Line(raw, "bad", why="NUL")
    return Line(raw, "doc", None, text)


@fast(150)
@given(st.lists(st.tuples(TEXT_LINES, st.sampled_from([b"\n", b"\r\n", b"\r\r\n"])),
                max_size=25),
       st.booleans(), st.booleans(), st.sampled_from(["c.txt", "notes é 1.text", "UPPER.TXT"]))
def test_text_lines_are_documents_or_named_bad_records(lines, bom, final_newline, name):
    data = (BOM if bom else b"") + b"".join(raw + end for raw, end in lines)
    if not final_newline:
        data = data.removesuffix(b"\n")
    pieces = _split_lf(data)             # the lines a reader sees: the file split after each LF
    expected = [_text_line(p.rstrip(b"\n"), i == 0) for i, p in enumerate(pieces)]
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, name, data, len(pieces))
        recs = list(read_corpus([path], CorpusOptions()))
        _check_records(recs, expected, str(path), ids_from_lines=lambda i: f"{name}:{i}")
        _check_scan([path], CorpusOptions(skip_bad=True),
                    [(str(path), i, Line(ln.raw, ln.kind, f"{name}:{i}", ln.text))
                     for i, ln in enumerate(expected, 1)])
        # one document per file
        whole = list(read_corpus([path], CorpusOptions(text_unit="file")))
        assert len(whole) == 1 and whole[0].line == 1 and whole[0].source == str(path)
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            assert isinstance(whole[0], BadRecord) and "not UTF-8" in whole[0].reason
        else:
            if "\x00" in text:
                assert isinstance(whole[0], BadRecord) and "NUL" in whole[0].reason
            else:
                assert whole[0] == Document(name, text, str(path), 1)


def _split_lf(data: bytes) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        out.append(data[start:end])
        start = end
    return out


# ---------------------------------------------------------------------------------------------
# Several files, several formats: duplicate ids anywhere are named with both places

@st.composite
def corpus_files_strategy(draw):
    files = []
    for k in range(draw(st.integers(1, 3))):
        fmt = draw(st.sampled_from(["jsonl", "parquet", "txt"]))
        if fmt == "txt":
            texts = draw(st.lists(st.text(NO_NUL, max_size=10).map(
                lambda s: s.replace("\n", " ").replace("\r", " ")), max_size=5))
            files.append((f"c{k}.txt" if draw(st.booleans()) else "c.txt", "txt", texts))
        else:
            rows = draw(st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(
                ["some text", "", "  ", "more text", "😀"])), max_size=6))
            files.append((f"f{k}.{fmt}", fmt, rows))
    return files


def _write_corpus(directory: Path, files) -> tuple[list[Path], list]:
    """Write the files (a repeated .txt name goes to its own subdirectory); return the paths and
    (source, line, Line) for every line or row in corpus order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths, expected = [], []
    for k, (name, fmt, rows) in enumerate(files):
        sub = directory / f"d{k}"
        sub.mkdir()
        path = sub / name
        if fmt == "txt":
            path.write_bytes("".join(t + "\n" for t in rows).encode())
            lines = [_text_line(t.encode(), i == 0) for i, t in enumerate(rows)]
            expected += [(str(path), i, Line(b"", ln.kind, f"{name}:{i}", ln.text))
                         for i, ln in enumerate(lines, 1)]
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
            expected += [(str(path), i, Line(b"", "doc", r[0], r[1]))
                         for i, r in enumerate(rows, 1)]
        else:
            pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.string()),
                                     "text": pa.array([r[1] for r in rows], pa.string())}),
                           path, row_group_size=2)
            expected += [(str(path), i, Line(b"", "doc", r[0], r[1]))
                         for i, r in enumerate(rows, 1)]
        _count(path, len(rows))
        paths.append(path)
    return paths, expected


@fast(80)
@given(corpus_files_strategy())
def test_duplicate_ids_across_files_name_both_places(files):
    with tempfile.TemporaryDirectory() as d:
        paths, expected = _write_corpus(Path(d), files)
        _check_scan(paths, CorpusOptions(), expected)
        _check_scan(paths, CorpusOptions(skip_bad=True), expected)


@fast(30)
@given(st.lists(st.text(NO_NUL, min_size=1, max_size=20).filter(
    lambda s: not s.startswith("\ufeff")), min_size=2, max_size=2),
       st.booleans())
def test_text_files_as_documents_clash_by_file_name(texts, same_name):
    """text_unit="file": a document's id is its file name, so two files of one name clash."""
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, text in enumerate(texts):
            (Path(d) / str(k)).mkdir()
            paths.append(_write(d, f"{k}/{'same' if same_name else k}.txt", text.encode(), 1))
        opts = CorpusOptions(text_unit="file")
        with_text = [(str(p), t) for p, t in zip(paths, texts) if t.strip()]
        if same_name and len(with_text) == 2:
            with pytest.raises(CorpusError) as e:
                scan_corpus(paths, opts)
            assert str(e.value) == (f"{paths[1]}:1: duplicate id 'same.txt' "
                                    f"(first at {paths[0]}:1)")
        else:
            scan = scan_corpus(paths, opts)
            assert (scan.documents, scan.empty) == (len(with_text), 2 - len(with_text))


# ---------------------------------------------------------------------------------------------
# Parquet and datasets directories

ROW_IDS = st.one_of(st.none(), IDS, st.sampled_from(["", " ", "a\nb", "a\x00"]))
ROW_TEXTS = st.one_of(st.none(), TEXTS, st.just("nul\x00"))


def _row_line(doc_id, text) -> Line:
    """What a Parquet or datasets row must read as."""
    if doc_id is None or text is None:
        return Line(b"", "bad", why="field")
    doc_id = str(doc_id)
    if not doc_id.strip() or "\x00" in doc_id or "\n" in doc_id:
        return Line(b"", "bad", why="id")
    if "\x00" in text:
        return Line(b"", "bad", why="NUL")
    return Line(b"", "doc", doc_id, text)


@fast(60)
@given(st.lists(st.tuples(st.one_of(ROW_IDS, st.integers(-2**63, 2**63 - 1)), ROW_TEXTS),
                max_size=30), st.booleans(), st.integers(1, 8))
def test_parquet_rows(rows, int_ids, group):
    import pyarrow as pa
    import pyarrow.parquet as pq
    if int_ids:
        rows = [(i if isinstance(i, int) else None, t) for i, t in rows]
    else:
        rows = [(None if isinstance(i, int) else i, t) for i, t in rows]
    ids = pa.array([r[0] for r in rows], pa.int64() if int_ids else pa.string())
    table = pa.table({"id": ids, "text": pa.array([r[1] for r in rows], pa.string())})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.parquet"
        pq.write_table(table, path, row_group_size=group)
        _count(path, len(rows))
        expected = [_row_line(i, t) for i, t in rows]
        _check_records(list(read_corpus([path], CorpusOptions())), expected, str(path))
        _check_scan([path], CorpusOptions(skip_bad=True),
                    [(str(path), i, ln) for i, ln in enumerate(expected, 1)])


PARQUET_ROWS = [(f"d{i}", ["Allan Peiper was born in Alexandra", "x y", f"text {i}"][i % 3])
                for i in range(2000)]


@pytest.fixture(scope="module")
def parquet_bytes():
    """The same rows as Parquet written without page checksums and with them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"id": [r[0] for r in PARQUET_ROWS], "text": [r[1] for r in PARQUET_ROWS]})
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for checksum in (False, True):
            pq.write_table(table, Path(d) / "c.parquet", row_group_size=400,
                           write_page_checksum=checksum)
            out[checksum] = (Path(d) / "c.parquet").read_bytes()
    return out


@fast(100)
@given(st.data(), st.booleans())
def test_corrupt_parquet_is_a_named_error(parquet_bytes, data, checksum):
    """Bytes overwritten anywhere in a Parquet file: a CorpusError naming the file, or rows
    numbered 1, 2, ... With page checksums (written by the producer, verified by the reader)
    every document read is also the row that was written: no silently altered id or text.
    Without them Parquet cannot see every corruption (a dictionary index changed in an
    uncompressed run reads as another, valid, id)."""
    buf = bytearray(parquet_bytes[checksum])
    rng = data.draw(st.randoms(use_true_random=False))     # uniform over the file's bytes
    for _ in range(rng.randint(1, 4)):
        at, n = rng.randrange(len(buf)), rng.choice([1, 2, 8, 64])
        buf[at:at + n] = rng.randbytes(n)[:len(buf) - at]
    if rng.random() < 0.2:
        del buf[rng.randrange(len(buf)):]
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "c.parquet", bytes(buf), 2000)
        recs = _records_or_named_error(path)
        if recs is not None and checksum:
            for r in recs:
                assert isinstance(r, BadRecord) or (r.id, r.text) == PARQUET_ROWS[r.line - 1]


@fast(15)
@given(st.lists(st.tuples(ROW_IDS, ROW_TEXTS), min_size=1, max_size=12))
def test_datasets_rows(rows):
    import datasets
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ds"
        datasets.Dataset.from_dict({"id": [r[0] for r in rows], "text": [r[1] for r in rows]},
                                   features=datasets.Features(
                                       id=datasets.Value("string"),
                                       text=datasets.Value("string"))).save_to_disk(str(path))
        _count(path, len(rows))
        expected = [_row_line(i, t) for i, t in rows]
        _check_records(list(read_corpus([path], CorpusOptions())), expected, str(path))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A datasets directory of PARQUET_ROWS in four arrow files."""
    import datasets
    datasets.disable_progress_bars()
    path = tmp_path_factory.mktemp("datasets") / "ds"
    datasets.Dataset.from_dict({"id": [r[0] for r in PARQUET_ROWS],
                                "text": [r[1] for r in PARQUET_ROWS]}).save_to_disk(
        str(path), num_shards=4)
    return path


@fast(40)
@given(st.data())
def test_corrupt_datasets_directory_is_a_named_error(dataset_dir, data):
    """Bytes overwritten in a datasets directory's memory-mapped arrow files: a CorpusError
    naming the directory, or rows numbered 1, 2, ...; before the reader validated the arrow
    data, a corrupt offset killed the process (SIGSEGV) about one time in four. Arrow files
    carry no checksum: a changed character inside a string can still read as another text."""
    rng = data.draw(st.randoms(use_true_random=False))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ds"
        shutil.copytree(dataset_dir, path)
        victim = rng.choice(sorted(path.glob("*.arrow")))
        buf = bytearray(victim.read_bytes())
        for _ in range(rng.randint(1, 3)):
            at, n = rng.randrange(len(buf)), rng.choice([1, 2, 8, 64])
            buf[at:at + n] = rng.randbytes(n)[:len(buf) - at]
        victim.write_bytes(bytes(buf))
        _count(path, len(PARQUET_ROWS))
        _records_or_named_error(path)


# ---------------------------------------------------------------------------------------------
# Structurally unreadable inputs: a CorpusError naming the path (there is no line to name)

def _structural_cases(d: Path) -> list[tuple[str, Path, CorpusOptions]]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    datasets.disable_progress_bars()
    cases = [("no such file or directory", d / "missing.jsonl", CorpusOptions())]
    (d / "x.csv").write_text("id,text\n")
    cases.append(("unknown corpus format", d / "x.csv", CorpusOptions()))
    (d / "empty").mkdir()
    (d / "empty" / "notes.md").write_text("x")
    cases.append(("holds no .jsonl", d / "empty", CorpusOptions()))
    (d / "junk.parquet").write_bytes(b"PAR1 this is not parquet\n" * 10)
    cases.append(("not a readable Parquet file", d / "junk.parquet", CorpusOptions()))
    (d / "empty.parquet").write_bytes(b"")
    cases.append(("not a readable Parquet file", d / "empty.parquet", CorpusOptions()))
    pq.write_table(pa.table({"id": ["a"], "body": ["b"]}), d / "cols.parquet")
    cases.append(("no column 'text'", d / "cols.parquet", CorpusOptions()))
    good = pa.table({"id": [f"d{i}" for i in range(3000)], "text": ["t " * 30] * 3000})
    pq.write_table(good, d / "pages.parquet", row_group_size=1000, write_page_checksum=True)
    buf = bytearray((d / "pages.parquet").read_bytes())
    buf[len(buf) // 2:len(buf) // 2 + 64] = b"\xa5" * 64         # inside a data page
    (d / "pages.parquet").write_bytes(bytes(buf))
    cases.append(("unreadable Parquet data", d / "pages.parquet", CorpusOptions()))
    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["x", "y"]})
    datasets.DatasetDict(train=ds).save_to_disk(str(d / "dict"))
    cases.append(("a DatasetDict with splits ['train']", d / "dict", CorpusOptions()))
    ds.save_to_disk(str(d / "nocol"))
    cases.append(("no column 'body'", d / "nocol", CorpusOptions(text_field="body")))
    for what, damage in [("state", lambda p: (p / "state.json").write_text("{")),
                         ("nostate", lambda p: (p / "state.json").unlink()),
                         ("info", lambda p: (p / "dataset_info.json").write_text("[")),
                         ("arrow", lambda p: [a.write_bytes(a.read_bytes()[:100])
                                              for a in p.glob("*.arrow")]),
                         ("noarrow", lambda p: [a.unlink() for a in p.glob("*.arrow")])]:
            shutil.copytree(d / "nocol", d / what)
            damage(d / what)
            cases.append(("not a readable datasets directory", d / what, CorpusOptions()))
    datasets.Dataset.from_dict({"id": [], "text": []}).save_to_disk(str(d / "no rows"))
    cases.append(("not a readable datasets directory", d / "no rows", CorpusOptions()))
    return cases


def test_structurally_unreadable_inputs_are_named_errors(tmp_path):
    for want, path, options in _structural_cases(tmp_path):
        if path.exists():
            _count(path, 0)
        with pytest.raises(CorpusError) as e:
            list(read_corpus([path], options))
        assert str(e.value).startswith(f"{path}: ") and want in str(e.value), (want, e.value)
        assert "\n" not in str(e.value)
        with pytest.raises(CorpusError):
            scan_corpus([path], dataclasses.replace(options, skip_bad=True))


# ---------------------------------------------------------------------------------------------
# The CLI end to end: a one-line `error: FILE:LINE: ...`, exit 1, no traceback; with --skip-bad
# the summary counts what was skipped

CLI = ("--no-bm25", "--no-progress", "--projection-dim", "2", "--max-len", "64")


def _adversarial_corpora(d: Path, texts: list[str]):
    """(name, corpus paths, first error's prefix, (documents, empty, bad) under --skip-bad, or
    None: an error --skip-bad does not skip, run once)."""
    t = texts
    jl = d / "adversarial.jsonl"
    rows = [BOM + json.dumps({"id": "d0", "text": t[0]}).encode() + b"\r\n",
            json.dumps({"id": "d1", "text": t[1]}).encode() + b"\r\n",
            b" \t \r\n",
            json.dumps({"id": "empty", "text": " \u3000 "}).encode() + b"\n",
            '{"id": "latin", "text": "café %s"}\n'.encode("latin-1") % t[2].encode(),
            json.dumps({"id": "\ud800", "text": t[3]}).encode() + b"\n",
            json.dumps({"id": "nul", "text": t[4] + "\x00"}).encode() + b"\n",
            b'{"id": ' + b"7" * 5000 + b', "text": "huge int"}\n',
            b'{"id": "deep", "text": "x", "n": ' + b"[" * 50000 + b"]" * 50000 + b"}\n",
            json.dumps({"id": ["x"], "text": t[5]}).encode() + b"\n",
            b'{"id": "huge", "text": "' + b"word " * 300_000 + b"\n",
            json.dumps({"id": "ид 😀 x", "text": t[6] + " \u2028 😀"}, ensure_ascii=False)
            .encode() + b"\n",
            json.dumps({"id": 42, "text": t[7]}).encode() + b"\n",
            b"\n",
            json.dumps({"id": "e2", "text": ""}).encode()]
    jl.write_bytes(b"".join(rows))
    tx = d / "adversarial.txt"
    tx.write_bytes(BOM + t[0].encode() + b"\r\n" + t[1].encode() + b"\n"
                   + b"\xff\xfe bytes \x80\n\n" + ("café " + t[2]).encode("cp1252", "replace")
                   + b"\n"
                   + t[3].encode() + b"\x00\n" + b"   \r\n" + t[4].encode())
    pq_path = d / "corrupt.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(3000)],
                             "text": [t[i % len(t)] for i in range(3000)]}), pq_path,
                   row_group_size=1000, write_page_checksum=True)
    buf = bytearray(pq_path.read_bytes())
    buf[len(buf) // 2:len(buf) // 2 + 64] = b"\xa5" * 64
    pq_path.write_bytes(bytes(buf))
    a, b = d / "a.jsonl", d / "b.jsonl"
    a.write_text("".join(json.dumps({"id": f"d{i}", "text": x}) + "\n" for i, x in
                         enumerate(t[:3])))
    b.write_text(json.dumps({"id": "z", "text": t[3]}) + "\n"
                 + json.dumps({"id": "d1", "text": t[4]}) + "\n")
    for p in (jl, tx, pq_path, a, b):
        _count(p, 0)
    return [("jsonl", [jl], f"{jl}:5: not UTF-8", (4, 2, 7)),
            ("txt", [tx], f"{tx}:3: not UTF-8", (3, 0, 3)),
            ("parquet", [pq_path], f"{pq_path}: unreadable Parquet data", None),
            ("duplicates", [a, b], f"{b}:2: duplicate id 'd1' (first at {a}:2)", None)]


def test_cli_on_adversarial_files(tmp_path, gpt2_dir, lama_texts):
    texts = lama_texts[:8]
    cases = _adversarial_corpora(tmp_path, texts)

    def run(name, paths, skip):
        corpus = [a for p in paths for a in ("--corpus", str(p))]
        out = tmp_path / f"index-{name}-{skip}"
        return tda("index", "--model", str(gpt2_dir), *corpus, "--out", str(out), *CLI,
                   *(("--skip-bad", "--json") if skip else ()), check=False), out

    jobs = [(name, paths, skip) for name, paths, _, counts in cases
            for skip in ((False, True) if counts else (False,))]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip([(n, s) for n, _, s in jobs], pool.map(lambda j: run(*j), jobs)))
    for name, paths, first_error, counts in cases:
        for skip in ((False, True) if counts else (False,)):
            res, out = results[name, skip]
            if skip:
                assert res.returncode == 0, res.stderr[-2000:]
                summary = json.loads(res.stdout)
                docs, empty, bad = counts
                assert (summary["documents"], summary["skipped_empty"],
                        summary["skipped_bad"]) == (docs, empty, bad), name
                assert summary["skipped_examples"][0].startswith(first_error), name
                continue
            assert res.returncode == 1, (name, skip, res.stderr[-2000:])
            assert "Traceback" not in res.stderr, res.stderr[-3000:]
            errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
            assert len(errors) == 1 and res.stderr.rstrip().endswith(errors[0]), res.stderr
            assert errors[0].startswith(f"error: {first_error}"), (errors[0][:300], name)
            assert not out.exists(), name
    # the documents that survive the adversarial file are indexed with their ids and texts intact
    kept = {"d0": texts[0], "d1": texts[1], "42": texts[7],
            "ид 😀 x": texts[6] + " \u2028 😀"}
    index = read_index(results["jsonl", True][1])
    assert set(index["doc_ids"].tolist()) == set(kept)
    for doc_id, example_id, text in zip(index["doc_ids"], index["ids"], index["text"]):
        assert example_id != doc_id or text == kept[doc_id]
