"""The `tda` command: wiring only; the work lives in indexer/, searcher/, store/, evaluation/.

Every option is generated from a documented dataclass field (schemas/options.py,
schemas/config.py, schemas/corpus.py) or a search request field (schemas/search.py): its
``--help`` is that field's documentation, and the command builds the same objects the Python
API takes. A TdaError anywhere becomes one line ``error: MESSAGE`` on stderr and exit status 1
(printed by rank 0 only, under torchrun); any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click

from tda import __version__
from tda.errors import TdaError, one_line
from tda.schemas.config import TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.options import (AnnOptions, DemoCommand, DemoOptions, EvalRunCommand,
                                 EvalRunOptions, EvalSizesCommand, IndexCommand, IndexOptions,
                                 InfoCommand, PlanCommand, PlanOptions, PrepareCommand,
                                 PrepareOptions, PreconditionCommand, PreconditionOptions,
                                 SearchCommand, SearchOptions, ServeCommand, ServerLimits,
                                 TrainCommand, TrainOptions, VerifyCommand, ViewCommand)
from tda.schemas.search import SearchRequest


# --------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    hint: Any
    default: Any          # dataclasses.MISSING: required
    help: str
    flag: str | None = None
    short: str | None = None
    envvar: str | None = None


def _fields(cls, exclude: tuple[str, ...] = (), flags: dict | None = None) -> list[_Field]:
    """The CLI fields of a documented dataclass, or of a pydantic model (its descriptions)."""
    flags = flags or {}
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name in exclude or not meta.get("cli", True):
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING
                else dataclasses.MISSING)
            out.append(_Field(f.name, hints[f.name], default, meta.get("help", ""),
                              flags.get(f.name, meta.get("flag")), meta.get("short"),
                              meta.get("envvar")))
        return out
    return [_Field(name, info.annotation,
                   dataclasses.MISSING if info.is_required() else info.default,
                   info.description or "", flags.get(name))
            for name, info in cls.model_fields.items() if name not in exclude]


def _click_option(f: _Field):
    hint, kwargs = f.hint, {"help": f.help}
    origin = typing.get_origin(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    name = f.flag or "--" + f.name.replace("_", "-")
    decls = [name] + ([f.short] if f.short else [])
    if f.default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
        kwargs["show_default"] = f.default is not None and f.default != ()
    if f.envvar:
        kwargs["envvar"] = f.envvar
    if hint is bool:
        decls = [f"{name}/--no-{name.lstrip('-')}"] + decls[1:]
        kwargs["show_default"] = f.default is True
    elif origin is typing.Literal:
        kwargs["type"] = click.Choice(typing.get_args(hint))
    elif origin is tuple:
        kwargs["multiple"] = True
        kwargs["type"] = typing.get_args(hint)[0]
        if kwargs.get("default") == ():
            kwargs.pop("default")
    else:
        kwargs["type"] = hint
    return click.option(*decls, f.name, **kwargs)


def options(cls, exclude: tuple[str, ...] = (), flags: dict | None = None):
    """Click options for the fields of ``cls``; the command receives them as keyword
    arguments named like the fields (``pick`` builds ``cls`` back from them)."""
    def decorate(fn):
        for f in reversed(_fields(cls, exclude, flags)):
            fn = _click_option(f)(fn)
        return fn
    return decorate


def pick(cls, kwargs: dict):
    """``cls`` built from the keyword arguments named like its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v
                  for k, v in kwargs.items() if k in names})


def _setup(quiet: bool) -> None:
    from tda.log import setup_cli
    setup_cli(quiet)


def _log():
    from tda.log import logger
    return logger("cli")


# --------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tda", help="Show the version and exit.")
def cli() -> None:
    """tda: which training examples made a language model say what it said.

    TrackStar (projected, optimizer-corrected, normalized loss gradients) searched like
    embeddings, next to a BM25 baseline.
    """


