"""The `tda` command: wiring only; the work lives in engine/, indexer/, searcher/, evaluation/."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

import click

from tda import __version__
from tda.schemas.config import TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.index import IndexOptions, PreconditionOptions
from tda.schemas.server import ServerLimits
from tda.evaluation.prepare import PrepareOptions
from tda.evaluation.demo import DemoSettings


def config_options(cls):
    """Click options for every field of a config dataclass; help text from field metadata.
    The decorated command receives them as keyword arguments named like the fields."""
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            hint = hints[f.name]
            name = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if hint is bool:
                opt = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=f.default,
                                   show_default=True, help=help_text)
            elif typing.get_origin(hint) is typing.Literal:
                opt = click.option(name, type=click.Choice(typing.get_args(hint)),
                                   default=f.default, show_default=True, help=help_text)
            else:
                opt = click.option(name, type=hint, default=f.default, show_default=True,
                                   help=help_text)
            fn = opt(fn)
        return fn
    return decorate


def pick(cls, kwargs: dict):
    """Build ``cls`` from the kwargs named like its fields; returns (config, remaining kwargs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names}), \
        {k: v for k, v in kwargs.items() if k not in names}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tda")
def main() -> None:
    """tda: which training examples made a language model say what it said.

    TrackStar (projected, optimizer-corrected, normalized loss gradients) searched like
    embeddings, next to a BM25 baseline.
    """


