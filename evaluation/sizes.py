"""`tda eval sizes`: one benchmark, several model sizes: the table and chart of how attribution
(MRR, recall@10) and influence (tail-patch) change with the model's size.

Reads each size's ``report.json`` (from ``tda eval run``) and the ``training.json`` of the model
its index was built from, and writes ``sizes.json``, ``sizes.md`` and ``sizes.png`` (TrackStar's
and BM25's MRR and tail-patch@10 against parameters, log scale). The reports must cover the
same queries: the change from the smallest to the largest model is then a paired difference
over queries, with a bootstrap interval (``summarize`` of the per-query differences).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tda.errors import EvalError
from tda.evaluation.metrics import summarize

METRICS = (("mrr_all", "MRR"), ("recall10_all", "recall@10"),
           ("precision10_all", "precision@10"), ("tail_patch_at_k_dlogp", "tail-patch@10 Δlog p"))
PER_QUERY = {"mrr_all": "mrr", "recall10_all": "recall10", "precision10_all": "precision10"}


def load_size(report_dir: str | Path) -> dict:
    """One size: its report and its model's training summary (without the per-step losses)."""
    report_dir = Path(report_dir)
    file = report_dir / "report.json"
    if not file.is_file():
        raise EvalError(f"{file}: no report (run `tda eval run --out {report_dir}`)")
    report = json.loads(file.read_text())
    from tda.evaluation.train import last_epoch_loss
    from tda.store.index import IndexStore
    model = Path(IndexStore.open(report["index"]).manifest.model.path)
    training = json.loads((model / "training.json").read_text()) \
        if (model / "training.json").is_file() else {}
    losses = training.pop("losses", None)
    if losses and training.get("epochs"):
        training["last_epoch_loss"] = last_epoch_loss(losses, training["epochs"])
    return {"report_dir": str(report_dir), "model": str(model), "training": training,
            "report": report}


def _per_query(report: dict, method: str, metric: str) -> dict[str, float] | None:
    m = report["methods"].get(method, {})
    if metric in PER_QUERY and "per_query" in m:
        pq = m["per_query"]
        return dict(zip(pq["ids"], pq[PER_QUERY[metric]]))
    if metric == "tail_patch_at_k_dlogp" and "tail_patch_per_query_dlogp" in m:
        return {q: float(np.mean(v)) for q, v in m["tail_patch_per_query_dlogp"].items() if v}
    return None


def compare_sizes(report_dirs: list[str | Path], out: str | Path,
                  methods: tuple[str, ...] = ("bm25", "trackstar")) -> dict:
    """Write sizes.{json,md,png} for the given reports (any order: sorted by parameters)."""
    sizes = sorted((load_size(d) for d in report_dirs),
                   key=lambda s: s["training"].get("parameters", 0))
    if len(sizes) < 2:
        raise EvalError("need at least two reports (model sizes) to compare")
    ids = [set(s["report"]["methods"][next(iter(s["report"]["methods"]))]
               .get("per_query", {}).get("ids", [])) for s in sizes]
    if any(i != ids[0] for i in ids):
        raise EvalError("the reports cover different queries: run every size on the same "
                         "benchmark")
    rows = []
    for s in sizes:
        t, r = s["training"], s["report"]
        rows.append({
            "model": s["model"], "report": s["report_dir"], "preset": t.get("preset"),
            "parameters": t.get("parameters"), "epochs": t.get("epochs"), "lr": t.get("lr"),
            "tokens_seen": t.get("tokens"), "train_seconds": t.get("train_seconds"),
            "train_cpu_seconds": t.get("train_cpu_seconds"),
            "tokens_per_s": t.get("tokens_per_s"), "final_loss": t.get("final_loss"),
            "last_epoch_loss": t.get("last_epoch_loss"),
            "facts_known": r.get("facts_known"), "fact_accuracy": r.get("fact_accuracy"),
            "methods": {name: {k: m.get(k) for k, _ in METRICS + (("mrr_known", ""),
                                                                 ("recall10_known", ""))}
                        | {"label": m["label"]}
                        for name, m in r["methods"].items()},
            "references": r.get("references", {}), "timings_s": r.get("timings_s", {})})
    changes = {}
    first, last = sizes[0]["report"], sizes[-1]["report"]
    for name in methods:
        for metric, _ in METRICS:
            a, b = _per_query(first, name, metric), _per_query(last, name, metric)
            if a and b:
                both = sorted(set(a) & set(b))
                changes.setdefault(name, {})[metric] = summarize([b[q] - a[q] for q in both])
    gaps = {}
    for s, row in zip(sizes, rows):         # BM25 minus TrackStar, paired over queries
        a = _per_query(s["report"], "bm25", "mrr_all")
        b = _per_query(s["report"], "trackstar", "mrr_all")
        if a and b:
            gaps[row["preset"] or row["parameters"]] = summarize([a[q] - b[q] for q in a])
    result = {"sizes": rows, "largest_minus_smallest": changes,
              "bm25_minus_trackstar_mrr": gaps}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sizes.json").write_text(json.dumps(result, indent=1))
    (out / "sizes.md").write_text(render(result))
    plot(result, out / "sizes.png", methods)
    return result


