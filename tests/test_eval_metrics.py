"""Fact-tracing metrics: the paper's recall@k (hit), precision@k and MRR, tda's coverage@k,
chunk -> document rankings, bootstrap CI."""
import numpy as np
import pytest

from tda.evaluation.metrics import (bootstrap_ci, correct_flags, coverage_at,
                                    ground_truth_metrics, precision_at, recall_at,
                                    reciprocal_rank, summarize, to_documents)

RANKING = ["d7", "d3", "d9", "d1", "d4", "d2", "d8", "d5", "d6", "d0", "d11", "d10"]


@pytest.mark.parametrize("relevant, expected", [
    ({"d7"}, 1.0),                  # first place
    ({"d9", "d2"}, 1 / 3),          # the first hit counts, not the later one
    ({"d1"}, 1 / 4),
    ({"d10"}, 1 / 12),
    ({"d99"}, 0.0),                 # never retrieved
])
def test_reciprocal_rank(relevant, expected):
    assert reciprocal_rank(RANKING, relevant) == pytest.approx(expected)


def test_reciprocal_rank_cutoff():
    assert reciprocal_rank(RANKING, {"d10"}, cutoff=12) == pytest.approx(1 / 12)
    assert reciprocal_rank(RANKING, {"d10"}, cutoff=11) == 0.0
    assert reciprocal_rank(RANKING, {"d3", "d10"}, cutoff=2) == 0.5
    # the paper's cutoff (100) by default: rank 101 scores nothing, rank 100 scores 1/100
    long = [f"x{i}" for i in range(150)]
    assert reciprocal_rank(long, {"x99"}) == pytest.approx(0.01)
    assert reciprocal_rank(long, {"x100"}) == 0.0
    assert reciprocal_rank(iter(RANKING), {"d3"}) == 0.5      # any iterable
    # MRR over queries is the mean of the per-query values
    rr = [reciprocal_rank(RANKING, r) for r in ({"d7"}, {"d3"}, {"d99"})]
    assert np.mean(rr) == pytest.approx(0.5)


@pytest.mark.parametrize("relevant, k, expected", [
    ({"d7", "d3"}, 10, 1.0),
    ({"d7", "d10"}, 10, 0.5),                 # d10 is 12th
    ({"d7", "d10"}, 12, 1.0),
    ({"d1", "d2", "d99", "d98"}, 10, 0.5),
    ({"d99"}, 10, 0.0),
    ({"d7", "d3", "d9"}, 2, 2 / 3),           # more proponents than k: at most k / |relevant|
    ({"d7"}, 1, 1.0),
])
def test_coverage_at(relevant, k, expected):
    assert coverage_at(RANKING, relevant, k=k) == pytest.approx(expected)


def test_coverage_counts_a_repeated_id_once():
    assert coverage_at(["a", "a", "b"], {"a", "c"}, k=3) == 0.5


# A hand-made ranking with every metric worked out by hand: correct at ranks 3, 4 and 11.
HAND = ["x1", "x2", "p1", "p2", "x3", "x4", "x5", "x6", "x7", "x8", "p3", "x9"]
HAND_TRUTH = {"p1", "p2", "p3", "p4"}          # p4 is never retrieved


def test_paper_metrics_on_a_hand_made_ranking():
    assert correct_flags(HAND, HAND_TRUTH) == [False, False, True, True] + [False] * 6 + \
        [True, False]
    assert recall_at(HAND, HAND_TRUTH, 10) == 1.0          # a hit: p1 is in the top 10
    assert recall_at(HAND, HAND_TRUTH, 2) == 0.0           # none in the top 2
    assert precision_at(HAND, HAND_TRUTH, 10) == pytest.approx(2 / 10)   # p1, p2
    assert precision_at(HAND, HAND_TRUTH, 4) == pytest.approx(2 / 4)
    assert reciprocal_rank(HAND, HAND_TRUTH) == pytest.approx(1 / 3)    # p1 at rank 3
    assert coverage_at(HAND, HAND_TRUTH, 10) == pytest.approx(2 / 4)    # p1, p2 of four
    assert coverage_at(HAND, HAND_TRUTH, 12) == pytest.approx(3 / 4)
    # the viewer's getGroundTruthMetrics on the same flags gives the same three numbers
    assert ground_truth_metrics(correct_flags(HAND, HAND_TRUTH)) == {
        "recall@10": 1.0, "precision@10": pytest.approx(0.2), "mrr_first": pytest.approx(1 / 3)}
    # a miss everywhere, and a list shorter than k (the viewer's precision is then 0)
    assert ground_truth_metrics([False] * 12) == {"recall@10": 0.0, "precision@10": 0.0,
                                                  "mrr_first": 0.0}
    assert ground_truth_metrics([True, False, True]) == {
        "recall@10": 1.0, "precision@10": 0.0, "mrr_first": 1.0}
    assert precision_at(["p1", "x"], {"p1"}, 10) == 0.0
    # hit rate vs coverage: two queries, one found once in the top 10, one missed
    queries = [(HAND, HAND_TRUTH), (HAND, {"x99"})]
    assert np.mean([recall_at(r, t) for r, t in queries]) == 0.5
    assert np.mean([coverage_at(r, t) for r, t in queries]) == pytest.approx(0.25)


