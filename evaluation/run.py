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

Metrics per method (means over queries with bootstrap 95% intervals): MRR (1/rank of the first
ground-truth proponent, 0 if none in the top 100), recall@10 (share of the query's proponents
in the top 10), both against all proponents and against the original Wikipedia sentences only;
tail-patch@1 and @10: the change in log p(target | prompt) (and in p) after one AdamW step, from
the final model and optimizer state, on each of the top-k retrieved examples, averaged. The
references are the same step on the ground-truth proponents and on random corpus examples.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tda.errors import EvalError
from tda.evaluation.metrics import recall_at, reciprocal_rank, summarize, to_documents
from tda.log import logger
from tda.schemas.options import EVAL_METHODS, EvalRunOptions
from tda.schemas.queries import Query, read_queries

log = logger(__name__)

RETRIEVE = 100


@dataclass(frozen=True)
class Method:
    """One retrieval method of the table: which index variant, profile and result list."""
    label: str
    variant: str | None        # None: the given index; else an ablation index built aside
    profile: str | None        # None, "train" or "mixed"
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
PROFILE_NAMES = {"train": "eval-train", "mixed": "eval-mixed"}


def run_eval(index: str | Path, queries_path: str | Path, out: str | Path,
             options: EvalRunOptions = EvalRunOptions()) -> dict:
    """Build what the methods need, retrieve, score, and write report.{json,md} and charts."""
    from tda.store.index import IndexStore

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = options.method_list() or list(METHODS)
    tail_patch, workers, seed = options.tail_patch, options.workers, options.seed
    tail_patch_queries = options.tail_patch_queries or None
    queries = read_queries(queries_path, need_target=True, need_id=True)
    store = IndexStore.open(index)
    cfg = store.manifest.engine.config
    if cfg.correction != "factored" or not cfg.unit_normalize:
        raise EvalError(f"{index}: the given index must be TrackStar's (factored correction, "
                        f"unit norm); it has correction={cfg.correction}, "
                        f"unit_normalize={cfg.unit_normalize}")
    timings: dict[str, float] = {}
    indexes = {None: str(index)}
    for v in sorted({METHODS[m].variant for m in methods} - {None}):
        t = time.perf_counter()
        indexes[v] = _variant_index(store, out / "indexes" / v, cfg.replace(**VARIANTS[v]))
        timings[f"index {v}"] = round(time.perf_counter() - t, 1)
    for m in methods:
        spec = METHODS[m]
        if spec.profile:
            t = time.perf_counter()
            _ensure_profile(indexes[spec.variant], spec.profile, queries_path, workers)
            key = f"profile {spec.profile} ({spec.variant or 'main'})"   # shared by methods:
            timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t, 1)  # add up
    t = time.perf_counter()
    ranked = _retrieve(indexes, methods, queries, workers)
    timings["retrieval"] = round(time.perf_counter() - t, 1)
    report = {"index": str(index), "queries": str(queries_path), "n_queries": len(queries),
              "methods": {}, "references": {}, "timings_s": timings}
    for m in methods:
        report["methods"][m] = {"label": METHODS[m].label, **_retrieval_metrics(queries,
                                                                                ranked[m])}
    if tail_patch:
        t = time.perf_counter()
        patched = _tail_patch(store, queries, ranked, methods, tail_patch, tail_patch_queries,
                              seed)
        timings["tail-patch"] = round(time.perf_counter() - t, 1)
        for name, values in patched.items():
            target = report["methods"][name] if name in report["methods"] else \
                report["references"].setdefault(name, {})
            target.update(values)
        if "trackstar" in patched:
            report["paired_tail_patch"] = paired_differences(patched, "trackstar")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    plot_report(report, out)
    return report


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


def _ensure_profile(index: str, mode: str, queries_path, workers: int) -> None:
    from tda.indexer.precondition import build_profile
    from tda.schemas.options import PreconditionOptions
    from tda.store.index import IndexStore
    from tda.store.profiles import complete_profiles
    name = PROFILE_NAMES[mode]
    if name in complete_profiles(IndexStore.open(index)):
        return
    log.info(f"profile {name} ({mode}) on {index}")
    build_profile(index, name, queries_path if mode == "mixed" else None,
                  PreconditionOptions(mode=mode, workers=workers))


