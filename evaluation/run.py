"""`tda eval run`: the fact-tracing table (TrackStar paper, section 5) on one benchmark.

Methods (each a ranked list of training examples per query):
  bm25       BM25 over prompt + target
  graddot    Grad-Dot: projected gradients, no optimizer correction, no unit normalization
  gradcos    Grad-Cos: + unit normalization
  optcos     + optimizer second-moment correction (factored)
  rtrain     + R_train (profile from training vectors)
  trackstar  + mixed R (lambda R_eval + (1 - lambda) R_train from the queries): TrackStar
  exact      TrackStar with the exact (elementwise) optimizer correction
  fused      TrackStar and BM25 fused by reciprocal rank
The given index must be the TrackStar one (factored correction, unit normalized); the ablation
indexes are built next to the report (same model, corpus, projection) and reused on reruns.
``sweep_components`` / ``sweep_mixing`` add TrackStar rows whose mixed R uses another K (a
fraction of d) or another lambda (a factor on lambda / (1 - lambda), the weight of R_eval
against R_train, around the lambda that K = 1.5% of d chooses).

Metrics per method (means over queries, bootstrap 95% intervals), named and defined as in the
paper's released viewer (``evaluation/metrics.py``): MRR (1 / rank of the first ground-truth
proponent in the top 100, else 0), recall@10 (1 when any of the top 10 states the fact: a hit
rate), precision@10 (share of the top 10 that state it), and tda's coverage@10 (share of the
query's proponents in the top 10); against all proponents, against the original Wikipedia
sentences only, and over the facts the model knows. Tail-patch@1 and @10: the change in
log p(target | prompt) (and in p) after one AdamW step, from the final model and optimizer
state, on each of the top-k retrieved examples, averaged; references: the same step on the
ground-truth proponents and on random corpus examples. Breakdowns (``evaluation/breakdown.py``):
by fact frequency bucket, and by sentence class of the top 10 (own fact / another fact of the
same relation / other), with each class's tail-patch.

Outputs in ``out``: ``report.json``, ``report.md``, charts, and ``pairs/METHOD.jsonl``: every
query's top 100 (and, for gradient methods, its 10 lowest-scored opponents) in the format of
the paper's released results (``evaluation/pair_format.py``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tda.errors import EvalError
from tda.evaluation.breakdown import SentenceClasses, by_bucket, class_breakdown
from tda.evaluation.metrics import (correct_flags, coverage_at, precision_at, recall_at,
                                    reciprocal_rank, summarize)
from tda.evaluation.pair_format import PairRecord, frequency_bucket, write_pair_jsonl
from tda.evaluation.queries import knows
from tda.log import logger
from tda.schemas.options import EVAL_METHODS, EvalRunOptions
from tda.schemas.queries import Query, read_queries

log = logger(__name__)

RETRIEVE = 100
OPPONENTS = 10


@dataclass(frozen=True)
class Method:
    """One retrieval method of the table: which index variant, profile and result list."""
    label: str
    variant: str | None        # None: the given index; else an ablation index built aside
    profile: str | None        # None, or a key of the run's profile specs ("train", "mixed")
    lists: str                 # which result list: trackstar | bm25 | fused


METHODS: dict[str, Method] = {
    "bm25": Method("BM25", None, None, "bm25"),
    "graddot": Method("Grad-Dot (no correction, no unit norm)", "graddot", None, "trackstar"),
    "gradcos": Method("Grad-Cos (unit norm)", "gradcos", None, "trackstar"),
    "optcos": Method("+ optimizer correction (factored)", None, None, "trackstar"),
    "rtrain": Method("+ R_train", None, "train", "trackstar"),
    "trackstar": Method("TrackStar (+ mixed R)", None, "mixed", "trackstar"),
    "exact": Method("TrackStar, exact correction", "exact", "mixed", "trackstar"),
    "fused": Method("TrackStar + BM25 (RRF)", None, "mixed", "fused"),
}
assert tuple(METHODS) == EVAL_METHODS      # the option's choices (schemas/options.py)
VARIANTS = {"graddot": {"correction": "none", "unit_normalize": False},
            "gradcos": {"correction": "none", "unit_normalize": True},
            "exact": {"correction": "exact"}}


@dataclass(frozen=True)
class ProfileSpec:
    """A correction profile the run builds: its name in the index and how it is fitted."""

    name: str
    mode: str                  # train | mixed
    components: int = 0        # K (0: 1.5% of d)
    mixing: float = 0.0        # lambda (0: chosen from K)


PROFILE_SPECS: dict[str, ProfileSpec] = {"train": ProfileSpec("eval-train", "train"),
                                         "mixed": ProfileSpec("eval-mixed", "mixed")}


@dataclass
class Ranked:
    """One method's results for one query: document ids best first with their scores, and
    (gradient methods) the lowest-scored documents, lowest first."""

    ids: list[str]
    scores: list[float]
    opponent_ids: list[str] | None = None
    opponent_scores: list[float] | None = None
    extra: dict = field(default_factory=dict)


def odds_scaled(lam: float, factor: float) -> float:
    """lambda' whose odds lambda' / (1 - lambda') are ``factor`` times lambda's."""
    if not 0 < lam < 1 or factor <= 0:
        raise EvalError(f"need 0 < lambda < 1 and factor > 0, got {lam}, {factor}")
    return factor * lam / (1 - lam + factor * lam)


def run_eval(index: str | Path, queries_path: str | Path, out: str | Path,
             options: EvalRunOptions = EvalRunOptions()) -> dict:
    """Build what the methods need, retrieve, score, and write report.{json,md}, charts and
    (``options.pairs``) the per-query results files."""
    from tda.store.index import IndexStore

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = options.method_list() or list(METHODS)
    tail_patch, workers, seed = options.tail_patch, options.workers, options.seed
    tail_patch_queries = options.tail_patch_queries or None
    sweep_components, sweep_mixing = options.component_sweep(), options.mixing_sweep()
    queries = read_queries(queries_path, need_target=True, need_id=True)
    store = IndexStore.open(index)
    cfg = store.manifest.engine.config
    if cfg.correction != "factored" or not cfg.unit_normalize:
        raise EvalError(f"{index}: the given index must be TrackStar's (factored correction, "
                        f"unit norm); it has correction={cfg.correction}, "
                        f"unit_normalize={cfg.unit_normalize}")
    timings: dict[str, float] = {}
    table = {m: METHODS[m] for m in methods}
    specs = dict(PROFILE_SPECS)
    indexes = {None: str(index)}
    for v in sorted({table[m].variant for m in table} - {None}):
        t = time.perf_counter()
        indexes[v] = _variant_index(store, out / "indexes" / v, cfg.replace(**VARIANTS[v]))
        timings[f"index {v}"] = round(time.perf_counter() - t, 1)
    profiles: dict[str, dict] = {}

    def ensure(variant, key):
        t = time.perf_counter()
        info = _ensure_profile(indexes[variant], specs[key], queries_path, workers)
        profiles[f"{key} ({variant or 'main'})"] = info
        k = f"profile {key} ({variant or 'main'})"                 # shared by methods: add up
        timings[k] = round(timings.get(k, 0.0) + time.perf_counter() - t, 1)
        return info

    for m in list(table):
        if table[m].profile:
            ensure(table[m].variant, table[m].profile)
    d = store.manifest.engine.dim
    for frac in sweep_components:
        k = max(1, round(frac * d))
        key = f"mixed-k{k}"
        specs[key] = ProfileSpec(f"eval-mixed-k{k}", "mixed", components=k)
        table[f"sweep-k{k}"] = Method(f"TrackStar, K = {k} ({frac:.1%} of d)", None, key,
                                      "trackstar")
        ensure(None, key)
    if sweep_mixing:
        lam = ensure(None, "mixed")["lambda"]
        for factor in sweep_mixing:
            lam2 = round(odds_scaled(lam, factor), 6)
            key = f"mixed-lam{lam2:g}"
            specs[key] = ProfileSpec(f"eval-mixed-lam{lam2:g}", "mixed", mixing=lam2)
            table[f"sweep-lam{lam2:g}"] = Method(
                f"TrackStar, lambda = {lam2:.3g} ({factor:g}x the odds of {lam:.3g})", None,
                key, "trackstar")
            ensure(None, key)
    t = time.perf_counter()
    ranked = _retrieve(indexes, table, specs, queries, workers)
    timings["retrieval"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    model, tok, patcher = _load_model(store)
    known = knows(model, tok, queries)
    confidence = [math.exp(patcher.target_logprob(q.prompt, q.target)) for q in queries]
    timings["facts known"] = round(time.perf_counter() - t, 1)
    report = {"index": str(index), "queries": str(queries_path), "n_queries": len(queries),
              "facts_known": int(sum(known)), "fact_accuracy": sum(known) / len(queries),
              "metric_definitions": METRIC_DEFINITIONS, "profiles": profiles,
              "methods": {}, "references": {}, "timings_s": timings}
    for m in table:
        report["methods"][m] = {"label": table[m].label,
                                **retrieval_metrics(queries, [r.ids for r in ranked[m]], known)}
    patched: dict = {}
    if tail_patch:
        t = time.perf_counter()
        patched = _tail_patch(patcher, store, queries, ranked, list(table), tail_patch,
                              tail_patch_queries, seed)
        timings["tail-patch"] = round(time.perf_counter() - t, 1)
        for name, values in patched.items():
            target = report["methods"][name] if name in report["methods"] else \
                report["references"].setdefault(name, {})
            target.update(values)
        if "trackstar" in patched:
            report["paired_tail_patch"] = paired_differences(patched, "trackstar")
    report["frequency_buckets"] = _buckets(queries, ranked, patched, table)
    report["sentence_classes"] = _classes(queries, ranked, patched, table, tail_patch or 10, seed)
    if options.pairs:
        t = time.perf_counter()
        texts = _documents_text(store)
        name = options.query_set or Path(queries_path).resolve().parent.name
        for m in table:
            write_pair_jsonl(out / "pairs" / f"{m}.jsonl",
                             pair_records(queries, ranked[m], texts, m, name, known, confidence))
        timings["pairs"] = round(time.perf_counter() - t, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    plot_report(report, out)
    return report


METRIC_DEFINITIONS = {
    "mrr": "1 / rank of the first ground-truth proponent in the top 100, 0 if none (the "
           "paper's MRR; its viewer's mrr_first over a list of 100)",
    "recall10": "1 if any of the top 10 is a ground-truth proponent, else 0 (the paper's "
                "recall@10, a hit rate; demo/metrics.ts in PAIR-code/pretraining-tda)",
    "precision10": "ground-truth proponents among the top 10, / 10 (the paper's precision@10)",
    "coverage10": "share of the query's ground-truth proponents in the top 10 (tda's former "
                  "recall@10)",
    "tail_patch": "change in log p(target | prompt) (dlogp) and in p (dp) after one AdamW step "
                  "on one retrieved example from the final model and optimizer state; @1: the "
                  "top example, @k: mean over the top k"}


# --------------------------------------------------------------------------- metrics
def retrieval_metrics(queries: list[Query], ranked: list[list[str]],
                      known: list[bool] | None = None) -> dict:
    """Per ground truth (``all`` proponents, ``wikipedia`` sentences only, and ``known``: all
    proponents over the facts the model knows), the summaries of MRR, recall@10, precision@10
    and coverage@10 over queries, plus the per-query values of the ``all`` ones."""
    out: dict = {}
    per_query = {}
    sets = [("all", lambda q: q.proponents, range(len(queries))),
            ("wikipedia", lambda q: q.wikipedia_proponents or q.proponents,
             range(len(queries)))]
    if known is not None and any(known):
        sets.append(("known", lambda q: q.proponents, [i for i, k in enumerate(known) if k]))
    for which, get, rows in sets:
        values = {"mrr": [], "recall10": [], "precision10": [], "coverage10": []}
        for i in rows:
            truth, r = set(get(queries[i])), ranked[i]
            values["mrr"].append(reciprocal_rank(r, truth, RETRIEVE))
            values["recall10"].append(recall_at(r, truth, 10))
            values["precision10"].append(precision_at(r, truth, 10))
            values["coverage10"].append(coverage_at(r, truth, 10))
        for metric, v in values.items():
            out[f"{metric}_{which}"] = summarize(v)
        if which == "all":
            per_query = values
    out["per_query"] = {"ids": [q.id for q in queries], **per_query}
    return out


def _buckets(queries, ranked, patched, table) -> dict:
    out = {}
    pos = {q.id: i for i, q in enumerate(queries)}
    for m in table:
        per = {"mrr": [reciprocal_rank(r.ids, set(q.proponents), RETRIEVE)
                       for q, r in zip(queries, ranked[m])],
               "recall10": [recall_at(r.ids, set(q.proponents), 10)
                            for q, r in zip(queries, ranked[m])]}
        if m in patched:
            tp: list = [None] * len(queries)
            for qid, v in patched[m]["tail_patch_per_query_dlogp"].items():
                if v:
                    tp[pos[qid]] = float(np.mean(v))
            per["tail_patch_at_k_dlogp"] = tp
        out[m] = by_bucket(queries, per)
    return out


def _classes(queries, ranked, patched, table, k, seed) -> dict:
    classes = SentenceClasses(queries)
    pos = {q.id: i for i, q in enumerate(queries)}
    out = {}
    for m in table:
        every = class_breakdown(queries, {i: r.ids for i, r in enumerate(ranked[m])}, None,
                                classes, k, seed=seed)
        entry = {"all_queries": every}
        if m in patched:
            per = patched[m]["tail_patch_per_query_dlogp"]
            rows = {pos[qid]: ranked[m][pos[qid]].ids for qid in per}
            deltas = {pos[qid]: v for qid, v in per.items()}
            entry["tail_patched"] = class_breakdown(queries, rows, deltas, classes, k,
                                                    seed=seed)
        out[m] = entry
    return out


def pair_records(queries: list[Query], ranked: list[Ranked], texts: dict[str, str],
                 method: str, query_set: str, known: list[bool] | None = None,
                 confidence: list[float] | None = None):
    """The method's results as release-format records (``pair_format``), one per query."""
    for i, (q, r) in enumerate(zip(queries, ranked)):
        rec = PairRecord(
            example_id=f"trex-{q.id}", query_set=query_set, inputs_plaintext=q.prompt,
            targets_plaintext=q.target, proponents=[texts[d] for d in r.ids],
            proponent_ids=list(r.ids), proponent_scores=[float(s) for s in r.scores],
            fact_id=q.extra.get("uuid", q.id), relation=q.relation or None,
            proponent_correct=correct_flags(r.ids, q.proponents) if q.proponents else None,
            has_trex_sentence=bool(q.wikipedia_proponents),
            model_confidence=None if confidence is None else float(confidence[i]),
            fact_frequency=len(q.proponents),
            frequency_bucket=frequency_bucket(len(q.proponents)), method=method,
            ground_truth_ids=list(q.proponents),
            model_knows=None if known is None else bool(known[i]))
        if r.opponent_ids is not None:
            rec.opponents = [texts[d] for d in r.opponent_ids]
            rec.opponent_ids = list(r.opponent_ids)
            rec.opponent_scores = [float(s) for s in r.opponent_scores]
        yield rec


# --------------------------------------------------------------------------- building
def _variant_index(store, path: Path, config) -> str:
    """An ablation index: the main index's model, corpus and build options (or, for an index
    that did not record them, its layout), another engine config, no BM25."""
    from dataclasses import replace

    from tda.indexer.build import build_index
    from tda.schemas.options import IndexOptions
    m = store.manifest
    options = m.build.index if m.build is not None else \
        IndexOptions(shard_size=m.layout.shard_size, storage_dtype=m.layout.storage_dtype)
    summary = build_index(m.model.path, [f.name for f in m.corpus.files], str(path),
                          config, replace(options, bm25=False), m.corpus.options,
                          progress=False)
    if summary.shards_written:      # a rerun finds it complete and says nothing
        log.info(f"ablation index {path.name}: correction={config.correction}, "
                 f"unit_normalize={config.unit_normalize}, {summary.shards_written} shards "
                 f"written")
    return str(path)


def _ensure_profile(index: str, spec: ProfileSpec, queries_path, workers: int) -> dict:
    """Build the profile unless it is complete; returns its fitted settings (lambda, K)."""
    from tda.indexer.precondition import build_profile
    from tda.schemas.options import PreconditionOptions
    from tda.store.index import IndexStore
    from tda.store.profiles import complete_profiles
    if spec.name not in complete_profiles(IndexStore.open(index)):
        log.info(f"profile {spec.name} ({spec.mode}) on {index}")
        build_profile(index, spec.name, queries_path if spec.mode == "mixed" else None,
                      PreconditionOptions(mode=spec.mode, components=spec.components,
                                          mixing=spec.mixing, workers=workers))
    info = IndexStore.open(index).profile(spec.name).transform_info or {}
    return {k: info.get(k) for k in ("lambda", "components", "mu_K_train", "mu_K_eval")}


# --------------------------------------------------------------------------- retrieval
def _fold(pairs) -> tuple[list[str], list[float]]:
    """(document id, score) pairs in rank order -> each document once, at its first (best)
    chunk's rank and score."""
    ids, scores, seen = [], [], set()
    for doc, score in pairs:
        if doc not in seen:
            seen.add(doc)
            ids.append(doc)
            scores.append(float(score))
    return ids, scores


def _retrieve(indexes: dict, table: dict[str, Method], specs: dict[str, ProfileSpec],
              queries: list[Query], workers: int) -> dict[str, list[Ranked]]:
    """Per method, per query: the top RETRIEVE documents with scores (chunks folded into
    their document at its best rank) and, for gradient lists, the OPPONENTS lowest."""
    from tda.schemas.options import SearchOptions
    from tda.schemas.search import SearchRequest
    from tda.searcher.searcher import Searcher
    ranked: dict[str, list[Ranked]] = {}
    by_index: dict = {}
    for m, spec in table.items():
        by_index.setdefault(spec.variant, []).append(m)
    for variant, names in by_index.items():
        log.info(f"retrieving for {', '.join(names)}")
        with Searcher(indexes[variant], SearchOptions(workers=workers)) as searcher:
            for key in dict.fromkeys(table[m].profile for m in names):
                group = [m for m in names if table[m].profile == key]
                profile = specs[key].name if key else None
                wants_lexical = any(table[m].lists != "trackstar" for m in group)
                mode = "both" if wants_lexical else "trackstar"
                reqs = [SearchRequest(prompt=q.prompt, target=q.target, k=RETRIEVE, mode=mode,
                                      profile=profile) for q in queries]
                responses = searcher.search_many(reqs)
                opponents = None
                if any(table[m].lists == "trackstar" for m in group):
                    opponents = _opponents(searcher, queries, profile)
                for m in group:
                    rows = []
                    for i, resp in enumerate(responses):
                        ids, scores = _fold((h.doc_id, h.score)
                                            for h in getattr(resp, table[m].lists))
                        r = Ranked(ids, scores)
                        if table[m].lists == "trackstar":
                            r.opponent_ids, r.opponent_scores = opponents[i]
                        rows.append(r)
                    ranked[m] = rows
    return ranked


def _opponents(searcher, queries: list[Query], profile: str | None
               ) -> list[tuple[list[str], list[float]]]:
    """Per query: the OPPONENTS documents with the lowest scores (``Searcher.opponents``,
    chunks folded into their document at its lowest score), lowest first."""
    from tda.schemas.search import SearchRequest
    reqs = [SearchRequest(prompt=q.prompt, target=q.target, mode="trackstar", profile=profile)
            for q in queries]
    out = []
    for hits in searcher.opponents(reqs, OPPONENTS * 4):   # chunks fold into fewer docs
        ids, scores = _fold((h.doc_id, h.score) for h in hits)
        out.append((ids[:OPPONENTS], scores[:OPPONENTS]))
    return out


def _load_model(store):
    """The index's model, tokenizer and a TailPatcher on them (with its optimizer state)."""
    from tda.evaluation.tailpatch import TailPatcher
    m = store.manifest
    patcher = TailPatcher.from_pretrained(m.model.path, max_len=m.engine.config.max_len)
    return patcher.model, patcher.tokenizer, patcher


# --------------------------------------------------------------------------- tail-patch
def _tail_patch(patcher, store, queries, ranked, methods, k, n_queries, seed) -> dict:
    texts = _documents_text(store)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(queries))
    chosen = sorted(order[:n_queries] if n_queries else order)
    all_ids = sorted(texts)
    results: dict[str, dict] = {}
    lists = {name: {i: ranked[name][i].ids[:k] for i in chosen} for name in methods}
    lists["ground_truth"] = {i: list(queries[i].proponents)[:k] for i in chosen}
    lists["random"] = {i: [all_ids[j] for j in rng.choice(len(all_ids), k, replace=False)]
                       for i in chosen}
    for name, per_query in lists.items():
        log.info(f"tail-patch: {name} ({len(chosen)} queries x top {k})")
        d_logp, d_p = [], []
        for i, ids in per_query.items():
            q = queries[i]
            deltas = patcher.deltas(q.prompt, q.target, [texts[d] for d in ids])
            d_p.append([x[0] for x in deltas])
            d_logp.append([x[1] for x in deltas])
        results[name] = {
            "tail_patch_per_query_dlogp": {queries[i].id: v for i, v in
                                           zip(per_query, d_logp)},
            "tail_patch_at_1_dlogp": summarize([v[0] for v in d_logp if v]),
            "tail_patch_at_k_dlogp": summarize([float(np.mean(v)) for v in d_logp if v]),
            "tail_patch_at_1_dp": summarize([v[0] for v in d_p if v]),
            "tail_patch_at_k_dp": summarize([float(np.mean(v)) for v in d_p if v]),
            "tail_patch_k": k, "tail_patch_queries": len(chosen)}
    return results


