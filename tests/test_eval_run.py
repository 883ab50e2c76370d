"""The evaluation end to end on a small real benchmark, and `tda demo` in a small setting."""
import json

import pytest

from tda.tests import helpers
from tda.tests.indexing import tda
from tda.evaluation.pair_format import pair_metrics, read_pair_jsonl


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    tda("eval", "prepare", "--lama", str(helpers.LAMA), "--relations", "P19,P1412",
        "--facts", "24", "--paraphrases", "2", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def model(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    res = tda("eval", "train", "--corpus", str(bench / "corpus.jsonl"), "--out", str(out),
              "--epochs", "3", "--vocab-size", "1024", "--json")
    info = json.loads(res.stdout)
    assert info["queries"] == 24 and 0 <= info["fact_accuracy"] <= 1
    assert info["final_lr"] > 0 and (out / "loss.png").is_file()
    for f in ("config.json", "tokenizer.json", "optimizer.pt", "training.json"):
        assert (out / f).is_file(), f
    return out


def test_training_is_deterministic(bench, model, tmp_path):
    again = tmp_path / "again"
    tda("eval", "train", "--corpus", str(bench / "corpus.jsonl"), "--out", str(again),
        "--epochs", "3", "--vocab-size", "1024")
    a = json.loads((model / "training.json").read_text())
    b = json.loads((again / "training.json").read_text())
    assert a["losses"] == b["losses"]


@pytest.mark.slow
def test_eval_run_end_to_end(bench, model, tmp_path):
    index = tmp_path / "index"
    tda("index", "--model", str(model), "--corpus", str(bench / "corpus.jsonl"), "--out",
        str(index), "--projection-dim", "4", "--shard-size", "64", "--no-progress")
    report_dir = tmp_path / "report"
    tda("eval", "run", "--index", str(index), "--queries", str(bench / "queries.jsonl"),
        "--out", str(report_dir), "--tail-patch", "3", "--tail-patch-queries", "6",
        "--workers", "1", "--sweep-components", "0.25", "--sweep-mixing", "0.5")
    report = json.loads((report_dir / "report.json").read_text())
    sweeps = {n for n in report["methods"] if n.startswith("sweep-")}
    assert len(sweeps) == 2 and any(n.startswith("sweep-k") for n in sweeps)
    assert set(report["methods"]) - sweeps == {"bm25", "graddot", "gradcos", "optcos",
                                               "rtrain", "trackstar", "exact", "fused"}
    lam = report["profiles"]["mixed (main)"]["lambda"]
    swept = [v for k, v in report["profiles"].items() if k.startswith("mixed-lam")][0]
    odds = lambda x: x / (1 - x)  # noqa: E731
    assert odds(swept["lambda"]) == pytest.approx(0.5 * odds(lam), rel=1e-4)
    assert 0 <= report["facts_known"] <= 24
    for name, m in report["methods"].items():
        for metric in ("mrr_all", "recall10_all", "precision10_all", "coverage10_all",
                       "mrr_wikipedia", "recall10_wikipedia"):
            s = m[metric]
            assert s["n"] == 24 and s["ci_low"] <= s["mean"] <= s["ci_high"], (name, metric)
            assert 0 <= s["mean"] <= 1
        # a hit in the top 10 whenever a proponent is covered, so recall >= coverage
        assert m["recall10_all"]["mean"] >= m["coverage10_all"]["mean"]
        assert m["tail_patch_at_1_dlogp"]["n"] == 6
        # the results file, reloaded, gives back the report's MRR and recall@10
        records = read_pair_jsonl(report_dir / "pairs" / f"{name}.jsonl")
        assert len(records) == 24 and all(len(r.proponents) <= 100 for r in records)
        got = pair_metrics(records)
        assert got["mrr_first"] == pytest.approx(m["mrr_all"]["mean"], abs=1e-12), name
        assert got["recall@10"] == pytest.approx(m["recall10_all"]["mean"], abs=1e-12), name
        assert got["precision@10"] == pytest.approx(m["precision10_all"]["mean"], abs=1e-12)
        gradient = name not in ("bm25", "fused")
        assert all((r.opponents is not None) == gradient for r in records), name
        if gradient:      # opponents: the lowest scores, below every proponent's
            assert all(max(r.opponent_scores) <= min(r.proponent_scores) for r in records)
        assert set(report["sentence_classes"][name]["all_queries"]) == {
            "own", "same_relation", "other"}
        assert sum(c["queries"]["n"] for c in report["frequency_buckets"][name].values()) == 24
    assert set(report["references"]) == {"ground_truth", "random"}
    paired = report["paired_tail_patch"]
    assert set(paired) == set(report["methods"]) - {"trackstar"} | {"ground_truth", "random"}
    for name, d in paired.items():           # paired mean = difference of the means
        other = report["methods"].get(name) or report["references"][name]
        assert d["at_k"]["n"] == 6
        assert d["at_k"]["mean"] == pytest.approx(
            report["methods"]["trackstar"]["tail_patch_at_k_dlogp"]["mean"]
            - other["tail_patch_at_k_dlogp"]["mean"], abs=1e-9)
    # BM25 finds sentences that share the query's words: far better than chance here
    assert report["methods"]["bm25"]["mrr_all"]["mean"] > 0.3
    md = (report_dir / "report.md").read_text()
    assert "TrackStar (+ mixed R)" in md and "reference: ground truth" in md
    for png in ("mrr.png", "recall10.png", "tailpatch.png"):
        assert (report_dir / png).stat().st_size > 1000
    # the model-size comparison, of this report with itself: every paired change is 0
    tda("eval", "sizes", "--report", str(report_dir), "--report", str(report_dir), "--out",
        str(tmp_path / "sizes"))
    sizes = json.loads((tmp_path / "sizes" / "sizes.json").read_text())
    assert [r["facts_known"] for r in sizes["sizes"]] == [report["facts_known"]] * 2
    for name in ("bm25", "trackstar"):
        for metric, change in sizes["largest_minus_smallest"][name].items():
            assert change["mean"] == 0 and change["n"] > 0, (name, metric)
    assert (tmp_path / "sizes" / "sizes.png").stat().st_size > 1000
    assert "TrackStar (+ mixed R)" in (tmp_path / "sizes" / "sizes.md").read_text()
    # a rerun reuses the ablation indexes and profiles
    res = tda("eval", "run", "--index", str(index), "--queries", str(bench / "queries.jsonl"),
              "--out", str(report_dir), "--methods", "trackstar,exact", "--tail-patch", "0",
              "--workers", "1")
    assert "ablation index" not in res.stderr and "profile eval-mixed" not in res.stderr


def test_eval_run_refuses_a_non_trackstar_index(bench, model, tmp_path):
    index = tmp_path / "index"
    tda("index", "--model", str(model), "--corpus", str(bench / "corpus.jsonl"), "--out",
        str(index), "--projection-dim", "2", "--correction", "none", "--no-bm25",
        "--no-progress")
    res = tda("eval", "run", "--index", str(index), "--queries", str(bench / "queries.jsonl"),
              "--out", str(tmp_path / "r"), check=False)
    assert res.returncode == 1 and "must be TrackStar's" in res.stderr


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from rich.console import Console

    from tda.evaluation.demo import run_demo
    from tda.schemas.options import DemoOptions
    console = Console(record=True, width=160)
    settings = DemoOptions(epochs=2, projection_dim=4)
    shown = run_demo(tmp_path, settings, console)
    text = console.export_text()
    assert len(shown["shown"]) == 3 and "TrackStar" in text and "BM25" in text
    for s in shown["shown"]:
        assert len(s["trackstar"]) == 5 and len(s["bm25"]) == 5
    console = Console(record=True, width=160)
    again = run_demo(tmp_path, settings, console)                           # all cached
    assert again["shown"] == shown["shown"]
    text = console.export_text()
    assert "model cached" in text and "index cached" in text and "profile cached" in text


def test_paired_differences_on_known_values():
    from tda.evaluation.run import paired_differences
    patched = {"trackstar": {"tail_patch_per_query_dlogp": {"q1": [0.5, 0.1], "q2": [0.2, 0.0],
                                                            "q3": []}},
               "bm25": {"tail_patch_per_query_dlogp": {"q1": [0.1, 0.1], "q2": [0.4, 0.2],
                                                       "q3": [9.0]}}}
    d = paired_differences(patched, "trackstar")
    assert set(d) == {"bm25"}
    assert d["bm25"]["at_1"]["n"] == 2                      # q3: nothing retrieved, left out
    assert d["bm25"]["at_1"]["mean"] == pytest.approx((0.4 - 0.2) / 2)
    assert d["bm25"]["at_k"]["mean"] == pytest.approx(((0.3 - 0.1) + (0.1 - 0.3)) / 2)
