"""`tda eval prepare`: LAMA T-REx facts -> corpus.jsonl, queries.jsonl, manifest.json.

Everything runs on the real data (helpers.DATA): small slices of LAMA T-REx, the ParaRel
templates and FewRel sentences.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from tda.errors import PrepareError
from tda.evaluation.prepare import (
    DEMO_DIR, KINDS, detokenize, fill_template, make_prompt, prepare, read_pararel_templates,
    split_evenly, write_demo_data,
)
from tda.schemas.options import PrepareOptions
from tda.tests import helpers

LAMA = helpers.LAMA
PARAREL = helpers.DATA / "pararel-templates"
FEWREL = helpers.DATA / "fewrel" / "val_wiki.json"

SLICE = PrepareOptions(relations="P19,P140,P31", facts=30, templates="pararel", paraphrases=2,
                       distractors=str(FEWREL), distractor_count=50, seed=3)


def load(bench: Path) -> tuple[list[dict], list[dict], dict]:
    corpus = [json.loads(line) for line in (bench / "corpus.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line) for line in (bench / "queries.jsonl").open(encoding="utf-8")]
    manifest = json.loads((bench / "manifest.json").read_text(encoding="utf-8"))
    return corpus, queries, manifest


def raw_evidences(relations) -> dict[str, list[dict]]:
    """uuid -> the LAMA evidence entries, read straight from the files."""
    out = {}
    for rel in relations:
        with (LAMA / f"{rel}.jsonl").open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                out[rec["uuid"]] = rec["evidences"]
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    manifest = prepare(LAMA, out, SLICE)
    return out, manifest


def test_records_are_consistent(bench):
    out, returned = bench
    corpus, queries, manifest = load(out)
    assert manifest == returned
    ids = [r["id"] for r in corpus]
    assert len(ids) == len(set(ids))
    assert len({r["text"] for r in corpus}) == len(corpus)
    assert len({q["id"] for q in queries}) == len(queries) == 30
    assert len({q["uuid"] for q in queries}) == 30
    by_id = {r["id"]: r for r in corpus}
    position = {r["id"]: i for i, r in enumerate(corpus)}
    for r in corpus:
        assert set(r) == {"id", "text", "kind", "facts"}
        assert r["kind"] in KINDS and r["text"].strip() == r["text"] != ""
        assert r["id"].startswith({"wikipedia": "w-", "paraphrase": "p-", "distractor": "d-"}
                                  [r["kind"]])
    stated = defaultdict(set)
    for q in queries:
        assert set(q) == {"id", "prompt", "target", "proponents", "wikipedia_proponents",
                          "paraphrase_proponents", "relation", "template", "subject", "object",
                          "uuid"}
        assert q["relation"] in ("P19", "P140", "P31")
        assert all(p in by_id for p in q["proponents"])
        assert q["wikipedia_proponents"], "every fact has at least one evidence sentence"
        assert q["proponents"] == sorted(
            set(q["wikipedia_proponents"]) | set(q["paraphrase_proponents"]),
            key=position.__getitem__)
        assert all(by_id[p]["kind"] == "wikipedia" for p in q["wikipedia_proponents"])
        assert all(by_id[p]["kind"] == "paraphrase" for p in q["paraphrase_proponents"])
        for p in q["proponents"]:
            stated[p].add(q["id"])
    for r in corpus:        # "facts" is exactly the inverse of the queries' proponents
        assert set(r["facts"]) == stated.get(r["id"], set())
        assert len(r["facts"]) == len(set(r["facts"]))
        assert (r["kind"] == "distractor") == (not r["facts"])
    counts = manifest["counts"]
    assert counts["facts"] == counts["queries"] == 30
    assert counts["facts_by_relation"] == {"P19": 10, "P31": 10, "P140": 10}
    assert counts["sentences"] == {
        **{k: sum(r["kind"] == k for r in corpus) for k in KINDS}, "total": len(corpus)}
    assert counts["sentences"]["distractor"] == 50


def test_wikipedia_proponents_are_the_facts_evidence(bench):
    out, _ = bench
    corpus, queries, _ = load(out)
    by_id = {r["id"]: r for r in corpus}
    evidences = raw_evidences(["P19", "P140", "P31"])
    for q in queries:
        ev = evidences[q["uuid"]]
        sentences = {e["masked_sentence"].replace("[MASK]", e["obj_surface"]) for e in ev}
        texts = [by_id[p]["text"] for p in q["wikipedia_proponents"]]
        assert set(texts) == sentences
        for text in texts:
            assert any(e["obj_surface"] in text for e in ev)
    # every Wikipedia sentence in the corpus is some sampled fact's evidence
    assert all(r["facts"] for r in corpus if r["kind"] == "wikipedia")


def test_sentences_stating_several_facts_are_proponents_of_each(tmp_path):
    # P364 (film language) and P407 (language of work) share ~150 sentences.
    manifest = prepare(LAMA, tmp_path, PrepareOptions(relations="P407,P364"))
    corpus, queries, _ = load(tmp_path)
    expected = defaultdict(set)
    evidences = raw_evidences(["P364", "P407"])
    for q in queries:
        for e in evidences[q["uuid"]]:
            expected[e["masked_sentence"].replace("[MASK]", e["obj_surface"])].add(q["id"])
    assert {r["text"]: set(r["facts"]) for r in corpus} == expected
    relation = {q["id"]: q["relation"] for q in queries}
    across = [r for r in corpus if len({relation[i] for i in r["facts"]}) > 1]
    assert len(across) > 100
    props = {q["id"]: set(q["wikipedia_proponents"]) for q in queries}
    for r in across:
        assert all(r["id"] in props[i] for i in r["facts"])
    several = sum(len(r["facts"]) > 1 for r in corpus)
    assert manifest["counts"]["wikipedia_sentences_stating_several_facts"] == several


def test_prompts_end_before_the_object(bench):
    out, manifest = bench
    _, queries, _ = load(out)
    pararel = {rel: read_pararel_templates(PARAREL / f"{rel}.jsonl") for rel in ("P19", "P140")}
    lama = {json.loads(line)["relation"]: json.loads(line)["template"]
            for line in (LAMA / "relations.jsonl").open(encoding="utf-8")}
    for q in queries:
        t = q["template"]
        assert t.count("[X]") == t.count("[Y]") == 1 and t.index("[X]") < t.index("[Y]")
        head = t[:t.index("[Y]")].replace("[X]", q["subject"]).strip()
        assert q["prompt"] == head[:1].upper() + head[1:] == make_prompt(t, q["subject"])
        assert q["prompt"] == q["prompt"].rstrip() and q["subject"] in q["prompt"]
        assert q["target"] == " " + q["object"]
        if q["relation"] == "P31":     # no ParaRel file: the LAMA template
            assert t == lama["P31"]
        else:
            assert t in pararel[q["relation"]]
    # seeded per fact: more than one ParaRel template is used
    assert len({q["template"] for q in queries if q["relation"] == "P19"}) > 1
    assert "LAMA template" in manifest["templates"]["P31"]["note"]
    assert manifest["templates"]["P19"]["query_templates"] == "pararel"


def test_paraphrases_never_use_the_query_template(bench):
    out, _ = bench
    corpus, queries, _ = load(out)
    by_id = {r["id"]: r for r in corpus}
    for q in queries:
        texts = [by_id[p]["text"] for p in q["paraphrase_proponents"]]
        if q["relation"] == "P31":
            assert texts == []
            continue
        assert len(texts) == 2
        pool = {fill_template(t, q["subject"], q["object"]): t
                for t in read_pararel_templates(PARAREL / f"{q['relation']}.jsonl")}
        own = fill_template(q["template"], q["subject"], q["object"])
        assert own not in texts
        for text in texts:
            assert text in pool and pool[text] != q["template"]
            assert q["subject"] in text and q["object"] in text


def test_lama_templates_and_all_paraphrases(tmp_path):
    # P19's LAMA template "[X] was born in [Y] ." is also a ParaRel template: never a paraphrase
    manifest = prepare(LAMA, tmp_path, PrepareOptions(relations="P19", facts=5, paraphrases=50),
                       pararel_dir=PARAREL)
    corpus, queries, _ = load(tmp_path)
    by_id = {r["id"]: r for r in corpus}
    templates = read_pararel_templates(PARAREL / "P19.jsonl")
    for q in queries:
        assert q["template"] == "[X] was born in [Y] ."
        assert q["prompt"] == f"{q['subject']} was born in"
        texts = [by_id[p]["text"] for p in q["paraphrase_proponents"]]
        assert f"{q['subject']} was born in {q['object']}." not in texts
        # every other distinct statement (a/an variants of a template coincide)
        others = {fill_template(t, q["subject"], q["object"]) for t in templates}
        others.discard(f"{q['subject']} was born in {q['object']}.")
        assert sorted(texts) == sorted(others) and len(others) < len(templates) - 1
    assert manifest["counts"]["paraphrase_statements"] == sum(
        len(q["paraphrase_proponents"]) for q in queries)
    # no ParaRel needed without paraphrases and pararel templates
    prepare(LAMA, tmp_path / "b", PrepareOptions(relations="P19", facts=5),
            pararel_dir=tmp_path / "missing")


def test_deterministic(tmp_path, bench):
    out, _ = bench
    prepare(LAMA, tmp_path / "again", SLICE)
    for name in ("corpus.jsonl", "queries.jsonl", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    prepare(LAMA, tmp_path / "seed", dataclasses.replace(SLICE, seed=4))
    _, q1, _ = load(out)
    _, q2, _ = load(tmp_path / "seed")
    assert {q["uuid"] for q in q1} != {q["uuid"] for q in q2}


def test_sampling_spreads_facts_evenly(tmp_path):
    assert split_evenly(10, {"a": 100, "b": 100, "c": 100}) == {"a": 4, "b": 3, "c": 3}
    assert split_evenly(10, {"a": 1, "b": 100, "c": 2}) == {"a": 1, "b": 7, "c": 2}
    # a real slice: one relation with only 3 facts, the other takes the rest
    lama = tmp_path / "lama"
    lama.mkdir()
    shutil.copy(LAMA / "relations.jsonl", lama)
    for rel, n in (("P19", 3), ("P140", 40)):
        lines = (LAMA / f"{rel}.jsonl").read_text(encoding="utf-8").splitlines(True)[:n]
        (lama / f"{rel}.jsonl").write_text("".join(lines), encoding="utf-8")
    m = prepare(lama, tmp_path / "out", PrepareOptions(facts=20))
    assert m["counts"]["facts_by_relation"] == {"P19": 3, "P140": 17}
    # a smaller sample of a relation is a prefix-subset of a larger one
    _, small, _ = load(tmp_path / "out")
    prepare(lama, tmp_path / "out2", PrepareOptions(facts=30))
    _, large, _ = load(tmp_path / "out2")
    assert {q["uuid"] for q in small} <= {q["uuid"] for q in large}
    with pytest.raises(PrepareError, match="only 43"):
        prepare(lama, tmp_path / "out3", PrepareOptions(facts=44))


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(PrepareError, match="unknown relation P999"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19,P999"))
    with pytest.raises(PrepareError, match="LAMA directory not found: .*nowhere"):
        prepare(tmp_path / "nowhere", tmp_path / "out", PrepareOptions())
    with pytest.raises(PrepareError, match="not a relation id: 'birthplace'"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19,birthplace"))
    with pytest.raises(PrepareError, match="facts must be >= 0"):
        PrepareOptions(facts=-1)
    with pytest.raises(PrepareError, match="templates must be one of"):
        PrepareOptions(templates="wiki")
    with pytest.raises(PrepareError, match="distractors file not found"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19", facts=2,
                                               distractors=str(tmp_path / "none.json")))
    with pytest.raises(PrepareError, match="ParaRel template directory not found"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19", facts=2, templates="pararel"),
                pararel_dir=tmp_path / "none")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(PrepareError, match="bad.json: expected FewRel JSON"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19", facts=2, distractors=str(bad)))
    with pytest.raises(PrepareError, match="asked for 20000 distractors"):
        prepare(LAMA, tmp_path, PrepareOptions(relations="P19", facts=2, distractors=str(FEWREL),
                                               distractor_count=20000))
    assert not (tmp_path / "corpus.jsonl").exists()      # nothing written on error
    assert isinstance(PrepareError("x"), ValueError)     # the CLI's one-line errors


def test_options_document_every_field():
    for f in dataclasses.fields(PrepareOptions):
        assert f.metadata.get("help"), f.name
    assert PrepareOptions().relation_list() == []
    assert PrepareOptions(relations=" p19, P101 ,P19,").relation_list() == ["P19", "P101"]


def test_detokenize_and_fill():
    tokens = ('He said " hello , world " ( born 1950 ) in the Sino - Japanese war , '
              "and it 's 5 % .").split()
    assert detokenize(tokens) == ('He said "hello, world" (born 1950) in the Sino-Japanese '
                                  "war, and it's 5%.")
    assert detokenize(["a", "\xa0", "b", "."]) == "a b."
    assert fill_template("[X] is originally from [Y] .", "Allan Peiper", "Alexandra") == \
        "Allan Peiper is originally from Alexandra."
    assert fill_template("[X] was an [Y]-born person.", "Illa J", "Detroit") == \
        "Illa J was a Detroit-born person."
    assert fill_template("the occupation of [X] is a [Y].", "Ann", "actor") == \
        "The occupation of Ann is an actor."
    assert make_prompt("[X] was born in [Y] .", "Allan Peiper") == "Allan Peiper was born in"


def test_distractors_are_real_fewrel_sentences(bench):
    out, _ = bench
    corpus, _, _ = load(out)
    distractors = [r["text"] for r in corpus if r["kind"] == "distractor"]
    assert len(distractors) == 50
    assert not any(" ," in t or " ." in t[-2:] for t in distractors)


def test_demo_data_is_up_to_date(tmp_path):
    """evaluation/demo_data is what `python -m tda.evaluation.prepare ../shared/data` writes."""
    manifest = write_demo_data(helpers.DATA, tmp_path)
    for name in ("corpus.jsonl", "queries.jsonl", "NOTICE.md"):
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), \
            f"{name} is stale: regenerate with `python -m tda.evaluation.prepare ../shared/data`"
    shipped = json.loads((DEMO_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert shipped["counts"] == manifest["counts"]
    assert shipped["outputs_sha256"] == manifest["outputs_sha256"]
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir()) < 1_000_000
    assert "CC BY-NC 4.0" in (DEMO_DIR / "NOTICE.md").read_text(encoding="utf-8")