# --------------------------------------------------------------------------- retrieval
def _retrieve(indexes: dict, methods: list[str], queries: list[Query],
              workers: int) -> dict[str, list[list[str]]]:
    """Per method, per query: retrieved document ids, best first (chunks folded into their
    document at its best rank)."""
    from tda.schemas.options import SearchOptions
    from tda.schemas.search import SearchRequest
    from tda.searcher.searcher import Searcher
    ranked: dict[str, list[list[str]]] = {}
    by_index: dict = {}
    for m in methods:
        by_index.setdefault(METHODS[m].variant, []).append(m)
    for variant, names in by_index.items():
        log.info(f"retrieving for {', '.join(names)}")
        with Searcher(indexes[variant], SearchOptions(workers=workers)) as searcher:
            for profile in dict.fromkeys(METHODS[m].profile for m in names):
                group = [m for m in names if METHODS[m].profile == profile]
                wants_lexical = any(METHODS[m].lists != "trackstar" for m in group)
                mode = "both" if wants_lexical else "trackstar"
                reqs = [SearchRequest(prompt=q.prompt, target=q.target, k=RETRIEVE, mode=mode,
                                      profile=PROFILE_NAMES.get(profile)) for q in queries]
                responses = searcher.search_many(reqs)
                for m in group:
                    lists = [getattr(r, METHODS[m].lists) for r in responses]
                    ranked[m] = [to_documents([h.id for h in hits], {h.id: h.doc_id for h in hits})
                                 for hits in lists]
    return ranked


def _retrieval_metrics(queries: list[Query], ranked: list[list[str]]) -> dict:
    out = {}
    for which, get in (("all", lambda q: q.proponents),
                       ("wikipedia", lambda q: q.wikipedia_proponents or q.proponents)):
        mrr = [reciprocal_rank(r, set(get(q)), RETRIEVE) for q, r in zip(queries, ranked)]
        rec = [recall_at(r, set(get(q)), 10) for q, r in zip(queries, ranked)]
        out[f"mrr_{which}"] = summarize(mrr)
        out[f"recall10_{which}"] = summarize(rec)
    return out


# --------------------------------------------------------------------------- tail-patch
def _tail_patch(store, queries, ranked, methods, k, n_queries, seed) -> dict:
    from tda.evaluation.tailpatch import TailPatcher
    m = store.manifest
    patcher = TailPatcher.from_pretrained(m.model.path, max_len=m.engine.config.max_len)
    texts = _documents_text(store)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(queries))
    chosen = sorted(order[:n_queries] if n_queries else order)
    all_ids = sorted(texts)
    results: dict[str, dict] = {}
    lists = {name: {i: ranked[name][i][:k] for i in chosen} for name in methods}
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


def render_markdown(report: dict) -> str:
    """The report as the Markdown table of report.md."""
    rows = ["| method | MRR | recall@10 | MRR (Wikipedia) | recall@10 (Wikipedia) | "
            "tail-patch@1 Δlog p | tail-patch@10 Δlog p |",
            "|---|---|---|---|---|---|---|"]
    for name, r in report["methods"].items():
        rows.append(f"| {r['label']} | {_fmt(r['mrr_all'])} | {_fmt(r['recall10_all'])} | "
                    f"{_fmt(r['mrr_wikipedia'])} | {_fmt(r['recall10_wikipedia'])} | "
                    f"{_fmt(r.get('tail_patch_at_1_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dlogp'))} |")
    for name, r in report["references"].items():
        rows.append(f"| reference: {name.replace('_', ' ')} | — | — | — | — | "
                    f"{_fmt(r.get('tail_patch_at_1_dlogp'))} | "
                    f"{_fmt(r.get('tail_patch_at_k_dlogp'))} |")
    head = (f"# Fact tracing: {report['n_queries']} queries\n\nIndex `{report['index']}`, "
            f"queries `{report['queries']}`. Means over queries with bootstrap 95% intervals. "
            "MRR counts the first ground-truth proponent within the top 100; recall@10 is the "
            "share of a query's proponents in the top 10; tail-patch is the change in "
            "log p(target | prompt) after one AdamW step on a retrieved example (@1: the top "
            "one; @10: mean over the top 10).\n\n")
    paired = ""
    if report.get("paired_tail_patch"):
        labels = {n: r["label"] for n, r in report["methods"].items()}
        lines = [f"| {labels.get(n, 'reference: ' + n.replace('_', ' '))} | {_fmt(d['at_1'])} | "
                 f"{_fmt(d['at_k'])} |" for n, d in report["paired_tail_patch"].items()]
        paired = ("\n\nTrackStar's tail-patch minus each other list's, on the same queries "
                  "(paired; > 0: TrackStar's examples move the prediction more):\n\n"
                  "| list | Δ tail-patch@1 | Δ tail-patch@10 |\n|---|---|---|\n" + "\n".join(lines))
    times = "\n".join(f"- {k}: {v} s" for k, v in report["timings_s"].items())
    return head + "\n".join(rows) + paired + f"\n\nTimes:\n{times}\n"


def plot_report(report: dict, out: Path) -> None:
    """Bar charts (mrr.png, recall10.png, tailpatch.png) with bootstrap intervals into ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    labels = [report["methods"][n]["label"] for n in names]
    for metric, title, fname in (("mrr_all", "MRR (all proponents)", "mrr.png"),
                                 ("recall10_all", "recall@10 (all proponents)", "recall10.png"),
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
