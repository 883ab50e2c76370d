"""Does the mixed correction R stop one template from taking over the results?

Queries that share a template ("[X] was born in") share a large common gradient component, so
without correction their top results are often sentences of *other* facts of the same relation
(the TrackStar paper's motivation for R_eval). This benchmark builds a real T-REx benchmark with
N facts of P19 (place of birth) among facts of other relations, trains a small model on it,
indexes it, and compares three profiles on the P19 queries:
  none  = unit-normalized, optimizer-corrected vectors (no R)
  train = R_train
  mixed = lambda R_eval + (1 - lambda) R_train, R_eval from the P19 queries (TrackStar)
Per profile: share of the top 10 that state another fact of the same relation (lower is better),
share that state the query's own fact, MRR of the own fact's sentences, recall@10. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.evaluation.metrics import coverage_at, reciprocal_rank, summarize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=200, help="P19 facts (queries)")
    ap.add_argument("--other-facts", type=int, default=200,
                    help="facts of other relations in the corpus")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", default=str(common.CACHE / "profiles"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from tda.engine import TrackStarConfig
    from tda.errors import IndexMissing
    from tda.evaluation.prepare import prepare
    from tda.evaluation.queries import knows
    from tda.evaluation.train import train_benchmark_model
    from tda.indexer.build import build_index
    from tda.indexer.precondition import build_profile
    from tda.schemas.options import (IndexOptions, PrepareOptions, PreconditionOptions,
                                     SearchOptions, TrainOptions)
    from tda.schemas.queries import read_queries
    from tda.searcher.searcher import Searcher
    from tda.store.index import IndexStore
    from tda.store.profiles import complete_profiles

    work = Path(args.work) / f"p19-{args.facts}-{args.other_facts}-{args.epochs}"
    times = {}
    t = time.perf_counter()
    bench = work / "bench"
    if not (bench / "queries.jsonl").is_file():
        prepare(common.DATA / "lama-trex", work / "p19",
                      PrepareOptions(relations="P19", facts=args.facts, paraphrases=3))
        prepare(common.DATA / "lama-trex", work / "other",
                        PrepareOptions(relations="P1412,P176,P140,P364", facts=args.other_facts,
                                       paraphrases=3))
        bench.mkdir(parents=True, exist_ok=True)
        seen = set()
        with (bench / "corpus.jsonl").open("w") as out:
            for part in ("p19", "other"):
                for line in (work / part / "corpus.jsonl").read_text().splitlines():
                    if json.loads(line)["id"] not in seen:
                        seen.add(json.loads(line)["id"])
                        out.write(line + "\n")
        (bench / "queries.jsonl").write_text((work / "p19" / "queries.jsonl").read_text())
    times["prepare_s"] = round(time.perf_counter() - t, 1)
    corpus = [json.loads(x) for x in (bench / "corpus.jsonl").read_text().splitlines()]
    queries = read_queries(bench / "queries.jsonl", need_target=True, need_id=True)
    model = work / "model"
    t = time.perf_counter()
    if not (model / "training.json").is_file():
        train_benchmark_model(bench / "corpus.jsonl", model, TrainOptions(epochs=args.epochs))
    times["train_s"] = round(time.perf_counter() - t, 1)
    index = work / "index"
    t = time.perf_counter()
    try:
        IndexStore.open(index)
    except IndexMissing:
        build_index(model, [bench / "corpus.jsonl"], str(index), TrackStarConfig(),
                    IndexOptions(bm25=False), progress=False)
    for name, mode in (("train", "train"), ("mixed", "mixed")):
        if name not in complete_profiles(IndexStore.open(index)):
            build_profile(index, name, bench / "queries.jsonl" if mode == "mixed" else None,
                          PreconditionOptions(mode=mode, workers=1))
    times["index_and_profiles_s"] = round(time.perf_counter() - t, 1)

    relation_of = {}                     # corpus id -> relations of the facts it states
    for rec in corpus:
        relation_of[rec["id"]] = {"P19"} if rec["facts"] and any(
            f in {q.id for q in queries} for f in rec["facts"]) else ({"other"} if rec["facts"]
                                                                    else set())
    from tda.engine import load_model
    m, tok = load_model(model)
    known = knows(m, tok, queries)
    training = json.loads((model / "training.json").read_text())
    result = {"facts": len(queries), "corpus": len(corpus), "k": args.k,
              "fact_accuracy_p19": round(sum(known) / len(known), 3),
              "fact_accuracy_all": training.get("fact_accuracy"), "profiles": {},
              "lambda": IndexStore.open(index).profile("mixed").summary["lambda"]}
    with Searcher(index, SearchOptions(workers=1), load_model=True) as searcher:
        for profile in (None, "train", "mixed"):
            reqs = [dict(prompt=q.prompt, target=q.target, k=100, mode="trackstar",
                         profile=profile) for q in queries]
            from tda.schemas.search import SearchRequest
            resp = searcher.search_many([SearchRequest(**r) for r in reqs])
            other_same, own, mrr, rec = [], [], [], []
            for q, r in zip(queries, resp):
                top = [h.doc_id for h in r.trackstar]
                own_set = set(q.proponents)
                head = top[:args.k]
                other_same.append(sum(1 for d in head if d not in own_set
                                      and "P19" in relation_of.get(d, set())) / args.k)
                own.append(sum(1 for d in head if d in own_set) / args.k)
                mrr.append(reciprocal_rank(top, own_set))
                rec.append(coverage_at(top, own_set, args.k))
            result["profiles"][profile or "none"] = {
                "other_p19_share_top_k": summarize(other_same),
                "own_fact_share_top_k": summarize(own), "mrr": summarize(mrr),
                "coverage_at_k": summarize(rec)}
    p = result["profiles"]
    result["other_p19_share_mixed_over_none"] = round(
        p["mixed"]["other_p19_share_top_k"]["mean"] / p["none"]["other_p19_share_top_k"]["mean"],
        3)
    result["times"] = times
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
