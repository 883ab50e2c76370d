"""Each rank reads only its share: the corpus scan split into byte ranges gives the documents,
counts and shard starts of one sequential read, on every format; shards hold a fixed number of
examples, even of a document longer than a shard; duplicate ids are found when their copies
fall to different ranks; complete shards are verified by every rank; a schema-1 index is
refused for resuming with a clear message."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from tda.tests import helpers
from tda.tests.indexing import assert_same_index, read_index, tda, torchrun, write_corpus
from tda.indexer.documents import ShardReader, chunk_document, valid_documents
from tda.indexer.readers import READ_AHEAD, corpus_files, source_size
from tda.indexer.scan import part_range, scan_corpus, token_counter
from tda.schemas.corpus import CorpusOptions
from tda.store.index import IndexStore

SHARD, MAX_LEN = 5, 16
V1 = Path(__file__).parent / "fixtures" / "index-v1"


@pytest.fixture(scope="module")
def texts():
    return helpers.sentences(90)


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gpt2_dir)


def _sources(tmp: Path, texts: list[str]) -> dict[str, list[Path]]:
    """The same documents (a long one in the middle, a blank line, an empty text) in every
    format; Parquet in row groups of 7 rows."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts[:40])]
    rows.insert(20, {"id": "long", "text": " ".join(texts[40:70])})
    rows.insert(30, {"id": "empty", "text": "  "})
    (tmp / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:25]) + "\n" +
                                 "".join(json.dumps(r) + "\n" for r in rows[25:]))
    pq.write_table(pa.Table.from_pylist(rows), tmp / "c.parquet", row_group_size=7)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp / "ds"))
    datasets.Dataset.from_list([{"id": "x" + r["id"], "text": r["text"]} for r in rows[:15]]
                               ).save_to_disk(str(tmp / "ds2"))
    (tmp / "c.txt").write_text("".join(r["text"] + "\n" for r in rows))
    (tmp / "more.jsonl").write_text("".join(json.dumps({"id": f"m{i}", "text": t}) + "\n"
                                            for i, t in enumerate(texts[70:90])))
    return {"jsonl": [tmp / "c.jsonl"], "parquet": [tmp / "c.parquet"], "datasets": [tmp / "ds"],
            "text": [tmp / "c.txt"], "mixed": [tmp / "c.parquet", tmp / "more.jsonl",
                                               tmp / "c.txt", tmp / "ds2"]}


@pytest.mark.parametrize("fmt", ["jsonl", "text", "parquet", "datasets", "mixed"])
def test_split_scan_reads_what_a_sequential_read_does(tmp_path, texts, tokenizer, fmt):
    files = _sources(tmp_path, texts)[fmt]
    options = CorpusOptions()
    count = token_counter(tokenizer)
    whole = scan_corpus(files, options, count, MAX_LEN, SHARD, parts=1)
    sequential = [e for d in valid_documents(files, options)
                  for e in chunk_document(d, tokenizer, MAX_LEN)]
    empties = {"text": 0}.get(fmt, 1)        # the text reader skips blank lines itself
    assert whole.examples == len(sequential) > 3 * SHARD and whole.empty == empties
    assert whole.tokens == sum(len(e.sequence.ids) for e in sequential)
    sizes = [source_size(f) for f in corpus_files(files)]
    for parts in (2, 3, 5):
        split = scan_corpus(files, options, count, MAX_LEN, SHARD, parts=parts)
        assert (split.documents, split.examples, split.tokens, split.empty, split.bad) == \
            (whole.documents, whole.examples, whole.tokens, whole.empty, whole.bad)
        assert split.shards.equals(whole.shards), parts
        assert len(split.bytes_read) == parts
        if fmt in ("jsonl", "text"):      # each part reads its range, and read-ahead at most
            assert max(split.bytes_read) <= sum(sizes) / parts + READ_AHEAD + 4096
    # every shard read from its recorded start: in order (one stream) and shuffled (seeks)
    order = list(range(len(whole.shards)))
    for shuffle in (False, True):
        if shuffle:
            random.Random(0).shuffle(order)
        reader = ShardReader(corpus_files(files), options, tokenizer, MAX_LEN)
        got = {s: reader.read(whole.shards.start(s), min(SHARD, whole.examples - s * SHARD))
               for s in order}
        flat = [e for s in sorted(got) for e in got[s]]
        assert [(e.id, e.text, e.sequence) for e in flat] == \
            [(e.id, e.text, e.sequence) for e in sequential]
        assert [sum(len(e.sequence.ids) for e in got[s]) for s in sorted(got)] == \
            whole.shards.tokens.tolist()


def test_bad_records_and_their_lines_across_parts(tmp_path, texts):
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts[:60])]
    lines[45] = "{broken"
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for parts in (1, 4):
        with pytest.raises(Exception, match=rf"^{path}:46: malformed JSON"):
            scan_corpus([path], CorpusOptions(), parts=parts)
        scan = scan_corpus([path], CorpusOptions(skip_bad=True), parts=parts)
        assert (scan.documents, scan.bad) == (59, 1)
        assert scan.examples_of_bad[0].startswith(f"{path}:46: ")


