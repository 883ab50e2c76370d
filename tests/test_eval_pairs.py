"""Per-query results in the TrackStar release's format, and the report's breakdowns, on
hand-made rankings whose values are known."""
import json

import pytest

from tda.evaluation.breakdown import SentenceClasses, by_bucket, class_breakdown
from tda.evaluation.pair_format import (OPPONENT_FIELDS, RELEASE_FIELDS, REQUIRED_FIELDS,
                                        TDA_FIELDS, TREX_FIELDS, frequency_bucket, pair_metrics,
                                        read_pair_jsonl, write_pair_jsonl)
from tda.errors import PairFormatError
from tda.schemas.queries import Query
from tda.evaluation.run import Ranked, pair_records, retrieval_metrics

# Two P19 facts and one P1412 fact, each with its own proponents.
QUERIES = [
    Query("q-a", "Ann was born in", " Paris", ("w-a1", "w-a2", "p-a1"), ("w-a1", "w-a2"),
          "P19", {"uuid": "uuid-a"}),
    Query("q-b", "Bob was born in", " Rome", ("w-b1",), ("w-b1",), "P19", {"uuid": "uuid-b"}),
    Query("q-c", "Cy speaks", " Welsh", ("p-c1", "p-c2"), (), "P1412", {"uuid": "uuid-c"}),
]
RANKED = [
    # q-a: correct at ranks 2 and 3 -> MRR 1/2, hit, precision 2/10, coverage 2/3
    Ranked(["w-b1", "w-a2", "p-a1", "d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "w-a1"],
           [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1],
           ["d-9", "d-8"], [-0.9, -0.8]),
    # q-b: its only proponent at rank 11 -> MRR 1/11, no hit, precision 0, coverage 0
    Ranked(["w-a1", "w-a2", "p-a1", "d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "w-b1"],
           [1.0 - i / 20 for i in range(11)], ["d-9"], [-1.0]),
    # q-c: first place -> MRR 1, hit, precision 1/10, coverage 1/2
    Ranked(["p-c1", "d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "d-8", "d-9"],
           [1.0 - i / 20 for i in range(10)]),
]
TEXTS = {d: f"text of {d}" for r in RANKED for d in r.ids + (r.opponent_ids or [])}


def test_records_have_the_release_fields_and_reload_to_the_same_metrics(tmp_path):
    recs = list(pair_records(QUERIES, RANKED, TEXTS, "trackstar", "tiny-trex",
                             known=[True, False, True], confidence=[0.5, 0.01, 0.9]))
    path = tmp_path / "trackstar.jsonl"
    assert write_pair_jsonl(path, recs) == 3
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    for obj in lines:
        assert set(REQUIRED_FIELDS) <= set(obj)                 # the release's field list
        assert set(obj) <= set(RELEASE_FIELDS) | set(TDA_FIELDS)
        assert set(TREX_FIELDS) <= set(obj)                     # T-REx records carry them
        assert obj["example_id"].startswith("trex")             # the viewer's T-REx layout
        assert isinstance(obj["inputs_plaintext"], str) and isinstance(obj["targets_plaintext"],
                                                                       str)
        n = len(obj["proponents"])
        assert len(obj["proponent_ids"]) == len(obj["proponent_scores"]) == \
            len(obj["proponent_correct"]) == n
        assert all(isinstance(t, str) for t in obj["proponents"])
        assert all(isinstance(c, bool) for c in obj["proponent_correct"])
        assert obj["proponent_scores"] == sorted(obj["proponent_scores"], reverse=True)
    assert lines[0]["fact_id"] == "uuid-a" and lines[0]["relation"] == "P19"
    assert lines[0]["proponent_correct"][:4] == [False, True, True, False]
    assert lines[0]["opponent_ids"] == ["d-9", "d-8"] and set(OPPONENT_FIELDS) <= set(lines[0])
    assert "opponents" not in lines[2]                          # none given: not written
    assert lines[0]["fact_frequency"] == 3 and lines[0]["frequency_bucket"] == 1
    assert lines[1]["model_knows"] is False and lines[2]["model_confidence"] == 0.9
    back = read_pair_jsonl(path)
    assert [r.to_dict() for r in back] == lines
    got = pair_metrics(back)
    assert got["mrr_first"] == pytest.approx((1 / 2 + 1 / 11 + 1) / 3)
    assert got["recall@10"] == pytest.approx(2 / 3)
    assert got["precision@10"] == pytest.approx((2 / 10 + 0 + 1 / 10) / 3)
    assert got["coverage@10"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    # the report computes the same numbers from the rankings
    report = retrieval_metrics(QUERIES, [r.ids for r in RANKED], [True, False, True])
    assert report["mrr_all"]["mean"] == pytest.approx(got["mrr_first"])
    assert report["recall10_all"]["mean"] == pytest.approx(got["recall@10"])
    assert report["precision10_all"]["mean"] == pytest.approx(got["precision@10"])
    assert report["coverage10_all"]["mean"] == pytest.approx(got["coverage@10"])
    assert report["mrr_known"]["n"] == 2
    assert report["mrr_known"]["mean"] == pytest.approx((1 / 2 + 1) / 2)
    # Wikipedia-only ground truth: q-a's first Wikipedia proponent is at rank 2 as well
    assert report["recall10_wikipedia"]["mean"] == pytest.approx(2 / 3)


def test_sample_pairs_cuts_queries_and_lists(tmp_path):
    from tda.evaluation.pair_format import sample_pairs
    src = tmp_path / "pairs"
    write_pair_jsonl(src / "trackstar.jsonl", pair_records(QUERIES, RANKED, TEXTS, "trackstar",
                                                           "tiny-trex"))
    write_pair_jsonl(src / "bm25.jsonl", pair_records(QUERIES, RANKED, TEXTS, "bm25", "t"))
    assert sample_pairs(src, tmp_path / "small", queries=2, top=3) == {"bm25.jsonl": 2,
                                                                       "trackstar.jsonl": 2}
    small = read_pair_jsonl(tmp_path / "small" / "trackstar.jsonl")
    assert [r.example_id for r in small] == ["trex-q-a", "trex-q-b"]
    assert small[0].proponent_ids == RANKED[0].ids[:3] and small[0].opponent_ids == ["d-9", "d-8"]
    assert small[0].proponent_correct == [False, True, True] and len(small[0].proponents) == 3
    assert pair_metrics(small)["recall@10"] == 0.5      # q-a's hits are in its first 3
    with pytest.raises(PairFormatError, match="no .jsonl"):
        sample_pairs(tmp_path / "small" / "none", tmp_path / "x")


def test_bad_results_files_name_the_line(tmp_path):
    good = {"example_id": "x", "inputs_plaintext": "p", "targets_plaintext": " t",
            "proponents": ["a"], "proponent_ids": ["1"], "proponent_scores": [0.5]}
    cases = [({k: v for k, v in good.items() if k != "proponent_ids"}, "missing proponent_ids"),
             ({**good, "proponent_scores": [0.5, 0.1]}, "proponent_scores has 2 entries"),
             ({**good, "proponent_correct": [1]}, "list of bools"),
             ({**good, "opponents": ["z"]}, "opponents need all"),
             ({**good, "example_id": 7}, "example_id must be a string")]
    for rec, message in cases:
        path = tmp_path / "r.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(rec) + "\n")
        with pytest.raises(PairFormatError, match=f"r.jsonl:2: .*{message}"):
            read_pair_jsonl(path)
    path.write_text(json.dumps(good) + "\n")
    rec = read_pair_jsonl(path)[0]             # a release record without T-REx fields reads,
    with pytest.raises(PairFormatError, match="proponent_correct"):      # but cannot be scored
        pair_metrics([rec])
    path.write_text(json.dumps({**good, "8b_confidence": 0.7}) + "\n")   # unknown fields kept
    rec = read_pair_jsonl(path)[0]
    assert rec.extra == {"8b_confidence": 0.7} and rec.to_dict()["8b_confidence"] == 0.7


def test_frequency_buckets():
    assert [frequency_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 500)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError):
        frequency_bucket(-1)
    got = by_bucket(QUERIES, {"mrr": [0.5, 1 / 11, 1.0], "tp": [None, 0.2, 0.4]})
    assert set(got) == {0, 1}                     # q-b: 1 proponent; q-a: 3; q-c: 2
    assert got[1]["queries"] == {"n": 2, "proponents_min": 2, "proponents_max": 3}
    assert got[1]["mrr"]["mean"] == pytest.approx(0.75)
    assert got[1]["tp"]["n"] == 1 and got[1]["tp"]["mean"] == pytest.approx(0.4)
    assert got[0]["mrr"]["mean"] == pytest.approx(1 / 11)


def test_sentence_classes_and_their_tail_patch():
    classes = SentenceClasses(QUERIES)
    assert classes.classify(QUERIES[0], "w-a1") == "own"
    assert classes.classify(QUERIES[0], "w-b1") == "same_relation"     # Bob's birthplace
    assert classes.classify(QUERIES[0], "p-c1") == "other"             # another relation
    assert classes.classify(QUERIES[0], "d-1") == "other"              # a distractor
    ranked = {0: RANKED[0].ids[:3], 1: RANKED[1].ids[:3]}
    # q-a's top 3: same_relation, own, own; q-b's: same_relation x3
    deltas = {0: [0.6, 0.3, 0.1], 1: [0.2, 0.2, 0.5]}
    got = class_breakdown(QUERIES, ranked, deltas, classes, k=3, n_resamples=200)
    assert got["own"]["sentences"] == 2 and got["same_relation"]["sentences"] == 4
    assert got["own"]["share"]["mean"] == pytest.approx(2 / 6)
    assert got["same_relation"]["share"]["mean"] == pytest.approx(4 / 6)
    assert got["other"]["share"]["mean"] == 0.0 and "tail_patch" not in got["other"]
    assert got["own"]["tail_patch"]["mean"] == pytest.approx(0.2)
    assert got["same_relation"]["tail_patch"]["mean"] == pytest.approx((0.6 + 0.9) / 4)
    s = got["same_relation"]["tail_patch"]
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["n"] == 4
