"""Corpus readers and bad input: named errors or counted skips, and nothing written is lost."""
import json

import numpy as np
import pytest
import torch

from tda.tests import helpers
from tda.tests.indexing import read_index, tda
from tda.engine import TrackStarConfig
from tda.indexer.documents import chunk_document
from tda.indexer.scan import scan_corpus
from tda.errors import CorpusError
from tda.indexer.readers import read_corpus
from tda.schemas.corpus import BadRecord, CorpusOptions, Document

FAST = ("--shard-size", "8", "--max-len", "160", "--projection-dim", "2", "--no-bm25",
        "--no-progress")


@pytest.fixture(scope="module")
def texts():
    return [s for _, s in helpers.fact_sentences(12)]


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_readers_agree_across_formats(tmp_path, texts):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    _jsonl(tmp_path / "c.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n\n")
    opts = CorpusOptions()
    want = [(r["id"], r["text"]) for r in rows]
    for src in ("c.jsonl", "c.parquet", "ds"):
        got = [(d.id, d.text) for d in read_corpus([tmp_path / src], opts)]
        assert got == want, src
    lines = list(read_corpus([tmp_path / "c.txt"], opts))
    assert [(d.id, d.text) for d in lines] == [(f"c.txt:{i + 1}", t) for i, t in enumerate(texts)]
    whole = list(read_corpus([tmp_path / "c.txt"], CorpusOptions(text_unit="file")))
    assert len(whole) == 1 and whole[0].id == "c.txt" and whole[0].text.startswith(texts[0])
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "b.jsonl").write_text((tmp_path / "c.jsonl").read_text())
    assert len(list(read_corpus([tmp_path / "dir"], opts))) == len(texts)


def test_bad_records_are_named(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "text": "fine"}, "{not json", {"id": 3, "text": "int ids are fine"},
        {"id": "b", "text": 5}, {"text": "no id"}, {"id": "c", "text": "nul\x00byte"},
        "[1, 2]", {"id": True, "text": "bool id"}])
    with path.open("ab") as f:
        f.write(b'{"id": "latin", "text": "caf\xe9"}\n')
    recs = list(read_corpus([path], CorpusOptions()))
    good = [r.id for r in recs if isinstance(r, Document)]
    bad = [str(r) for r in recs if isinstance(r, BadRecord)]
    assert good == ["a", "3"]
    assert bad == [f"{path}:2: malformed JSON: Expecting property name enclosed in double "
                   f"quotes at column 2",
                   f"{path}:4: text is a int, not a string",
                   f"{path}:5: no 'id' field",
                   f"{path}:6: text holds a NUL character",
                   f"{path}:7: a JSON list, not an object",
                   f"{path}:8: id is a bool, not a string",
                   f"{path}:9: not UTF-8 (byte 28)"]


def test_scan_counts_and_refuses_duplicates(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x y"}, {"id": "b", "text": "  "},
                                        {"id": "c", "text": "z"}])
    scan = scan_corpus([path], CorpusOptions())
    assert (scan.documents, scan.empty, scan.bad) == (2, 1, 0)
    _jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "q", "text": "y"},
                                  {"id": "a", "text": "z"}])
    with pytest.raises(CorpusError, match=r"d.jsonl:3: duplicate id 'a' \(first at .*d.jsonl:1\)"):
        scan_corpus([tmp_path / "d.jsonl"], CorpusOptions())
    with pytest.raises(CorpusError, match="no such file"):
        scan_corpus([tmp_path / "missing.jsonl"], CorpusOptions())
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unknown corpus format '.csv'"):
        scan_corpus([tmp_path / "x.csv"], CorpusOptions())


def test_chunking_covers_the_document(gpt2_dir, texts):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    doc = Document("d", " ".join(texts[:6]), "mem", 1)
    n = len(tok(doc.text)["input_ids"])
    chunks = chunk_document(doc, tok, 40)
    assert len(chunks) == -(-n // 40)
    assert sum(len(c.sequence.ids) for c in chunks) == n
    assert max(len(c.sequence.ids) for c in chunks) - min(len(c.sequence.ids) for c in chunks) <= 1
    assert [c.id for c in chunks] == [f"d#{j}" for j in range(len(chunks))]
    assert all(c.text in doc.text for c in chunks)
    assert chunk_document(Document("e", "x", "mem", 1), tok, 40) == []   # one token: nothing


def test_cli_bad_line_stops_with_file_and_line(tmp_path, gpt2_dir, texts):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in
                                        enumerate(texts[:5])] + ['{"id": "x", "text": '])
    out = tmp_path / "index"
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out", str(out),
              *FAST, check=False)
    assert res.returncode == 1
    assert f"{path}:6: malformed JSON" in res.stderr and "--skip-bad" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out", str(out),
              *FAST, "--skip-bad", "--json")
    summary = json.loads(res.stdout)
    assert summary["skipped_bad"] == 1 and summary["documents"] == 5
    assert f"{path}:6: malformed JSON" in summary["skipped_examples"][0]