def test_a_document_longer_than_a_shard(tmp_path, gpt2_dir, texts):
    """Shards hold exactly shard_size examples (the last: the rest), a long document's chunks
    run across several shards in order, and the rows equal those of a one-shard build."""
    from tda.indexer.build import build_index
    from tda.schemas.config import TrackStarConfig
    from tda.schemas.options import IndexOptions
    corpus = write_corpus(tmp_path / "c.jsonl", texts[:6], long_texts=[texts[6:40]])
    track = TrackStarConfig(max_len=MAX_LEN, projection_dim=4)
    small = build_index(gpt2_dir, [corpus], tmp_path / "small", track,
                        IndexOptions(shard_size=SHARD, bm25=False), progress=False)
    store = IndexStore.open(tmp_path / "small")
    rows = [n for _, n in sorted(store.complete_shards().items())]
    assert rows[:-1] == [SHARD] * (len(rows) - 1) and 0 < rows[-1] <= SHARD
    long_shards = [s for s in range(len(rows))
                   if any(i.startswith("long0#") for i in store.read_shard(s, ("ids",))["ids"])]
    assert len(long_shards) >= 3 and long_shards == list(range(long_shards[0],
                                                               long_shards[-1] + 1))
    assert small.examples == sum(rows) > 4 * SHARD
    build_index(gpt2_dir, [corpus], tmp_path / "one", track,
                IndexOptions(shard_size=1000, bm25=False), progress=False)
    assert_same_index(tmp_path / "small", tmp_path / "one")
    ids = read_index(tmp_path / "small")["ids"].tolist()
    assert [i for i in ids if i.startswith("long0#")] == \
        [f"long0#{j}" for j in range(sum(i.startswith("long0#") for i in ids))]
    # a touched corpus (same bytes, new mtime) is scanned again, finds the same shards and
    # resumes; nothing is rewritten
    corpus.touch()
    again = build_index(gpt2_dir, [corpus], tmp_path / "small", track,
                        IndexOptions(shard_size=SHARD, bm25=False), progress=False)
    assert again.scanned and again.shards_written == 0
    same = build_index(gpt2_dir, [corpus], tmp_path / "small", track,
                       IndexOptions(shard_size=SHARD, bm25=False), progress=False)
    assert not same.scanned and same.scan_bytes_read == []


def test_schema_1_index_is_searchable_but_not_resumed(tmp_path, gpt2_dir, texts):
    index = tmp_path / "index-v1"
    shutil.copytree(V1, index)
    assert IndexStore.open(index).manifest.n_shards == 2     # 5 documents, 3 per shard
    corpus = write_corpus(tmp_path / "c.jsonl", texts[:5])
    out = tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(index),
              "--no-bm25", "--no-progress", check=False)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert "shards of 3 documents" in line and "stays searchable" in line


@pytest.mark.slow
def test_two_ranks_find_duplicates_across_them_and_verify_together(tmp_path, gpt2_dir, texts):
    """The two copies of an id lie in different ranks' byte ranges: both places are named.
    Then a build whose complete shards include a damaged one owned by rank 1's share of the
    verification: 2 ranks rebuild it, and the index equals a 1-process build."""
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts[:40])]
    lines[-1] = json.dumps({"id": "d3", "text": texts[50]})
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(lines) + "\n")
    size = dup.stat().st_size
    first, last = len(lines[0]) + len(lines[1]) + len(lines[2]) + 3, size - len(lines[-1]) - 1
    assert part_range([size], 0, 2)[0][2] > first and part_range([size], 1, 2)[0][1] < last
    out = torchrun(2, "index", "--model", str(gpt2_dir), "--corpus", str(dup), "--out",
                   str(tmp_path / "never"), "--no-bm25", "--no-progress", check=False)
    assert out.returncode != 0
    assert f"{dup}:40: duplicate id 'd3' (first at {dup}:4)" in out.stderr
    corpus = write_corpus(tmp_path / "c.jsonl", texts[:40])
    settings = ("--shard-size", str(SHARD), "--max-len", str(MAX_LEN), "--projection-dim",
                "4", "--no-bm25", "--no-progress")
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out",
        str(tmp_path / "ref"), *settings)
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    store = IndexStore.open(tmp_path / "resumed")
    complete = sorted(store.complete_shards())
    victim = complete[1::2][-1]                          # in rank 1's share of the checks
    chunk = next((tmp_path / "resumed" / "shards" / f"{victim:06d}" / "vectors").rglob("c/*/*"))
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    resumed = torchrun(2, "index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out",
                       str(tmp_path / "resumed"), *settings, "--json")
    summary = json.loads(resumed.stdout)
    assert summary["shards_written"] == 1 and not summary["scanned"]
    assert f"shard {victim:06d}" in resumed.stderr
    assert_same_index(tmp_path / "resumed", tmp_path / "ref")
    np.testing.assert_array_equal(read_index(tmp_path / "resumed")["n_tokens"],
                                  read_index(tmp_path / "ref")["n_tokens"])