def paired_differences(patched: dict, base: str) -> dict:
    """Per other list: ``base`` minus it on the same queries, tail-patch@1 and @k (Δlog p),
    with bootstrap intervals over queries (pairing removes the spread between queries, which
    dominates the unpaired intervals)."""
    mine = patched[base]["tail_patch_per_query_dlogp"]
    out = {}
    for name, values in patched.items():
        theirs = values["tail_patch_per_query_dlogp"]
        both = [q for q in mine if mine[q] and theirs.get(q)]
        if name == base or not both:
            continue
        out[name] = {"at_1": summarize([mine[q][0] - theirs[q][0] for q in both]),
                     "at_k": summarize([float(np.mean(mine[q]) - np.mean(theirs[q]))
                                        for q in both])}
    return out


def _documents_text(store) -> dict[str, str]:
    """Document id -> the text of its first example (the whole document when not chunked)."""
    out: dict[str, str] = {}
    for s in sorted(store.complete_shards()):
        data = store.read_shard(s, ("doc_ids", "text"))
        for d, t in zip(data["doc_ids"].tolist(), data["text"].tolist()):
            out.setdefault(d, t)
    return out


# --------------------------------------------------------------------------- output
def _fmt(s: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not s:
        return "—"
    return (f"{s['mean'] * scale:.{digits}f} [{s['ci_low'] * scale:.{digits}f}, "
            f"{s['ci_high'] * scale:.{digits}f}]")


BUCKET_LABELS = {0: "1", 1: "2-3", 2: "4-7", 3: "8-15", 4: "16-31", 5: "32+"}
CLASS_LABELS = {"own": "own fact", "same_relation": "same relation, other fact",
                "other": "other"}


def render_markdown(report: dict) -> str:
    """The report as the Markdown of report.md (the method table, known facts, paired
    tail-patch differences, breakdowns)."""
    methods = report["methods"]
    rows = ["| method | MRR | recall@10 | precision@10 | coverage@10 | MRR (Wikipedia) | "
            "recall@10 (Wikipedia) | tail-patch@1 Δlog p | tail-patch@10 Δlog p | "
            "tail-patch@10 Δp |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in methods.items():
        rows.append(f"| {r['label']} | {_fmt(r['mrr_all'])} | {_fmt(r['recall10_all'])} | "
                    f"{_fmt(r['precision10_all'])} | {_fmt(r['coverage10_all'])} | "
                    f"{_fmt(r['mrr_wikipedia'])} | {_fmt(r['recall10_wikipedia'])} | "
                    f"{_fmt(r.get('tail_patch_at_1_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dp'))} |")
    for name, r in report["references"].items():
        rows.append(f"| reference: {name.replace('_', ' ')} | — | — | — | — | — | — | "
                    f"{_fmt(r.get('tail_patch_at_1_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dp'))} |")
    head = (f"# Fact tracing: {report['n_queries']} queries\n\nIndex `{report['index']}`, "
            f"queries `{report['queries']}`. The model knows {report['facts_known']} of "
            f"{report['n_queries']} facts ({report['fact_accuracy']:.1%}: the target is its "
            "greedy continuation). Means over queries with bootstrap 95% intervals. Metrics as "
            "the TrackStar paper's released viewer defines them (PAIR-code/pretraining-tda, "
            "demo/metrics.ts): MRR, 1 / rank of the first ground-truth proponent within the "
            "top 100; recall@10, 1 when any of the top 10 states the fact (a hit rate); "
            "precision@10, the share of the top 10 that state it; and tda's coverage@10, the "
            "share of the query's proponents in the top 10. Tail-patch: the change in "
            "log p(target | prompt) (Δlog p) or p (Δp) after one AdamW step on a retrieved "
            "example (@1: the top one; @10: mean over the top 10).\n\n")
    known = ""
    if any("mrr_known" in r for r in methods.values()):
        lines = [f"| {r['label']} | {_fmt(r.get('mrr_known'))} | {_fmt(r.get('recall10_known'))}"
                 f" | {_fmt(r.get('precision10_known'))} |" for r in methods.values()]
        known = (f"\n\nOver the {report['facts_known']} facts the model knows:\n\n"
                 "| method | MRR | recall@10 | precision@10 |\n|---|---|---|---|\n"
                 + "\n".join(lines))
    paired = ""
    if report.get("paired_tail_patch"):
        labels = {n: r["label"] for n, r in methods.items()}
        lines = [f"| {labels.get(n, 'reference: ' + n.replace('_', ' '))} | {_fmt(d['at_1'])} | "
                 f"{_fmt(d['at_k'])} |" for n, d in report["paired_tail_patch"].items()]
        paired = ("\n\nTrackStar's tail-patch minus each other list's, on the same queries "
                  "(paired; > 0: TrackStar's examples move the prediction more):\n\n"
                  "| list | Δ tail-patch@1 | Δ tail-patch@10 |\n|---|---|---|\n" + "\n".join(lines))
    buckets = _render_buckets(report)
    classes = _render_classes(report)
    times = "\n".join(f"- {k}: {v} s" for k, v in report["timings_s"].items())
    return (head + "\n".join(rows) + known + paired + buckets + classes
            + f"\n\nTimes:\n{times}\n")


def _render_buckets(report: dict) -> str:
    fb = report.get("frequency_buckets") or {}
    if not fb:
        return ""
    names = [n for n in report["methods"] if n in fb]
    all_buckets = sorted({int(b) for n in names for b in fb[n]})
    out = ["\n\nBy fact frequency (texts in the corpus that state the fact; buckets as the "
           "paper's 0-5):"]
    for metric, title in (("mrr", "MRR"), ("tail_patch_at_k_dlogp", "tail-patch@10 Δlog p")):
        if not any(metric in fb[n].get(b, fb[n].get(str(b), {})) for n in names
                   for b in all_buckets):
            continue
        head = "| bucket (proponents) | queries | " + " | ".join(
            report["methods"][n]["label"] for n in names) + " |"
        lines = [f"\n\n{title}:\n", head, "|---|---|" + "---|" * len(names)]
        for b in all_buckets:
            cell = [fb[n].get(b, fb[n].get(str(b), {})) for n in names]
            nq = next((c["queries"]["n"] for c in cell if c), 0)
            lines.append(f"| {b} ({BUCKET_LABELS[b]}) | {nq} | " + " | ".join(
                _fmt(c.get(metric)) for c in cell) + " |")
        out.append("\n".join(lines))
    return "".join(out)


def _render_classes(report: dict) -> str:
    sc = report.get("sentence_classes") or {}
    if not sc:
        return ""
    lines = ["\n\nWhat each method's top 10 holds, by sentence class (share of the top-10 "
             "slots over all queries; tail-patch Δlog p of the class's sentences over the "
             "tail-patched queries; intervals resample queries):\n",
             "| method | " + " | ".join(f"share: {CLASS_LABELS[c]}" for c in CLASS_LABELS)
             + " | " + " | ".join(f"tail-patch: {CLASS_LABELS[c]}" for c in CLASS_LABELS)
             + " |", "|---|" + "---|" * (2 * len(CLASS_LABELS))]
    for n, entry in sc.items():
        every, patched = entry["all_queries"], entry.get("tail_patched", {})
        lines.append(f"| {report['methods'][n]['label']} | "
                     + " | ".join(_fmt(every[c].get("share")) for c in CLASS_LABELS) + " | "
                     + " | ".join(_fmt(patched.get(c, {}).get("tail_patch"))
                                  for c in CLASS_LABELS) + " |")
    return "\n".join(lines)


def plot_report(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    labels = [report["methods"][n]["label"] for n in names]
    for metric, title, fname in (("mrr_all", "MRR (all proponents)", "mrr.png"),
                                 ("recall10_all", "recall@10 (hit rate, all proponents)",
                                  "recall10.png"),
                                 ("tail_patch_at_k_dlogp", "tail-patch@10 (Δ log p)",
                                  "tailpatch.png")):
        rows = [(lab, report["methods"][n].get(metric)) for n, lab in zip(names, labels)]
        if metric.startswith("tail"):
            rows += [(f"ref: {n}", r.get(metric)) for n, r in report["references"].items()]
        rows = [(lab, s) for lab, s in rows if s]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
        means = [s["mean"] for _, s in rows]
        err = [[s["mean"] - s["ci_low"] for _, s in rows], [s["ci_high"] - s["mean"]
                                                            for _, s in rows]]
        ax.barh(range(len(rows)), means, xerr=err, color="#4477aa", capsize=3)
        ax.set_yticks(range(len(rows)), [lab for lab, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
