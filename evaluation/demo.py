"""`tda demo`: the whole loop on a small real sample, in a few minutes on a laptop CPU.

Trains a tiny GPT-2 on the shipped sample of LAMA T-REx facts (evaluation/demo_data, with its
license note), indexes the sample with TrackStar and BM25, fits the mixed correction from the
sample's queries, and shows three attributions side by side. Every step is cached in the work
directory (keyed by the data and the settings), so a second run only searches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from tda.errors import EvalError
from tda.schemas.options import DemoOptions

DATA = Path(__file__).resolve().parent / "demo_data"


def cache_key(settings: DemoOptions, corpus: Path) -> str:
    """12 hex digits of sha256 over the corpus and the settings: the cache's name."""
    h = hashlib.sha256(corpus.read_bytes())
    h.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:12]


def run_demo(work: Path, settings: DemoOptions = DemoOptions(), console=None,
             data: Path = DATA) -> dict:
    """Train, index, precondition (each cached) and print three attributions on ``console``
    (default: stdout). Returns what was shown (for tests)."""
    from rich.console import Console

    from tda.engine import load_model
    from tda.evaluation.queries import knows
    from tda.schemas.queries import read_queries
    console = console or Console()
    corpus, queries_path = data / "corpus.jsonl", data / "queries.jsonl"
    if not corpus.is_file():
        raise EvalError(f"{corpus}: the demo's sample data is missing")
    key = cache_key(settings, corpus)
    model_dir, index_dir = work / f"model-{key}", work / f"index-{key}"
    timings = {}
    started = time.perf_counter()
    if not (model_dir / "training.json").is_file():
        console.print(f"[bold]1/3[/] training a tiny GPT-2 on {_count(corpus)} sample texts "
                      f"({settings.epochs} epochs) -> {model_dir}")
        _train(corpus, queries_path, model_dir, settings, console)
    else:
        console.print(f"[bold]1/3[/] model cached: {model_dir}")
    timings["train_s"] = round(time.perf_counter() - started, 1)
    t = time.perf_counter()
    _index(model_dir, corpus, queries_path, index_dir, settings, console)
    timings["index_s"] = round(time.perf_counter() - t, 1)
    training = json.loads((model_dir / "training.json").read_text())
    console.print(f"model knows {training['facts_known']} of {training['queries']} sample facts "
                  f"({training['fact_accuracy']:.0%}: target = its greedy continuation)")
    t = time.perf_counter()
    queries = read_queries(queries_path, need_target=True, need_id=True)
    model, tok = load_model(model_dir)
    known = knows(model, tok, queries)
    picks = _pick(queries, known, settings.examples)
    from tda.searcher.searcher import Searcher
    shown = []
    with Searcher(index_dir) as searcher:
        for q in picks:
            resp = searcher.search(q.prompt, q.target, k=settings.k, mode="both",
                                   profile="demo")
            _render(console, q, resp)
            shown.append({"query": q.id, "prompt": q.prompt, "target": q.target,
                          "trackstar": [h.doc_id for h in resp.trackstar],
                          "bm25": [h.doc_id for h in resp.bm25],
                          "proponents": list(q.proponents)})
    timings["search_s"] = round(time.perf_counter() - t, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    console.print(f"[dim]done in {timings['total_s']:.0f} s (train {timings['train_s']:.0f} s, "
                  f"index {timings['index_s']:.0f} s, search {timings['search_s']:.0f} s). "
                  f"Try: tda search \"<prompt>\" --target \" <object>\" --index {index_dir} "
                  f"--profile demo[/]")
    return {"shown": shown, "timings": timings, "index": str(index_dir),
            "model": str(model_dir)}


def _count(path: Path) -> int:
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def _train(corpus, queries_path, model_dir, settings, console) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    from tda.evaluation.train import train_benchmark_model
    from tda.schemas.options import TrainOptions
    with Progress(TextColumn("  train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("train", total=None, loss="-")
        tmp = model_dir.with_name(model_dir.name + ".partial")
        train_benchmark_model(corpus, tmp,
                              TrainOptions(preset=settings.preset, epochs=settings.epochs,
                                           queries=str(queries_path), max_len=settings.max_len),
                              progress=lambda s, n, loss: bar.update(task, completed=s,
                                                                     total=n,
                                                                     loss=f"{loss:.3f}"))
        tmp.rename(model_dir)


def _index(model_dir, corpus, queries_path, index_dir, settings, console) -> None:
    from tda.engine import TrackStarConfig
    from tda.errors import IndexMissing
    from tda.indexer.build import build_index
    from tda.indexer.precondition import build_profile
    from tda.schemas.options import IndexOptions, PreconditionOptions
    from tda.store.index import IndexStore
    from tda.store.profiles import complete_profiles
    try:
        done = IndexStore.open(index_dir).bm25_status
    except IndexMissing:
        done = None
    if not done:
        console.print(f"[bold]2/3[/] indexing the sample: TrackStar gradients + BM25 -> "
                      f"{index_dir}")
        build_index(model_dir, [corpus], str(index_dir),
                    TrackStarConfig(projection_dim=settings.projection_dim,
                                    max_len=settings.max_len),
                    IndexOptions(shard_size=512), progress=True)
    else:
        console.print(f"[bold]2/3[/] index cached: {index_dir}")
    if "demo" not in complete_profiles(IndexStore.open(index_dir)):
        console.print("[bold]3/3[/] fitting the mixed correction R from the sample's queries")
        build_profile(index_dir, "demo", queries_path,
                      PreconditionOptions(mode="mixed", workers=1))
    else:
        console.print("[bold]3/3[/] correction profile cached")


def _pick(queries, known, n: int):
    """``n`` facts the model knows, from different relations, each with a Wikipedia sentence."""
    picks, relations = [], set()
    for q, k in zip(queries, known):
        if k and q.wikipedia_proponents and q.relation not in relations:
            picks.append(q)
            relations.add(q.relation)
        if len(picks) == n:
            return picks
    rest = [q for q, k in zip(queries, known) if q not in picks]
    return (picks + rest)[:n]


def _render(console, query, resp) -> None:
    from rich.table import Table
    truth = set(query.proponents)
    console.print()
    console.print(f"[bold]{query.prompt}[/][green]{query.target}[/]   "
                  f"[dim]({query.relation}; {len(truth)} sentences in the corpus state it)[/]")
    table = Table(show_lines=True, expand=True)
    table.add_column("#", width=2, justify="right")
    table.add_column("TrackStar (gradients)", ratio=1)
    table.add_column("BM25 (words)", ratio=1)
    for i in range(max(len(resp.trackstar), len(resp.bm25))):
        cells = []
        for hits in (resp.trackstar, resp.bm25):
            if i < len(hits):
                h = hits[i]
                mark = "[green]✓ states the fact[/] " if h.doc_id in truth else ""
                cells.append(f"{mark}[dim]{h.score:.3g}[/]\n{h.snippet[:220]}")
            else:
                cells.append("")
        table.add_row(str(i + 1), *cells)
    console.print(table)
