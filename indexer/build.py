"""`tda index`: stream a corpus through the model into a resumable Zarr index (+ BM25).

Work unit: a shard = ``shard_size`` consecutive valid documents. Rank 0 scans the corpus
(validation, counts, duplicate ids), creates or checks the manifest and hands the incomplete
shards out round-robin; each rank featurizes and writes its own shards; rank 0 then builds the
Lucene index from the shards' texts. Re-running the same command resumes.
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from tda import __version__
from tda.engine import Featurizer, TrackStarConfig, collate, load_model, model_fingerprint
from tda.engine.featurizer import estimate_from_texts
from tda.engine.second_moments import OWN_FILE, TRAINER_FILE, SecondMoments, load_second_moments
from tda.indexer import distributed as D
from tda.indexer import lucene
from tda.indexer.batching import budget_batches
from tda.indexer.faults import crash_point
from tda.indexer.documents import (CorpusScan, Example, chunk_document, scan_corpus,
                                   shard_documents, valid_documents)
from tda.indexer.readers import CorpusError, corpus_files, fingerprint
from tda.indexer.lock import IndexBusy, IndexLock
from tda.indexer.store import IndexError_, IndexMissing, IndexStore, ShardRows
from tda.schemas.corpus import CorpusOptions
from tda.schemas.index import IndexOptions, Manifest



class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


@dataclass
class BuildSummary:
    index: str
    documents: int = 0
    examples: int = 0
    tokens: int = 0
    shards_total: int = 0
    shards_written: int = 0
    shards_already_complete: int = 0
    skipped_empty: int = 0
    skipped_bad: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    ranks: int = 1
    bm25_documents: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def build_index(model_dir: str | Path, corpus: list[str | Path], out: str | Path,
                config: TrackStarConfig = TrackStarConfig(),
                options: IndexOptions = IndexOptions(),
                corpus_options: CorpusOptions = CorpusOptions(),
                optimizer_state: str | Path | None = None, estimate_examples: int = 256,
                overwrite: bool = False, progress: bool = True) -> BuildSummary:
    """Build (or resume) the index at ``out``. Under torchrun every rank calls this."""
    started = time.perf_counter()
    ranks = D.init(timeout_s=options.collective_timeout_min * 60)
    lock = IndexLock(out, "tda index")
    try:
        _on_main(ranks, lambda: lock.__enter__() and None)   # one build per index at a time
        return _build(ranks, Path(model_dir), corpus, str(out), config, options,
                      corpus_options, optimizer_state, estimate_examples, overwrite, progress,
                      started)
    finally:
        lock.__exit__()
        D.shutdown()


def _on_main(ranks: D.Ranks, fn):
    """Run fn on rank 0 and hand its result (or its error) to every rank."""
    result, error = None, None
    if ranks.is_main:
        try:
            result = fn()
        except (CorpusError, IndexError_, BuildError, IndexBusy, ValueError,
                FileNotFoundError) as e:
            error = (type(e).__name__, str(e))
    result, error = D.broadcast(ranks, (result, error))
    if error:
        raise BuildError(error[1])
    return result


def _build(ranks, model_dir, corpus, out, config, options, corpus_options, optimizer_state,
           estimate_examples, overwrite, progress, started) -> BuildSummary:
    files = _on_main(ranks, lambda: [str(p) for p in corpus_files(corpus)])
    scan: CorpusScan = _on_main(ranks, lambda: scan_corpus(files, corpus_options))
    if scan.documents == 0:
        raise BuildError(f"the corpus has no documents to index ({scan.empty} empty, "
                         f"{scan.bad} bad records)")
    # with FSDP the full model is never on the device: loaded on the CPU, sharded, and each
    # rank's shard moves to its device
    model, tokenizer = load_model(model_dir, dtype=config.dtype,
                                  device="cpu" if options.fsdp else ranks.device)
    fp = _on_main(ranks, lambda: model_fingerprint(model_dir))

    if overwrite and ranks.is_main:
        _remove(out)
    D.barrier(ranks)
    moments = _second_moments(ranks, model, tokenizer, model_dir, files, corpus_options,
                              config, optimizer_state, estimate_examples, out)
    if options.fsdp:
        if not ranks.distributed:
            raise BuildError("--fsdp needs several ranks: launch with torchrun")
        model = D.fully_shard_model(model, ranks)
    featurizer = Featurizer(model, tokenizer, config, optimizer_state=moments)
    manifest = Manifest(
        model={"path": str(model_dir.resolve()), "fingerprint": fp,
               "architecture": type(model).__name__.replace("FSDP", ""),
               "tokenizer": type(tokenizer).__name__},
        featurizer=featurizer.manifest(),
        corpus={"files": [{"name": str(Path(f).resolve()), "fingerprint": fingerprint(Path(f))}
                          for f in files],
                "options": asdict(corpus_options), "documents": scan.documents},
        layout={"shard_size": options.shard_size, "storage_dtype": options.storage_dtype},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__)
    n_shards = -(-scan.documents // options.shard_size)
    todo, already = _on_main(ranks, lambda: _open_or_create(out, manifest, n_shards, moments))
    store = IndexStore.open(out, mode="r+")
    mine = todo[ranks.rank::ranks.world]

    summary = BuildSummary(index=out, documents=scan.documents, shards_total=n_shards,
                           shards_already_complete=already, skipped_empty=scan.empty,
                           skipped_bad=scan.bad, ranks=ranks.world,
                           skipped_examples=scan.examples_of_bad + scan.examples_of_empty)
    written, examples, tokens = _featurize_shards(ranks, featurizer, store, files,
                                                  corpus_options, options, mine, progress)
    totals = D.gather(ranks, (written, examples, tokens))    # every rank's shards are written
    summary.shards_written = sum(t[0] for t in totals)
    if ranks.is_main:          # the other ranks are done; rank 0 checks and builds BM25 alone
        complete = store.complete_shards()
        missing = sorted(set(range(n_shards)) - set(complete))
        if missing:
            raise BuildError(f"{out}: shards {missing[:10]} are still incomplete; rerun the "
                             f"same command to finish them")
        summary.examples = sum(complete.values())
        if options.bm25:
            summary.bm25_documents = _build_bm25(store, n_shards)
    summary.tokens = sum(t[2] for t in totals)
    summary.seconds = round(time.perf_counter() - started, 2)
    summary.tokens_per_s = round(summary.tokens / max(summary.seconds, 1e-9), 1)
    return summary


def _remove(out: str) -> None:
    if "://" in out and not out.startswith("file://"):
        import fsspec
        fs, path = fsspec.core.url_to_fs(out)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    elif Path(out).exists():
        shutil.rmtree(out)


def _open_or_create(out: str, manifest: Manifest, n_shards: int,
                    moments: SecondMoments | None) -> tuple[list[int], int]:
    """Create the index, or check that the existing one was built with the same settings, and
    make sure it holds the second moments. Returns (shards to build, shards already complete)."""
    try:
        store = IndexStore.open(out, mode="r+")
    except IndexMissing:
        store = IndexStore.create(out, manifest)
    except IndexError_ as e:
        raise BuildError(f"{e}; choose another --out (or --overwrite to replace it)") from None
    else:
        diffs = store.manifest.differences(manifest)
        if diffs:
            raise BuildError(f"{out} is an index built with other settings; refusing to mix "
                             f"(" + "; ".join(diffs[:5]) + "). Use another --out, or "
                             "--overwrite to replace it.")
    if moments is not None and store.read_moments() is None:
        store.write_moments(moments)
    for shard in sorted(store.complete_shards()):      # resuming: trust no shard unchecked
        problem = store.verify_shard(shard)
        if problem:
            print(f"tda index: rebuilding {problem}", file=sys.stderr)
            store.drop_shard(shard)
    complete = store.complete_shards()
    stray = sorted(i for i in complete if i >= n_shards)
    if stray:
        raise BuildError(f"{out}: has shards beyond the corpus ({stray[:5]}): not this corpus")
    return [i for i in range(n_shards) if i not in complete], len(complete)


def _second_moments(ranks, model, tokenizer, model_dir, files, corpus_options, config,
                    optimizer_state, estimate_examples, out) -> SecondMoments | None:
    """The optimizer state to correct with: the given path, else the model directory's, else an
    estimate from the first corpus documents (stored in the index and reused on resume)."""
    if config.correction == "none":
        return None
    factored = config.correction == "factored"
    source = Path(optimizer_state) if optimizer_state else None
    if source is None and any((model_dir / f).is_file() for f in (OWN_FILE, TRAINER_FILE)):
        source = model_dir
    if source is not None:
        try:
            return load_second_moments(source, model, factors_only=factored)
        except (FileNotFoundError, ValueError) as e:
            raise BuildError(str(e)) from None

    def estimate():
        try:                  # a resumed build reuses the estimate stored in its index
            stored = IndexStore.open(out).read_moments()
        except IndexError_:
            stored = None
        if stored is not None and stored.optimizer == "estimated":
            return stored
        texts = []
        for doc in valid_documents(files, corpus_options):
            texts.append(doc.text)
            if len(texts) >= estimate_examples:
                break
        moments = estimate_from_texts(model, tokenizer, texts, config)
        return moments.factored() if factored else moments

    return _on_main(ranks, estimate)


def _featurize_shards(ranks, featurizer: Featurizer, store: IndexStore, files, corpus_options,
                      options: IndexOptions, mine: list[int], progress: bool):
    """Featurize and write this rank's shards. With FSDP every rank steps in lockstep (a rank
    without work runs a throwaway batch) because each forward gathers weights from all ranks."""
    max_len = featurizer.config.max_len
    n_docs = store.manifest.corpus["documents"]
    bar = _progress(ranks, progress,
                    sum(min(options.shard_size, n_docs - s * options.shard_size) for s in mine))
    written = examples = tokens = 0

    def work():
        for shard, docs in shard_documents(files, corpus_options, options.shard_size, set(mine)):
            exs: list[Example] = [e for d in docs
                                  for e in chunk_document(d, featurizer.tokenizer, max_len)]
            rows = ShardRows.empty(exs, featurizer.dim)      # filled batch by batch
            batches = budget_batches([e.sequence for e in exs], options.batch_tokens)
            for j, idx in enumerate(batches):
                yield shard, rows, idx, j == len(batches) - 1, len(docs)

    items = work()
    dummy = collate([featurizer.example_sequences(["a b"])[0]], featurizer.pad_id) \
        if options.fsdp else None
    while True:
        item = next(items, None)
        if options.fsdp and not D.any_true(ranks, item is not None):
            break
        if item is None:
            if not options.fsdp:
                break
            featurizer.featurize_batch(dummy)
            continue
        shard, rows, idx, last, n_docs = item
        feats = featurizer.featurize_batch(collate([rows.sequences[i] for i in idx],
                                                   featurizer.pad_id))
        rows.fill(idx, feats.vectors.numpy(), feats.norm.numpy(), feats.loss.numpy(),
                  feats.n_tokens.numpy())
        n_tok = int(feats.n_tokens.sum())
        tokens += n_tok
        if bar:
            bar.advance(n_tok, n_docs if last else 0)
        if last:
            store.write_shard(shard, rows, options.storage_dtype)
            written += 1
            examples += len(rows)
    if bar:
        bar.close()
    return written, examples, tokens


def _bm25_ok(path: Path, documents: int) -> bool:
    """The Lucene index opens and holds the number of documents it was built with."""
    try:
        return path.is_dir() and len(lucene.BM25(path)) == documents
    except Exception:  # noqa: BLE001 - any failure to open means: rebuild it
        return False


def _build_bm25(store: IndexStore, n_shards: int) -> int | None:
    """Lucene index of every example's text under the index directory (local indexes)."""
    path = store.bm25_path
    if path is None:
        return None
    status = store.bm25_status
    if status and status.get("complete") and _bm25_ok(path, status["documents"]):
        return status["documents"]
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    def docs():
        for s in range(n_shards):
            data = store.read_shard(s, ("ids", "doc_ids", "text"))
            for row, (i, d, t) in enumerate(zip(data["ids"].tolist(), data["doc_ids"].tolist(),
                                                data["text"].tolist())):
                yield {"id": i, "contents": t, "doc_id": d, "shard": s, "row": row}

    n = lucene.build(tmp, docs())
    crash_point("bm25")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    store.set_bm25_status({"complete": True, "documents": n})
    return n


class _Bar:
    """Rank 0's progress: documents, tokens/s, ETA."""

    def __init__(self, total_docs: int, world: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(TextColumn("[bold]index[/] rank 0/{task.fields[world]}"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("docs"),
                                 TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn())
        self.task = self.progress.add_task("index", total=total_docs, world=world, tps="-")
        self.tokens = 0
        self.start = time.perf_counter()
        self.progress.start()

    def advance(self, tokens: int, docs: int) -> None:
        self.tokens += tokens
        tps = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=docs, tps=f"{tps:,.0f}")

    def close(self) -> None:
        self.progress.stop()


def _progress(ranks, enabled: bool, total: int):
    return _Bar(total, ranks.world) if enabled and ranks.is_main else None