@cli.command("index")
@options(IndexCommand)
@options(IndexOptions)
@options(CorpusOptions)
@options(TrackStarConfig)
@click.argument("more_corpus", nargs=-1, required=False)
def index_cmd(more_corpus, **kw):
    """Featurize a corpus into a resumable TrackStar index (+ BM25).

    Run as is for one process, or under torchrun for many:
    `torchrun --nproc-per-node 8 $(which tda) index ...`. Rerunning the same command after a
    crash finishes the index, with any number of ranks.
    """
    from tda.indexer.build import build_index
    cmd = pick(IndexCommand, kw)
    _setup(cmd.json)
    summary = build_index(cmd.model_dir, list(cmd.corpus) + list(more_corpus), cmd.out,
                          pick(TrackStarConfig, kw), pick(IndexOptions, kw),
                          pick(CorpusOptions, kw), overwrite=cmd.overwrite,
                          base_model=cmd.base_model,
                          progress=cmd.progress and not cmd.json)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if cmd.json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    s = summary
    click.echo(f"indexed {s.documents} documents -> {s.examples} examples, {s.tokens:,} "
               f"tokens in {s.seconds:.1f} s ({s.tokens_per_s:,.0f} tok/s over {s.ranks} "
               f"rank(s)); shards written {s.shards_written}, already complete "
               f"{s.shards_already_complete} of {s.shards_total}")
    for note in s.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"tracked: {s.tracked_share:.1%} of the model's matrix parameters; "
               f"max_len {s.max_len}; second moments: {s.second_moments or 'none'}")
    click.echo(f"skipped: {s.skipped_empty} empty, {s.skipped_bad} bad"
               + "".join(f"\n  {x}" for x in s.skipped_examples[:10]))
    if s.bm25_documents is not None:
        click.echo(f"bm25: {s.bm25_documents} documents")
    click.echo(f"index: {s.index}")


@cli.command("plan")
@options(PlanCommand)
@options(PlanOptions)
@options(IndexOptions)
@options(CorpusOptions)
@options(TrackStarConfig)
def plan_cmd(**kw):
    """Memory per device and host, index size and time of a `tda index` run, before running
    it: weights (sharded or not), activations and hook buffers at the batch and --max-len
    (measured on narrow copies of the model), projections, shard buffers, disk, hours.

    Example: tda plan --model llama-3-8b/config.json --tokens 160e9 --max-len 2048
    --dtype bfloat16 --batch-tokens 4096 --nodes 8 --devices-per-node 8 --no-bm25
    """
    from tda.indexer.plan import make_plan, render_plan
    cmd = pick(PlanCommand, kw)
    _setup(cmd.json)
    plan = make_plan(cmd.model, list(cmd.corpus), pick(PlanOptions, kw),
                     pick(TrackStarConfig, kw), pick(IndexOptions, kw), pick(CorpusOptions, kw))
    click.echo(json.dumps(plan.to_dict(), indent=2) if cmd.json else render_plan(plan))


@cli.command("info")
@click.argument("index")
@options(InfoCommand)
def info_cmd(index, **kw):
    """What an index holds: manifest, counts, size, unfinished shards, BM25, profiles. Exit
    status 1 when it shows a problem (unfinished or unreadable shards)."""
    from tda.store.info import index_info, render_info
    cmd = pick(InfoCommand, kw)
    _setup(cmd.json)
    info = index_info(index, cmd.model_dir)
    click.echo(json.dumps(info, indent=2) if cmd.json else render_info(info))
    for p in info["problems"]:
        click.echo(f"problem: {p}", err=True)
    sys.exit(1 if info["problems"] else 0)