def fail(message: str) -> None:
    """One clear line on stderr, exit code 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@main.command("index")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Hugging Face causal LM directory (config, weights, tokenizer).")
@click.option("--corpus", "corpus", required=True, multiple=True,
              help="Corpus file or directory (.jsonl, .txt, .parquet, datasets dir); repeat "
                   "or list several.")
@click.option("--out", required=True, help="Index path (a directory, or any fsspec URL).")
@click.option("--optimizer-state", type=click.Path(exists=True), default=None,
              help="Optimizer state (file or dir). Default: the model directory's "
                   "optimizer.pt / tda_second_moments.pt, else estimated from the corpus.")
@click.option("--estimate-examples", type=int, default=256, show_default=True,
              help="Documents used to estimate second moments when no optimizer state exists.")
@click.option("--overwrite", is_flag=True, help="Replace whatever is at --out.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_options(IndexOptions)
@config_options(CorpusOptions)
@config_options(TrackStarConfig)
@click.argument("more_corpus", nargs=-1, required=False)
def index_cmd(model_dir, corpus, out, optimizer_state, estimate_examples, overwrite, no_progress,
              as_json, more_corpus, **kwargs):
    """Featurize a corpus into a resumable TrackStar index (+ BM25).

    Run as is for one process, or under torchrun for many:
    `torchrun --nproc-per-node 8 $(which tda) index ...`. Rerunning the same command after a
    crash finishes the index, with any number of ranks.
    """
    from tda.indexer.build import BuildError, build_index
    from tda.indexer.readers import CorpusError
    config, kwargs = pick(TrackStarConfig, kwargs)
    options, kwargs = pick(IndexOptions, kwargs)
    corpus_options, kwargs = pick(CorpusOptions, kwargs)
    try:
        summary = build_index(model_dir, list(corpus) + list(more_corpus), out, config, options,
                              corpus_options, optimizer_state, estimate_examples, overwrite,
                              progress=not no_progress and not as_json)
    except (BuildError, CorpusError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        s = summary
        click.echo(f"indexed {s.documents} documents -> {s.examples} examples, {s.tokens:,} "
                   f"tokens in {s.seconds:.1f} s ({s.tokens_per_s:,.0f} tok/s over {s.ranks} "
                   f"rank(s)); shards written {s.shards_written}, already complete "
                   f"{s.shards_already_complete} of {s.shards_total}")
        click.echo(f"skipped: {s.skipped_empty} empty, {s.skipped_bad} bad"
                   + "".join(f"\n  {x}" for x in s.skipped_examples[:10]))
        if s.bm25_documents is not None:
            click.echo(f"bm25: {s.bm25_documents} documents")
        click.echo(f"index: {s.index}")


@main.command("info")
@click.argument("index")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(index, as_json):
    """What an index holds: manifest, counts, size, unfinished shards, BM25, profiles."""
    from tda.indexer.info import index_info, render_info
    from tda.indexer.store import IndexError_
    try:
        info = index_info(index)
    except IndexError_ as e:
        fail(str(e))
    click.echo(json.dumps(info, indent=2) if as_json else render_info(info))


def searcher_options(fn):
    """Options shared by `search` and `serve`: how the index is searched."""
    for opt in reversed([
        click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
                     help="Model for query vectors (default: the index's; must match its "
                          "fingerprint)."),
        click.option("--scheduler", default=None,
                     help="Existing dask scheduler (tcp://HOST:PORT); default: a local "
                          "cluster."),
        click.option("--workers", type=int, default=2, show_default=True,
                     help="Local dask workers (ignored with --scheduler)."),
        click.option("--faiss-index", "kind", default="exact", show_default=True,
                     help="exact | hnsw | ivfpq | any FAISS factory string."),
        click.option("--memory-budget-gb", type=float, default=4.0, show_default=True,
                     help="Per shard group: larger groups are streamed from Zarr per query."),
        click.option("--allow-partial", is_flag=True,
                     help="Leave out shards that fail their checksum (with a warning) instead "
                          "of refusing to search."),
    ]):
        fn = opt(fn)
    return fn


@main.command("search")
@click.argument("prompt", required=False)
@click.option("--index", required=True, help="Index path.")
@click.option("--target", default=None,
              help="Continuation to attribute (default: the model's greedy continuation).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Results per list.")
@click.option("--mode", type=click.Choice(["trackstar", "bm25", "both", "fused"]),
              default="both", show_default=True, help="Which lists to return.")
@click.option("--profile", default=None, help="Correction profile (tda precondition).")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON Lines of {prompt, target?, k?, mode?, profile?}: many queries at once.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one line per query).")
@searcher_options
def search_cmd(prompt, index, target, k, mode, profile, queries, as_json, model_dir, scheduler,
               workers, kind, memory_budget_gb, allow_partial):
    """Which training examples made the model say TARGET after PROMPT?

    Example: tda search "Allan Peiper was born in" --target " Alexandra" --index INDEX
    """
    from pydantic import ValidationError

    from tda.indexer.store import IndexError_
    from tda.schemas.search import SearchRequest
    from tda.indexer.encoder import ModelMismatch
    from tda.searcher.searcher import SearchError, Searcher
    if (prompt is None) == (queries is None):
        fail("give a PROMPT or --queries FILE (one of them)")
    try:
        requests = _read_requests(queries, k, mode, profile) if queries else \
            [SearchRequest(prompt=prompt, target=target, k=k, mode=mode, profile=profile)]
    except (ValidationError, ValueError) as e:
        fail(str(e))
    try:
        with Searcher(index, model_dir=model_dir, scheduler=scheduler, workers=workers,
                      kind=kind, memory_budget_gb=memory_budget_gb, allow_partial=allow_partial,
                      load_model=any(r.mode != "bm25" or r.target is None
                                     for r in requests)) as searcher:
            responses = searcher.search_many(requests)
            for w in searcher.dense.warnings:
                click.echo(f"warning: {w}", err=True)
    except (IndexError_, SearchError, ModelMismatch, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if as_json:
        for r in responses:
            click.echo(r.model_dump_json())
        return
    from tda.searcher.render import render
    for r in responses:
        render(r)


def _read_requests(path, k, mode, profile):
    from pydantic import ValidationError

    from tda.schemas.jsonl import read_jsonl
    from tda.schemas.search import SearchRequest
    out = []
    for n, rec in read_jsonl(path):
        try:
            out.append(SearchRequest(**{"k": k, "mode": mode, "profile": profile, **rec}))
        except (ValidationError, TypeError) as e:
            raise ValueError(f"{path}:{n}: {str(e).splitlines()[0]}") from None
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


@main.command("verify")
@click.argument("index")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(index, as_json):
    """Check every part of INDEX against its checksums and counts: manifest, second moments,
    shards, BM25, profiles. Exit code 1 and each problem by name when anything is wrong;
    `tda index` (the same command again) rebuilds corrupt shards."""
    from tda.indexer.verify import verify_index
    report = verify_index(index)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        c = report["checked"]
        click.echo(f"checked {c['shards']} shards, {c['bm25_documents']} BM25 documents, "
                   f"{c['profiles']} profiles ({c['profile_shards']} profile shards)")
        for p in report["problems"]:
            click.echo(f"problem: {p}", err=True)
        click.echo("ok" if report["ok"] else f"{len(report['problems'])} problem(s)")
    sys.exit(0 if report["ok"] else 1)


@main.command("precondition")
@click.argument("index")
@click.option("--name", required=True, help="Profile name (search with --profile NAME).")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The task's queries, JSON Lines of {prompt, target}: enables the mixed R.")
@click.option("--overwrite", is_flag=True, help="Replace a complete profile of that name.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model for the query vectors (default: the index's).")
@click.option("--scheduler", default=None, help="Existing dask scheduler for the transform.")
@click.option("--workers", type=int, default=2, show_default=True, help="Local dask workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_options(PreconditionOptions)
def precondition_cmd(index, name, queries, overwrite, model_dir, scheduler, workers, as_json,
                     **kwargs):
    """Fit the correction R (Gauss-Newton, block-diagonal per weight) and store a profile: R^-1/2
    and every example's vector transformed by it. Rerunning finishes an interrupted build.

    Ablations: --mode none (no R), --mode train (R_train), --mode mixed --queries Q (TrackStar).
    """
    from tda.indexer.encoder import ModelMismatch
    from tda.indexer.lock import IndexBusy
    from tda.indexer.precondition import build_profile
    from tda.indexer.profiles import ProfileError
    from tda.indexer.store import IndexError_
    try:
        options, _ = pick(PreconditionOptions, kwargs)
        log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
        summary = build_profile(index, name, queries, options, overwrite=overwrite,
                                scheduler=scheduler, workers=workers, model_dir=model_dir,
                                log=log)
    except (ProfileError, IndexError_, ModelMismatch, IndexBusy, FileNotFoundError,
            ValueError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        lam = summary.get("lambda")
        click.echo(f"profile {name}: R={summary['mode']}, K={summary['components']}, damping="
                   f"{summary['damping']}" + (f", lambda={lam:.4f}" if lam else "")
                   + f"; {summary['examples']} examples in {summary['seconds']:.1f} s")


@main.command("serve")
@click.argument("index")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; anything else exposes the index).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--token", envvar="TDA_TOKEN", default=None,
              help="Bearer token every request must carry (env TDA_TOKEN).")
@config_options(ServerLimits)
@searcher_options
def serve_cmd(index, host, port, token, model_dir, scheduler, workers, kind, memory_budget_gb,
              allow_partial, **kwargs):
    """Serve INDEX over HTTP: POST /search, GET /documents/{id}, /info, /health, OpenAPI at
    /openapi.json."""
    from tda.indexer.store import IndexError_
    from tda.indexer.encoder import ModelMismatch
    from tda.searcher.searcher import SearchError, Searcher
    from tda.searcher.server import serve
    limits, _ = pick(ServerLimits, kwargs)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: serving on {host} without --token: anyone who can reach this "
                   f"port can query the index", err=True)
    try:
        searcher = Searcher(index, model_dir=model_dir, scheduler=scheduler, workers=workers,
                            kind=kind, memory_budget_gb=memory_budget_gb,
                            allow_partial=allow_partial)
        for w in searcher.dense.warnings:
            click.echo(f"warning: {w}", err=True)
    except (IndexError_, SearchError, ModelMismatch, FileNotFoundError, ValueError) as e:
        fail(str(e))
    click.echo(f"serving {index} on http://{host}:{port} (docs at /docs)", err=True)
    try:
        serve(searcher, host, port, token, limits)
    finally:
        searcher.close()


@main.command("demo")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Cache directory (default: $TDA_CACHE or ~/.cache/tda, + /demo).")
@click.option("--epochs", type=int, default=DemoSettings.epochs, show_default=True,
              help="Training epochs of the tiny model (fewer: faster, knows fewer facts).")
@click.option("--fresh", is_flag=True, help="Ignore cached model and index.")
def demo_cmd(work, epochs, fresh):
    """Train a tiny model on a shipped sample of real T-REx facts, index it, and show which
    training sentences TrackStar and BM25 credit for three of its predictions."""
    import shutil

    from tda.evaluation.demo import run_demo
    root = Path(work) if work else Path(os.environ.get("TDA_CACHE", Path.home() / ".cache" /
                                                       "tda")) / "demo"
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        run_demo(root, DemoSettings(epochs=epochs))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))


@main.group("eval")
def eval_group():
    """Fact-tracing evaluation on real T-REx data: prepare, train, run."""


@eval_group.command("prepare")
@click.option("--lama", "lama_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="LAMA T-REx directory (P*.jsonl, relations.jsonl).")
@click.option("--pararel", "pararel_dir", type=click.Path(exists=True, file_okay=False),
              default=None, help="ParaRel templates (default: pararel-templates beside --lama).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Benchmark directory: corpus.jsonl, queries.jsonl, manifest.json.")
@config_options(PrepareOptions)
def eval_prepare_cmd(lama_dir, pararel_dir, out, **kwargs):
    """Build a fact-tracing benchmark from LAMA T-REx: a corpus of the sentences that state the
    sampled facts (plus paraphrases and distractors) and one query per fact with its
    ground-truth proponents."""
    from tda.evaluation.prepare import prepare
    try:
        options, _ = pick(PrepareOptions, kwargs)
        manifest = prepare(lama_dir, out, options, pararel_dir)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    counts = manifest.get("counts", {})
    click.echo(f"{out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                      if not isinstance(v, dict)))


@eval_group.command("train")
@click.option("--corpus", required=True, type=click.Path(exists=True, dir_okay=False),
              help="BENCH/corpus.jsonl (records with 'text').")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory.")
@click.option("--preset", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True,
              help="Model size: tiny (4 layers x 128) or small (6 x 256).")
@click.option("--arch", type=click.Choice(["gpt2", "llama"]), default="gpt2", show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Peak learning rate.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--vocab-size", type=int, default=4096, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Queries for the fact accuracy (default: queries.jsonl beside the corpus).")
@click.option("--json", "as_json", is_flag=True, help="Print training.json (without losses).")
def eval_train_cmd(corpus, out, preset, arch, epochs, lr, batch_size, vocab_size, seed, queries,
                   as_json):
    """Train a byte-level BPE tokenizer and a small causal LM from scratch with AdamW; save
    model, tokenizer, optimizer state, final learning rate, loss curve and fact accuracy."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    from tda.evaluation.train import train_benchmark_model
    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                  disable=as_json) as bar:
        task = bar.add_task("train", total=None, loss="-")

        def progress(step, total, loss):
            bar.update(task, completed=step, total=total, loss=f"{loss:.3f}")
        try:
            info = train_benchmark_model(corpus, out, preset=preset, arch=arch, epochs=epochs,
                                         seed=seed, lr=lr, batch_size=batch_size,
                                         vocab_size=vocab_size, queries=queries,
                                         progress=progress)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
    info.pop("losses")
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    acc = info.get("fact_accuracy")
    click.echo(f"trained {info['parameters']:,} parameters on {info['texts']} texts, "
               f"{info['epochs']} epochs in {info['seconds']:.0f} s; final loss "
               f"{info['final_loss']:.3f}" + (f"; knows {info['facts_known']}/{info['queries']}"
                                              f" facts ({acc:.1%})" if acc is not None else ""))
    click.echo(f"model: {out}")


