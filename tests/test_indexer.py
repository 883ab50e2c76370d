"""`tda index` on real LAMA sentences: correctness, distribution, resume, BM25."""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from tda.tests import helpers
from tda.tests.indexing import assert_same_index, free_port, read_index, tda, torchrun, write_corpus
from tda.engine import Featurizer, TrackStarConfig, load_model
from tda.store.bm25 import BM25
from tda.store.index import IndexStore
from tda.tests.tolerances import FLOAT16_ATOL, STORED_VECTOR_ATOL

SETTINGS = ("--shard-size", "24", "--max-len", "96", "--projection-dim", "4",
            "--batch-tokens", "1024", "--no-progress")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    facts = helpers.fact_sentences(184)               # one real sentence for each of 184 facts
    texts = [s for _, s in facts[:160]]
    long_texts = [[s for _, s in facts[160 + 8 * j:168 + 8 * j]] for j in range(3)]
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts, long_texts)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, gpt2_dir, corpus):
    out = tmp_path_factory.mktemp("ref") / "index"
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out), *SETTINGS)
    return out


def test_index_holds_the_featurizer_vectors(reference, gpt2_dir, corpus):
    data = read_index(reference)
    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert len(docs) == 163
    short = [d for d in docs if not d["id"].startswith("long")]
    model, tok = load_model(gpt2_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4, max_len=96),
                   optimizer_state=gpt2_dir)
    ids = data["ids"].tolist()
    whole = [d for d in short if len(tok(d["text"])["input_ids"]) <= 96]
    assert len(whole) >= 20
    for d in whole[:20]:
        row = ids.index(d["id"])
        expect = f.encode_examples([d["text"]])[0]
        np.testing.assert_allclose(data["vectors"][row], expect, atol=STORED_VECTOR_ATOL)
        assert data["text"][row] == d["text"]
    np.testing.assert_allclose(np.linalg.norm(data["vectors"], axis=1), 1, atol=FLOAT16_ATOL)
    assert (data["n_tokens"] <= 96).all() and (data["loss"] > 0).all()


def test_long_documents_become_chunks(reference, corpus):
    data = read_index(reference)
    ids = data["ids"].tolist()
    chunks = [i for i in ids if i.startswith("long0#")]
    assert len(chunks) >= 2 and chunks == [f"long0#{j}" for j in range(len(chunks))]
    rows = [ids.index(c) for c in chunks]
    assert set(data["doc_ids"][rows]) == {"long0"}
    original = [json.loads(x) for x in corpus.read_text().splitlines()
                if '"long0"' in x][0]["text"]
    for r in rows:                                       # chunk texts are spans of the document
        assert data["text"][r] in original
    assert data["text"][rows[0]].startswith(original[:20])


def _n_shards(index) -> int:
    """Shards of 24 examples (SETTINGS) the index's examples fill."""
    return -(-len(read_index(index)["ids"]) // 24)


def test_info(reference):
    out = tda("info", str(reference), "--json")
    info = json.loads(out.stdout)
    n = _n_shards(reference)
    assert info["shards"] == {"expected": n, "complete": n, "incomplete": [], "missing": []}
    assert info["examples"] == len(read_index(reference)["ids"])
    assert info["bm25"]["complete"] and info["bm25"]["documents"] == info["examples"]
    assert info["bytes_on_disk"] > 0
    assert "complete shards" in tda("info", str(reference)).stdout


def test_bm25_ranks_a_facts_own_sentence_first(reference):
    data = read_index(reference)
    bm25 = BM25(IndexStore.open(reference).bm25_path)
    doc_of = dict(zip(data["ids"].tolist(), data["doc_ids"].tolist()))   # chunk -> document
    facts = helpers.fact_sentences(160)
    hits = sum(doc_of[bm25.search(f"{fact.subject} {fact.object}", k=1)[0][0]] == f"s{i}"
               for i, (fact, _) in enumerate(facts))
    assert hits >= 0.9 * len(facts), hits
    assert bm25.text(data["ids"][0]) == data["text"][0]


def test_rerun_is_a_no_op_and_other_settings_are_refused(reference, gpt2_dir, corpus):
    before = read_index(reference)
    out = tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out",
              str(reference), *SETTINGS, "--json")
    summary = json.loads(out.stdout)
    assert summary["shards_written"] == 0
    assert summary["shards_already_complete"] == _n_shards(reference)
    assert not summary["scanned"]                       # the stored corpus scan was reused
    changed = [a if a != "4" else "8" for a in SETTINGS]
    bad = tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out",
              str(reference), *changed, check=False)
    assert bad.returncode == 1
    assert "built with other settings" in bad.stderr and "projection_dim: 4 vs 8" in bad.stderr
    after = read_index(reference)
    assert before["ids"].tolist() == after["ids"].tolist()
    np.testing.assert_array_equal(before["vectors"], after["vectors"])


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path, reference, gpt2_dir, corpus):
    out = tmp_path / "index"
    torchrun(2, "index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out),
             *SETTINGS)
    assert_same_index(out, reference)


@pytest.mark.slow
def test_fsdp_equals_no_fsdp(tmp_path, reference, gpt2_dir, corpus):
    out = tmp_path / "index"
    torchrun(2, "index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out),
             *SETTINGS, "--fsdp")
    assert_same_index(out, reference)


@pytest.mark.slow
def test_two_nodes_on_one_machine(tmp_path, reference, gpt2_dir, corpus):
    out = tmp_path / "index"
    port = free_port()
    args = ("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out),
            *SETTINGS)
    nodes = [torchrun(1, *args, background=True,
                      extra=("--nnodes=2", f"--node-rank={r}", "--master-addr=127.0.0.1",
                             f"--master-port={port}")) for r in (0, 1)]
    for p in nodes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert_same_index(out, reference)


@pytest.mark.slow
def test_killed_build_resumes_with_another_rank_count(tmp_path, reference, gpt2_dir, corpus):
    out = tmp_path / "index"
    args = ("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out),
            *SETTINGS)
    proc = subprocess.Popen([*_python_cli(), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline:
        if out.exists():
            try:
                if len(IndexStore.open(out).complete_shards()) >= 2:
                    break
            except Exception:      # noqa: BLE001 - the index is being created right now
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = IndexStore.open(out).complete_shards()
    assert 2 <= len(done) < _n_shards(reference), done
    torchrun(2, *args)
    assert_same_index(out, reference)


def _python_cli():
    import sys
    return [sys.executable, "-m", "tda.cli"]


def _env():
    from tda.tests.indexing import env
    return env()