@cli.command("search")
@click.argument("prompt", required=False)
@options(SearchCommand)
@options(SearchRequest, exclude=("prompt",), flags={"k": "-k"})
@options(SearchOptions)
@options(AnnOptions)
def search_cmd(prompt, **kw):
    """Which training examples made the model say TARGET after PROMPT?

    Example: tda search "Allan Peiper was born in" --target " Alexandra" --index INDEX
    """
    from tda.searcher import heap
    with heap.paused():               # importing: no collections (searcher/heap.py)
        from tda.searcher.searcher import Searcher
    cmd = pick(SearchCommand, kw)
    _setup(cmd.json)
    if (prompt is None) == (cmd.queries is None):
        raise click.UsageError("give a PROMPT or --queries FILE (one of them)")
    defaults = {"target": kw["target"], "k": kw["k"], "mode": kw["mode"],
                "profile": kw["profile"], "explain": kw["explain"]}
    if cmd.queries:
        from tda.schemas.queries import read_queries
        queries = read_queries(cmd.queries)
        requests = [_query_request(q, defaults) for q in queries]
    else:
        from tda.schemas.queries import Query
        queries = [Query("prompt", prompt, defaults["target"])]
        requests = [_request("request", prompt=prompt, **defaults)]
    with Searcher(cmd.index, _search_options(kw),
                  load_model=any(r.mode != "bm25" or r.target is None
                                 for r in requests)) as searcher:
        for w in searcher.dense.warnings:
            _log().warning(w)
        responses = searcher.search_many(requests)
        if cmd.format == "pair":
            from tda.evaluation.pair_format import response_records
            opponents = searcher.opponents(requests, cmd.opponents) if cmd.opponents else None
            known = _model_knows(searcher, queries)
            texts: dict[str, str] = {}

            def text_of(example_id: str) -> str:
                if example_id not in texts:
                    texts[example_id] = searcher.document(example_id).text
                return texts[example_id]
            for rec in response_records(queries, responses, text_of, opponents, known=known):
                click.echo(json.dumps(rec.to_dict(), ensure_ascii=False))
            return
    if cmd.json:
        for r in responses:
            click.echo(r.model_dump_json())
        return
    from tda.searcher.render import render, render_salience
    for r in responses:
        render(r)
        render_salience(r)


def _model_knows(searcher, queries) -> list[bool | None] | None:
    """Per query with a given target: is it the model's greedy continuation (None: no target,
    or no model loaded, as for BM25 alone)."""
    if searcher.encoder is None:
        return None
    from tda.evaluation.queries import knows
    given = [q for q in queries if q.target is not None]
    if not given:
        return None
    it = iter(knows(searcher.encoder.model, searcher.encoder.tokenizer, given,
                    max_len=searcher.encoder.config.max_len or 256))
    return [next(it) if q.target is not None else None for q in queries]


def _search_options(kw: dict) -> SearchOptions:
    """SearchOptions from the command's options, the ANN settings included."""
    return dataclasses.replace(pick(SearchOptions, kw), ann=pick(AnnOptions, kw))