def _fmt(s) -> str:
    if not s:
        return "—"
    return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def render(result: dict) -> str:
    rows = result["sizes"]
    head = ["| | " + " | ".join(f"{r['preset']} ({r['parameters'] / 1e6:.2f}M)" for r in rows)
            + " |", "|---|" + "---|" * len(rows)]
    facts = [("epochs", lambda r: str(r["epochs"])),
             ("peak learning rate", lambda r: f"{r['lr']:g}"),
             ("tokens seen", lambda r: f"{r['tokens_seen']:,}"),
             ("training wall time", lambda r: f"{r['train_seconds'] / 60:.1f} min"),
             ("training CPU time", lambda r: f"{r['train_cpu_seconds'] / 60:.1f} min"),
             ("tokens/s (wall)", lambda r: f"{r['tokens_per_s']:,.0f}"),
             ("mean loss, last epoch", lambda r: f"{r['last_epoch_loss']:.3f}"
              if r.get("last_epoch_loss") is not None else "—"),
             ("facts known", lambda r: f"{r['facts_known']} ({r['fact_accuracy']:.1%})")]
    lines = head + [f"| {name} | " + " | ".join(get(r) for r in rows) + " |"
                    for name, get in facts]
    names = list(rows[0]["methods"])
    for metric, title in METRICS:
        lines.append(f"| **{title}** |" + " |" * len(rows))
        for n in names:
            cells = [_fmt(r["methods"].get(n, {}).get(metric)) for r in rows]
            if any(c != "—" for c in cells):
                lines.append(f"| {rows[0]['methods'][n]['label']} | " + " | ".join(cells) + " |")
        if metric.startswith("tail"):
            for ref in rows[0]["references"]:
                cells = [_fmt(r["references"].get(ref, {}).get(metric)) for r in rows]
                lines.append(f"| reference: {ref.replace('_', ' ')} | " + " | ".join(cells)
                             + " |")
    out = "\n".join(lines)
    if result["largest_minus_smallest"]:
        out += ("\n\nLargest minus smallest model, paired over the same queries:\n\n"
                "| method | " + " | ".join(t for _, t in METRICS) + " |\n|---|"
                + "---|" * len(METRICS) + "\n")
        for n, d in result["largest_minus_smallest"].items():
            out += f"| {rows[0]['methods'][n]['label']} | " + " | ".join(
                _fmt(d.get(m)) for m, _ in METRICS) + " |\n"
    if result["bm25_minus_trackstar_mrr"]:
        out += ("\nBM25's MRR minus TrackStar's, paired over queries: " + "; ".join(
            f"{k}: {_fmt(v)}" for k, v in result["bm25_minus_trackstar_mrr"].items()) + ".\n")
    return out + "\n"


def plot(result: dict, path: Path, methods: tuple[str, ...]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["sizes"]
    x = [r["parameters"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (metric, title) in zip(axes, (("mrr_all", "MRR (attribution)"),
                                          ("tail_patch_at_k_dlogp",
                                           "tail-patch@10, Δlog p (influence)"))):
        for name, style in zip(methods, ("s--", "o-", "^-.", "d:")):
            stats = [r["methods"].get(name, {}).get(metric) for r in rows]
            if not all(stats):
                continue
            mean = [s["mean"] for s in stats]
            err = [[s["mean"] - s["ci_low"] for s in stats],
                   [s["ci_high"] - s["mean"] for s in stats]]
            ax.errorbar(x, mean, yerr=err, fmt=style, capsize=3,
                        label=rows[0]["methods"][name]["label"])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(x, [f"{p / 1e6:.2f}M" for p in x])
        ax.set_xlabel("parameters")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