def test_cli_empty_texts_and_duplicates(tmp_path, gpt2_dir, texts):
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts[:4])]
    path = _jsonl(tmp_path / "c.jsonl", rows + [{"id": "e", "text": ""}])
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out",
              str(tmp_path / "i1"), *FAST, "--json")
    s = json.loads(res.stdout)
    assert (s["documents"], s["skipped_empty"], s["examples"]) == (4, 1, 4)
    dup = _jsonl(tmp_path / "dup.jsonl", rows + [rows[1]])
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(dup), "--out",
              str(tmp_path / "i2"), *FAST, check=False)
    assert res.returncode == 1 and "duplicate id 'd1'" in res.stderr


def test_cli_refuses_foreign_outputs_and_keeps_them(tmp_path, gpt2_dir, texts):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out", str(foreign),
              *FAST, check=False)
    assert res.returncode == 1 and "is not a tda index" in res.stderr, res.stderr
    assert (foreign / "notes.txt").read_text() == "mine"
    import zarr
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out",
              str(tmp_path / "other.zarr"), *FAST, check=False)
    assert res.returncode == 1 and "not a tda index" in res.stderr
    # another corpus into an existing index: refused, the index untouched
    good = tmp_path / "index"
    tda("index", "--model", str(gpt2_dir), "--corpus", str(path), "--out", str(good), *FAST)
    before = read_index(good)
    other = _jsonl(tmp_path / "o.jsonl", [{"id": "z", "text": texts[0]}])
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(other), "--out", str(good),
              *FAST, check=False)
    assert res.returncode == 1 and "refusing to mix" in res.stderr and "corpus" in res.stderr
    np.testing.assert_array_equal(read_index(good)["vectors"], before["vectors"])
    res = tda("index", "--model", str(gpt2_dir), "--corpus", str(other), "--out", str(good),
              *FAST, "--overwrite", "--json")
    assert json.loads(res.stdout)["documents"] == 1


def test_cli_without_optimizer_state_estimates_it(tmp_path, gpt2_dir, texts):
    import shutil
    model = tmp_path / "model"
    shutil.copytree(gpt2_dir, model)
    (model / "optimizer.pt").unlink()
    path = _jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    first = tda("index", "--model", str(model), "--corpus", str(path), "--out",
                str(tmp_path / "i"), *FAST, "--estimate-examples", "6")
    assert ("second moments estimated from 6 examples of 6 documents sampled at random (seed 0) "
            "from the corpus's 12") in first.stderr
    info = json.loads(tda("info", str(tmp_path / "i"), "--json").stdout)
    assert "over 6 examples of 6 documents sampled at random" in info["second_moments"]["source"]
    assert info["second_moments"]["estimate"] == {"examples": 6, "form": "factored",
                                                  "documents": 6, "corpus_documents": 12,
                                                  "seed": 0}
    # the sample is spread over the whole corpus, and V is the mean squared gradient over it
    from tda.engine import estimate_from_texts, load_model
    from tda.engine.estimate import sample_indices
    from tda.store import IndexStore
    picked = sample_indices(12, 6, 0)
    assert picked != list(range(6))
    m, tok = load_model(model)
    expect = estimate_from_texts(m, tok, [texts[i] for i in picked],
                                 TrackStarConfig(max_len=160)).factored()
    stored = IndexStore.open(tmp_path / "i").read_moments()
    for name, mom in expect.moments.items():
        torch.testing.assert_close(stored[name].row, mom.row, rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(stored[name].col, mom.col, rtol=1e-4, atol=1e-12)
    again = tda("index", "--model", str(model), "--corpus", str(path), "--out",
                str(tmp_path / "i"), *FAST, "--estimate-examples", "6", "--json")
    assert json.loads(again.stdout)["shards_written"] == 0      # reuses the saved estimate
    res = tda("index", "--model", str(model), "--corpus", str(path), "--out",
              str(tmp_path / "j"), *FAST, "--optimizer-state", str(path), check=False)
    assert res.returncode == 1 and "cannot read optimizer state" in res.stderr