def _request(where: str, **fields) -> SearchRequest:
    """A SearchRequest, or a RecordError naming ``where`` and the first invalid field."""
    from pydantic import ValidationError

    from tda.errors import RecordError
    try:
        return SearchRequest(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise RecordError(f"{where}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _query_request(q, defaults: dict) -> SearchRequest:
    """The SearchRequest of one line of a query file; the options give what it leaves out."""
    return _request(f"{q.source}:{q.line}", **{
        **defaults, "prompt": q.prompt,
        **({"target": q.target} if q.target is not None else {}),
        **{k: q.extra[k] for k in ("k", "mode", "profile", "explain") if k in q.extra}})


@cli.command("verify")
@click.argument("index")
@options(VerifyCommand)
def verify_cmd(index, **kw):
    """Check every part of INDEX against its checksums and counts: manifest, model, second
    moments, shards, BM25, profiles. Exit status 1 and each problem by name when anything is
    wrong; `tda index` (the same command again) rebuilds corrupt shards."""
    from tda.store.verify import verify_index
    cmd = pick(VerifyCommand, kw)
    _setup(cmd.json)
    report = verify_index(index, cmd.model_dir)
    if cmd.json:
        click.echo(json.dumps(report, indent=2))
    else:
        c = report["checked"]
        click.echo(f"checked {c['shards']} shards, {c['bm25_documents']} BM25 documents, "
                   f"{c['profiles']} profiles ({c['profile_shards']} profile shards)"
                   + (f", model {c['model']}" if c["model"] else ""))
        for p in report["problems"]:
            click.echo(f"problem: {p}", err=True)
        click.echo("ok" if report["ok"] else f"{len(report['problems'])} problem(s)")
    sys.exit(0 if report["ok"] else 1)


@cli.command("precondition")
@click.argument("index")
@options(PreconditionCommand)
@options(PreconditionOptions)
def precondition_cmd(index, **kw):
    """Fit the correction R (Gauss-Newton, block-diagonal per weight) and store a profile: R^-1/2
    and every example's vector transformed by it. Rerunning finishes an interrupted build.

    Ablations: --mode none (no R), --mode train (R_train), --mode mixed --queries Q (TrackStar).
    """
    from tda.indexer.precondition import build_profile
    cmd = pick(PreconditionCommand, kw)
    _setup(cmd.json)
    summary = build_profile(index, cmd.name, cmd.queries, pick(PreconditionOptions, kw),
                            overwrite=cmd.overwrite)
    if cmd.json:
        click.echo(json.dumps(summary, indent=2))
        return
    lam = summary.get("lambda")
    click.echo(f"profile {cmd.name}: R={summary['mode']}, K={summary['components']}, damping="
               f"{summary['damping']}" + (f", lambda={lam:.4f}" if lam else "")
               + f"; {summary['examples']} examples in {summary['seconds']:.1f} s")


@cli.command("serve")
@click.argument("index")
@options(ServeCommand)
@options(ServerLimits)
@options(SearchOptions)
@options(AnnOptions)
def serve_cmd(index, **kw):
    """Serve INDEX over HTTP: the page at / (search, and reports with --reports), POST /search,
    POST /search/batch, GET /documents/{id}, /info, /config, /reports, /health, OpenAPI at
    /openapi.json."""
    from tda.searcher.searcher import Searcher
    from tda.searcher.server import serve
    cmd = pick(ServeCommand, kw)
    _setup(False)
    _warn_exposed(cmd.host, cmd.token)
    reports = _reports(cmd.reports) if cmd.reports else None
    searcher = Searcher(index, _search_options(kw))
    try:
        searcher.ready()                 # a model that does not load fails here, not per query
    except BaseException:
        searcher.close()
        raise
    for w in searcher.dense.warnings:
        _log().warning(w)
    _log().info(f"serving {index} on http://{cmd.host}:{cmd.port}/ (docs at /docs)")
    try:
        serve(searcher, cmd.host, cmd.port, cmd.token, pick(ServerLimits, kw), reports=reports)
    finally:
        searcher.close()


@cli.command("view")
@click.argument("reports")
@options(ViewCommand)
def view_cmd(reports, **kw):
    """Show the report .jsonl files of directory REPORTS in the browser page (no index, no
    model): the query list with per-query MRR, recall@10 and precision@10, a filter, one
    query's proponents, two methods side by side. Open http://HOST:PORT/."""
    from tda.searcher.server import serve
    cmd = pick(ViewCommand, kw)
    _setup(False)
    _warn_exposed(cmd.host, cmd.token)
    directory = _reports(reports)
    _log().info(f"viewing {reports} on http://{cmd.host}:{cmd.port}/")
    serve(None, cmd.host, cmd.port, cmd.token, ServerLimits(), reports=directory)


def _warn_exposed(host: str, token: str | None) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        _log().warning(f"serving on {host} without --token: anyone who can reach this "
                       f"port can query the index")


def _reports(directory: str):
    """The reports directory, refused at once (naming it) when it holds no .jsonl."""
    from tda.evaluation.reports import ReportDirectory
    return ReportDirectory(directory)


@cli.command("demo")
@options(DemoCommand)
@options(DemoOptions)
def demo_cmd(**kw):
    """Train a tiny model on a shipped sample of real T-REx facts, index it, and show which
    training sentences TrackStar and BM25 credit for three of its predictions."""
    import shutil

    from tda.evaluation.demo import run_demo
    cmd = pick(DemoCommand, kw)
    _setup(False)
    root = Path(cmd.work) if cmd.work else Path(os.environ.get(
        "TDA_CACHE", Path.home() / ".cache" / "tda")) / "demo"
    if cmd.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    run_demo(root, pick(DemoOptions, kw))


@cli.group("eval")
def eval_group():
    """Fact-tracing evaluation on real T-REx data: prepare, train, run."""


@eval_group.command("prepare")
@options(PrepareCommand)
@options(PrepareOptions)
def eval_prepare_cmd(**kw):
    """Build a fact-tracing benchmark from LAMA T-REx: a corpus of the sentences that state the
    sampled facts (plus paraphrases and distractors) and one query per fact with its
    ground-truth proponents."""
    from tda.evaluation.prepare import prepare
    cmd = pick(PrepareCommand, kw)
    _setup(False)
    manifest = prepare(cmd.lama_dir, cmd.out, pick(PrepareOptions, kw), cmd.pararel_dir)
    counts = manifest.get("counts", {})
    click.echo(f"{cmd.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                          if not isinstance(v, dict)))


@eval_group.command("train")
@options(TrainCommand)
@options(TrainOptions)
def eval_train_cmd(**kw):
    """Train a byte-level BPE tokenizer and a small causal LM from scratch with AdamW; save
    model, tokenizer, optimizer state, final learning rate, loss curve and fact accuracy."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from tda.evaluation.train import train_benchmark_model
    from tda.log import progress
    cmd = pick(TrainCommand, kw)
    _setup(cmd.json)
    with progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                  disable=cmd.json) as bar:
        task = bar.add_task("train", total=None, loss="-")
        info = train_benchmark_model(
            cmd.corpus, cmd.out, pick(TrainOptions, kw),
            progress=lambda step, total, loss: bar.update(task, completed=step, total=total,
                                                          loss=f"{loss:.3f}"))
    info.pop("losses")
    if cmd.json:
        click.echo(json.dumps(info, indent=2))
        return
    acc = info.get("fact_accuracy")
    click.echo(f"trained {info['parameters']:,} parameters on {info['texts']} texts, "
               f"{info['epochs']} epochs in {info['seconds']:.0f} s "
               f"({info['tokens_per_s']:,.0f} tokens/s); final loss "
               f"{info['final_loss']:.3f}" + (f"; knows {info['facts_known']}/{info['queries']}"
                                              f" facts ({acc:.1%})" if acc is not None else ""))
    click.echo(f"model: {cmd.out}")


@eval_group.command("run")
@options(EvalRunCommand)
@options(EvalRunOptions)
def eval_run_cmd(**kw):
    """Retrieve with every method; score MRR, recall@10, precision@10 (the paper's
    definitions), coverage@10 and tail-patch, by fact frequency and sentence class; write
    REPORT/report.md, report.json, charts and per-method results (.jsonl). Ablation indexes
    and profiles are built under REPORT/ once."""
    from tda.evaluation.run import run_eval
    cmd = pick(EvalRunCommand, kw)
    _setup(False)
    run_eval(cmd.index, cmd.queries, cmd.out, pick(EvalRunOptions, kw))
    click.echo(Path(cmd.out, "report.md").read_text())


@eval_group.command("sizes")
@options(EvalSizesCommand)
def eval_sizes_cmd(**kw):
    """Compare model sizes on one benchmark: fact accuracy, MRR, recall@10 and tail-patch per
    size, the change from the smallest to the largest (paired over queries) and a chart of
    TrackStar's and BM25's MRR and tail-patch against parameters."""
    from tda.evaluation.sizes import compare_sizes
    cmd = pick(EvalSizesCommand, kw)
    _setup(False)
    compare_sizes(list(cmd.reports), cmd.out)
    click.echo(Path(cmd.out, "sizes.md").read_text())


# --------------------------------------------------------------------------- entry point
def main(args: list[str] | None = None) -> None:
    """The `tda` command: ``cli`` with TdaError turned into one line and exit status 1."""
    try:
        cli.main(args=args, prog_name="tda")
    except TdaError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"error: {one_line(e)}", err=True)
        sys.exit(1)
    finally:
        # the interpreter's last collections would walk the whole loaded heap (torch,
        # transformers, a model) on the way out: a second or more of `tda search` on 2 cores
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