@eval_group.command("run")
@click.option("--index", required=True, help="The TrackStar index (factored, unit norm) of the "
                                             "benchmark corpus.")
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help="BENCH/queries.jsonl.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--methods", default=",".join(["bm25", "graddot", "gradcos", "optcos", "rtrain",
                                             "trackstar", "exact", "fused"]), show_default=True,
              help="Comma-separated methods.")
@click.option("--tail-patch", "tail_patch", type=int, default=10, show_default=True,
              help="Tail-patch the top K retrieved examples (0: skip).")
@click.option("--tail-patch-queries", type=int, default=0, show_default=True,
              help="Tail-patch a seeded sample of this many queries (0: all).")
@click.option("--workers", type=int, default=2, show_default=True, help="Local dask workers.")
@click.option("--seed", type=int, default=0, show_default=True)
def eval_run_cmd(index, queries, out, methods, tail_patch, tail_patch_queries, workers, seed):
    """Retrieve with every method, score MRR, recall@10 and tail-patch, write REPORT/report.md,
    report.json and charts. Ablation indexes and profiles are built under REPORT/ once."""
    from tda.evaluation.run import run_eval
    try:
        run_eval(index, queries, out, [m for m in methods.split(",") if m],
                          tail_patch, tail_patch_queries or None, workers, seed,
                          log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    click.echo(Path(out, "report.md").read_text())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