def test_empty_ground_truth_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="proponents"):
        recall_at(RANKING, set())
    with pytest.raises(ValueError, match="proponents"):
        coverage_at(RANKING, set())
    with pytest.raises(ValueError, match="proponents"):
        precision_at(RANKING, set())
    with pytest.raises(ValueError, match="proponents"):
        reciprocal_rank(RANKING, set())
    with pytest.raises(ValueError):
        recall_at(RANKING, {"d7"}, k=0)
    with pytest.raises(ValueError):
        coverage_at(RANKING, {"d7"}, k=0)
    with pytest.raises(ValueError):
        ground_truth_metrics([True], k=0)
    with pytest.raises(ValueError):
        reciprocal_rank(RANKING, {"d7"}, cutoff=0)


def test_to_documents_keeps_each_documents_first_chunk():
    ranked = ["A#2", "B", "A#0", "C#1", "B", "C#0", "D#0", "A#1"]
    doc_of = {"A#0": "A", "A#1": "A", "A#2": "A", "B": "B", "C#0": "C", "C#1": "C",
              "D#0": "D"}
    assert to_documents(ranked, doc_of) == ["A", "B", "C", "D"]
    # without a mapping the ids stay as they are (only exact repeats collapse)
    assert to_documents(ranked) == ["A#2", "B", "A#0", "C#1", "C#0", "D#0", "A#1"]
    assert to_documents([]) == []
    with pytest.raises(KeyError):
        to_documents(["Z#0"], doc_of)
    # ranks move up once duplicates are gone: D is 4th, not 7th
    docs = to_documents(ranked, doc_of)
    assert reciprocal_rank(docs, {"D"}) == pytest.approx(1 / 4)
    assert coverage_at(docs, {"C", "D"}, k=3) == 0.5
    # a document id that contains '#' is never split
    assert to_documents(["x#y#0", "x#y#1"], {"x#y#0": "x#y", "x#y#1": "x#y"}) == ["x#y"]


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    values = list(rng.random(200) < 0.3) + list(rng.exponential(0.2, 100))
    values = [float(v) for v in values]
    mean = float(np.mean(values))
    low, high = bootstrap_ci(values, seed=3)
    assert low < mean < high
    assert (low, high) == bootstrap_ci(values, seed=3)
    assert (low, high) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci(np.array(values), seed=3) == (low, high)
    # a wider level gives a wider interval from the same resamples
    low99, high99 = bootstrap_ci(values, level=0.99, seed=3)
    assert low99 <= low and high <= high99
    # the width shrinks like 1/sqrt(n): 4x the queries, about half the width
    low4, high4 = bootstrap_ci(values * 4, seed=3)
    assert 0.35 < (high4 - low4) / (high - low) < 0.65
    # and matches the normal approximation's width for a mean
    se = np.std(values, ddof=1) / np.sqrt(len(values))
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ci([1.0] * 7) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], n_resamples=0)


def test_summarize():
    values = [1.0, 0.5, 0.0, 0.25, 1.0, 0.0, 0.2, 0.0]
    s = summarize(values)
    assert set(s) == {"mean", "ci_low", "ci_high", "n"}
    assert s["n"] == 8
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert (s["ci_low"], s["ci_high"]) == bootstrap_ci(values)
    assert all(type(s[k]) is float for k in ("mean", "ci_low", "ci_high"))
    assert type(s["n"]) is int
