"""`tda index`: stream a corpus through the model into a resumable Zarr index (+ BM25).

Work unit: a shard = ``shard_size`` consecutive examples of the corpus (chunks of at most
``max_len`` tokens), whatever the documents. The ranks scan the corpus together, each its byte
range (indexer/scan.py: validation, counts, duplicate ids, where each shard starts), unless the
index already holds a scan of the same files; rank 0 creates or checks the manifest; the ranks
verify the complete shards between them; the shards still to build are split into runs of
consecutive shards of about equal tokens, one per rank, and each rank reads its run from the
corpus (nothing else), featurizes and writes it; rank 0 then builds the Lucene index from the
shards' texts. Re-running the same command resumes, with any number of ranks. What rank 0
decides alone reaches every rank through ``_on_main``, errors included (as the same error
type).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tda import __version__
from tda.engine import Featurizer, TrackStarConfig, collate, load_model, model_fingerprint
from tda.engine.estimate import estimate_moments, moment_featurizer, sample_indices
from tda.engine.featurizer import find_tracking, resolve_config
from tda.engine.optimizer_state import has_state_file
from tda.engine.second_moments import SecondMoments, load_second_moments
from tda.engine.sources import resolve_model
from tda.engine.tracking import share_warning
from tda.errors import (BuildError, IndexMissing, IndexUnusable, NotAnIndex, SettingsMismatch,
                        TdaError)
from tda.indexer import distributed
from tda.indexer.batching import budget_batches
from tda.indexer.documents import ShardReader, chunk_document, valid_documents
from tda.indexer.readers import READ, corpus_files
from tda.indexer.scan import (CorpusScan, file_keys, scan_corpus, scan_from_record, scan_record,
                              token_counter)
from tda.log import logger, progress as progress_bar
from tda.schemas.config import MAX_LEN_CAP
from tda.schemas.corpus import CorpusOptions
from tda.schemas.fields import to_data
from tda.schemas.index import (BuildRecord, CorpusFile, CorpusRecord, Layout, Manifest,
                               ModelRecord)
from tda.schemas.options import IndexOptions
from tda.store import bm25, location
from tda.store.faults import crash_point
from tda.store.index import IndexStore, ShardRows
from tda.store.rowtable import write_row_table
from tda.store.lock import IndexLock

log = logger(__name__)


@dataclass
class BuildSummary:
    """What one `tda index` run did (documents, examples and tokens in the index; shards this
    run wrote; seconds of wall time)."""

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
    scanned: bool = True                  # False: the corpus scan stored in the index was reused
    scan_bytes_read: list[int] = field(default_factory=list)   # per rank, by the scan
    bytes_read: list[int] = field(default_factory=list)        # per rank, reading shards
    max_len: int | None = None
    tracked_share: float | None = None
    second_moments: str | None = None
    notes: list[str] = field(default_factory=list)      # warnings and choices made

    def to_dict(self) -> dict:
        """The summary as a JSON-ready dict."""
        return asdict(self)


def build_index(model_dir: str | Path, corpus: list[str | Path], out: str | Path,
                config: TrackStarConfig = TrackStarConfig(),
                options: IndexOptions = IndexOptions(),
                corpus_options: CorpusOptions = CorpusOptions(), *,
                overwrite: bool = False, progress: bool = True,
                base_model: str | Path | None = None) -> BuildSummary:
    """Build (or resume) the index at ``out``. Under torchrun every rank calls this; every
    rank raises the same TdaError when the build cannot go on. ``model_dir``: a model
    directory, a PEFT adapter directory (on ``base_model`` or the base it names) or a Hub id
    in the local cache."""
    started = time.perf_counter()
    ranks = distributed.init(timeout_s=options.collective_timeout_min * 60)
    lock = IndexLock(out, "tda index")
    try:
        _on_main(ranks, lambda: lock.__enter__() and None)   # one build per index at a time
        source = _on_main(ranks, lambda: resolve_model(model_dir, base_model))
        return _build(ranks, source, corpus, str(out), config, options,
                      corpus_options, overwrite, progress, started)
    finally:
        lock.__exit__()
        distributed.shutdown()


def _on_main(ranks: distributed.Ranks, fn):
    """Run ``fn`` on rank 0 and hand its result to every rank. A TdaError there is raised on
    every rank as the same error (same type and message); any other error is raised on rank 0
    with its traceback, and on the others as a BuildError naming it, so no rank waits forever
    in a collective."""
    if not ranks.distributed:
        return fn()
    result, error, failure = None, None, None
    if ranks.is_main:
        try:
            result = fn()
        except TdaError as e:
            error = e
        except BaseException as e:
            failure = e
    result, error, crash = distributed.broadcast(
        ranks, (result, error, None if failure is None else f"{type(failure).__name__}: "
                                                            f"{failure}"))
    if failure is not None:
        raise failure
    if error is not None:
        raise error
    if crash is not None:
        raise BuildError(f"rank 0 failed ({crash}); see its output")
    return result


def _build(ranks, source, corpus, out, config, options, corpus_options, overwrite, progress,
           started) -> BuildSummary:
    files = _on_main(ranks, lambda: [str(p) for p in corpus_files(corpus)])
    # with FSDP the full model is never on the device: loaded on the CPU, sharded, and each
    # rank's shard moves to its device
    model_dir = source.path
    model, tokenizer = load_model(source, dtype=config.dtype,
                                  device="cpu" if options.fsdp else ranks.device)
    fp = _on_main(ranks, lambda: model_fingerprint(source))
    resolved = resolve_config(config, model)   # max_len chosen from the model when not given
    sources = file_keys(files, ranks)          # each rank fingerprints its share of the files
    if overwrite and ranks.is_main:
        location.remove(out)
    distributed.barrier(ranks)
    key = {"files": sources, "reader": to_data(corpus_options), "tokenizer": fp,
           "max_len": resolved.max_len, "shard_size": options.shard_size}
    scan = _on_main(ranks, lambda: _stored_scan(out, key))
    rescanned = scan is None
    if rescanned:                              # every rank reads its byte range of the corpus
        scan = scan_corpus(files, corpus_options, token_counter(tokenizer), resolved.max_len,
                           options.shard_size, ranks=ranks)
    if scan.documents == 0 or scan.examples == 0:
        raise BuildError(f"the corpus has no documents to index ({scan.documents} documents "
                         f"of at least 2 tokens: {scan.examples} examples; {scan.empty} empty, "
                         f"{scan.bad} bad records)")
    if options.fsdp:
        if not ranks.distributed:
            raise BuildError("--fsdp needs several ranks: launch with torchrun")
        model = distributed.fully_shard_model(model, ranks)
    notes: list[str] = []
    tracking = find_tracking(model, tokenizer, resolve_config(config, model))
    moments = _second_moments(ranks, model, tokenizer, model_dir, files, corpus_options,
                              config, options, out, scan.documents, tracking)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the tracking notes are reported below
        featurizer = Featurizer(model, tokenizer, config, optimizer_state=moments,
                                tracking=tracking)
    notes += _featurizer_notes(featurizer, config)
    if not featurizer.config.unit_normalize and options.storage_dtype == "float16":
        options = dataclasses.replace(options, storage_dtype="float32")
        notes.append("vectors are not unit normalized: stored as float32 (float16 overflows "
                     "beyond 65,504)")
    manifest = Manifest(
        model=ModelRecord(path=str(model_dir.resolve()), fingerprint=fp,
                          architecture=type(model).__name__.replace("FSDP", ""),
                          tokenizer=type(tokenizer).__name__, given=source.given,
                          base_model=None if source.base is None else str(source.base.resolve())),
        engine=featurizer.record(),
        corpus=CorpusRecord(files=tuple(CorpusFile(k["name"], k["fingerprint"])
                                        for k in sources),
                            options=corpus_options, documents=scan.documents,
                            examples=scan.examples),
        layout=Layout(shard_size=options.shard_size, storage_dtype=options.storage_dtype,
                      shard_unit="examples", vector_codec="raw"),
        build=BuildRecord(index=options, ranks=ranks.world),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__)
    n_shards = manifest.n_shards
    complete = _on_main(ranks, lambda: _open_or_create(out, manifest, moments, scan, key,
                                                       rescanned))
    store = IndexStore.open(out, mode="r+")
    # resuming: trust no shard unchecked; the ranks verify the complete shards between them
    broken = _verify_shards(ranks, store, complete)
    todo = [i for i in range(n_shards) if i not in set(complete) - set(broken)]
    mine = assign_shards(todo, scan.shards.tokens, ranks.world)[ranks.rank]

    summary = BuildSummary(index=out, documents=scan.documents, shards_total=n_shards,
                           shards_already_complete=len(complete) - len(broken),
                           skipped_empty=scan.empty, skipped_bad=scan.bad, ranks=ranks.world,
                           skipped_examples=scan.examples_of_bad + scan.examples_of_empty,
                           scanned=rescanned, scan_bytes_read=scan.bytes_read,
                           notes=notes, max_len=featurizer.config.max_len,
                           tracked_share=round(featurizer.tracking.share, 4),
                           second_moments=None if moments is None else moments.source)
    before = READ.bytes
    written, examples, tokens = _featurize_shards(ranks, featurizer, store, files,
                                                  corpus_options, scan, mine, options,
                                                  progress)
    totals = distributed.gather(ranks, (written, examples, tokens, READ.bytes - before))
    summary.shards_written = sum(t[0] for t in totals)
    summary.bytes_read = [t[3] for t in totals]
    if ranks.is_main:          # the other ranks are done; rank 0 checks and builds BM25 alone
        missing = store.unfinished_shards()
        if missing:
            raise BuildError(f"{out}: shards {missing[:10]} are still incomplete; rerun the "
                             f"same command to finish them")
        summary.examples = sum(store.complete_shards().values())
        write_row_table(store)               # id -> (shard, row), for reads by id
        if options.bm25:
            summary.bm25_documents = _build_bm25(store)
    summary.tokens = sum(t[2] for t in totals)
    summary.seconds = round(time.perf_counter() - started, 2)
    summary.tokens_per_s = round(summary.tokens / max(summary.seconds, 1e-9), 1)
    return summary


def _stored_scan(out: str, key: dict) -> CorpusScan | None:
    """The scan stored in the index at ``out`` when it was made from the same files (name,
    size, mtime, fingerprint), reader options, tokenizer, max_len and shard size."""
    try:
        stored = IndexStore.open(out).read_scan()
    except IndexUnusable:
        return None
    if stored is None or stored[1].get("key") != key:
        return None
    return scan_from_record(*stored)


def _open_or_create(out: str, manifest: Manifest, moments: SecondMoments | None,
                    scan: CorpusScan, key: dict, rescanned: bool) -> list[int]:
    """Create the index, or check that the existing one was built with the same settings, and
    make sure it holds the second moments and the corpus scan. Returns the shards marked
    complete (to verify: ``_verify_shards``)."""
    try:
        store = IndexStore.open(out, mode="r+")
    except IndexMissing:
        store = IndexStore.create(out, manifest)
    except NotAnIndex as e:
        raise NotAnIndex(f"{e}; choose another --out (or --overwrite to replace it)") from None
    except IndexUnusable as e:
        raise type(e)(f"{e}; use another --out, or --overwrite to replace it") from None
    else:
        old = store.manifest.layout
        if old.shard_unit != "examples":
            raise SettingsMismatch(
                f"{out}: an index of schema {store.manifest.schema_version} with shards of "
                f"{old.shard_size} documents; it stays searchable as it is, but this tda builds "
                f"shards of examples and cannot resume it: build into another --out, or "
                f"--overwrite")
        diffs = store.manifest.differences(manifest)
        if diffs:
            raise SettingsMismatch(f"{out} is an index built with other settings (the index's "
                                   f"vs this build's, model {manifest.model.path}); refusing "
                                   f"to mix (" + "; ".join(diffs[:5]) + "). Use another "
                                   "--out, or --overwrite to replace it.")
    if rescanned:
        stored = store.read_scan()
        if stored is not None and not scan_from_record(*stored).shards.equals(scan.shards):
            raise SettingsMismatch(f"{out}: the corpus does not scan as it did when the index "
                                   f"was built (its shards would hold other examples); use "
                                   f"another --out, or --overwrite")
        store.write_scan(*scan_record(scan, key))
    if moments is not None and store.read_moments() is None:
        store.write_moments(moments)
    unreadable = store.unreadable_shards()
    for shard, why in sorted(unreadable.items()):
        log.warning(f"rebuilding {out}: shard {shard:06d}: metadata unreadable ({why})")
        store.drop_shard(shard)
    complete = store.complete_shards()
    stray = sorted(i for i in complete if i >= manifest.n_shards)
    if stray:
        raise BuildError(f"{out}: has shards beyond the corpus ({stray[:5]}): not this corpus")
    return sorted(complete)


def _verify_shards(ranks, store: IndexStore, complete: list[int]) -> list[int]:
    """Each rank reads back its share of the complete shards against their checksums and drops
    the broken ones; returns every rank's broken shards."""
    broken = []
    for shard in complete[ranks.rank::ranks.world]:
        problem = store.verify_shard(shard)
        if problem:
            log.warning(f"rebuilding {problem}")
            store.drop_shard(shard)
            broken.append(shard)
    return sorted(s for got in distributed.gather(ranks, broken) for s in got)


def assign_shards(todo: list[int], tokens, world: int) -> list[list[int]]:
    """Split the shards to build into ``world`` runs of consecutive shards with about equal
    tokens (rank r gets the shards whose middle token falls in the r-th share): each rank
    reads one stretch of the corpus, and the ranks finish together."""
    weights = [max(int(tokens[s]), 1) for s in todo]
    total = sum(weights)
    out: list[list[int]] = [[] for _ in range(world)]
    done = 0
    for shard, w in zip(todo, weights):
        rank = min(world - 1, int((done + w / 2) * world // total))
        out[rank].append(shard)
        done += w
    return out


def _featurizer_notes(featurizer: Featurizer, config: TrackStarConfig) -> list[str]:
    """What `tda index` tells the user it chose or left out."""
    notes = []
    if config.max_len is None:
        notes.append(f"max_len {featurizer.config.max_len} (the model's positions, at most "
                     f"{MAX_LEN_CAP}); longer documents become chunks")
    warning = share_warning(featurizer.tracking)
    if warning:
        notes.append(f"warning: {warning}")
    notes += featurizer.tracking.notes
    sm = featurizer.second_moments
    if sm is not None and sm.optimizer == "estimated":
        est = sm.extra.get("estimate", {})
        notes.append(f"no optimizer state: second moments estimated from "
                     f"{est.get('examples')} examples of {est.get('documents')} documents "
                     f"sampled at random (seed {est.get('seed')}) from the corpus's "
                     f"{est.get('corpus_documents')}")
    return notes


def _second_moments(ranks, model, tokenizer, model_dir, files, corpus_options, config,
                    options: IndexOptions, out, n_documents, tracking) -> SecondMoments | None:
    """The optimizer state to correct with: the given path, else the model directory's, else
    an estimate from a seeded random sample of the corpus's documents, computed by every rank
    on its device from its share of the sample and added up across ranks (stored in the index
    and reused on resume)."""
    if config.correction == "none":
        return None
    factored = config.correction == "factored"
    source = Path(options.optimizer_state) if options.optimizer_state else None
    if source is None and has_state_file(model_dir):
        source = model_dir
    if source is not None:
        return load_second_moments(source, model, factors_only=factored)

    def stored():
        try:                  # a resumed build reuses the estimate stored in its index
            found = IndexStore.open(out).read_moments()
        except IndexUnusable:
            return None
        return found if found is not None and found.optimizer == "estimated" else None

    reuse = _on_main(ranks, stored)
    if reuse is not None:
        return reuse
    seed = config.seed
    sample = sample_indices(n_documents, options.estimate_examples, seed)
    mine = set(sample[ranks.rank::ranks.world])
    resolved = resolve_config(config, model)
    seqs = [e.sequence for i, doc in enumerate(valid_documents(files, corpus_options))
            if i in mine for e in chunk_document(doc, tokenizer, resolved.max_len)]
    estimator = moment_featurizer(model, tokenizer, resolved, tracking)
    batch = resolved.batch_size
    batches = max(distributed.gather(ranks, -(-len(seqs) // batch)))
    reduce = lambda t: distributed.all_reduce_sum(ranks, t)  # noqa: E731
    moments = estimate_moments(estimator, seqs, factored, batch, reduce, batches)
    n = moments.extra["n_examples"]
    moments.source = (f"estimated: mean squared per-example gradient over {n} examples of "
                      f"{len(sample)} documents sampled at random (seed {seed}) from "
                      f"{n_documents}")
    moments.extra["estimate"].update(documents=len(sample), corpus_documents=n_documents,
                                     seed=seed)
    return moments


def _featurize_shards(ranks, featurizer: Featurizer, store: IndexStore, files, corpus_options,
                      scan: CorpusScan, mine: list[int], options: IndexOptions,
                      show_progress: bool):
    """Featurize and write this rank's shards, reading each from its start in the corpus.
    With FSDP every rank steps in lockstep (a rank without work runs a throwaway batch)
    because each forward gathers weights from all ranks."""
    max_len = featurizer.config.max_len
    layout = store.manifest.layout
    bar = _Bar(sum(layout.units_in(s, scan.examples) for s in mine), ranks.world) \
        if show_progress and ranks.is_main else None
    reader = ShardReader([Path(f) for f in files], corpus_options, featurizer.tokenizer,
                         max_len)
    written = examples = tokens = 0

    def work():
        for shard in mine:
            exs = reader.read(scan.shards.start(shard), layout.units_in(shard, scan.examples))
            rows = ShardRows.empty(exs, featurizer.dim)      # filled batch by batch
            batches = budget_batches([e.sequence for e in exs], options.batch_tokens)
            for j, idx in enumerate(batches):
                yield shard, rows, idx, j == len(batches) - 1

    items = work()
    dummy = collate([featurizer.example_sequences(["a b"])[0]], featurizer.pad_id) \
        if options.fsdp else None
    shard_started = time.perf_counter()
    while True:
        item = next(items, None)
        if options.fsdp and not distributed.any_true(ranks, item is not None):
            break
        if item is None:
            if not options.fsdp:
                break
            featurizer.featurize_batch(dummy)
            continue
        shard, rows, idx, last = item
        feats = featurizer.featurize_batch(collate([rows.sequences[i] for i in idx],
                                                   featurizer.pad_id))
        rows.fill(idx, feats.vectors.numpy(), feats.norm.numpy(), feats.loss.numpy(),
                  feats.n_tokens.numpy())
        n_tok = int(feats.n_tokens.sum())
        tokens += n_tok
        if bar:
            bar.advance(n_tok, len(rows) if last else 0)
        if last:
            store.write_shard(shard, rows, seconds=time.perf_counter() - shard_started)
            shard_started = time.perf_counter()
            written += 1
            examples += len(rows)
    if bar:
        bar.close()
    return written, examples, tokens


def _bm25_ok(path: Path, documents: int) -> bool:
    """The Lucene index opens and holds the number of documents it was built with."""
    try:
        return path.is_dir() and len(bm25.BM25(path)) == documents
    except Exception:  # noqa: BLE001 - any failure to open means: rebuild it
        return False


def _build_bm25(store: IndexStore) -> int | None:
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
        for s in range(store.manifest.n_shards):
            data = store.read_shard(s, ("ids", "doc_ids", "text"))
            for row, (i, d, t) in enumerate(zip(data["ids"].tolist(), data["doc_ids"].tolist(),
                                                data["text"].tolist())):
                yield {"id": i, "contents": t, "doc_id": d, "shard": s, "row": row}

    n = bm25.build(tmp, docs())
    crash_point("bm25")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    store.set_bm25_status({"complete": True, "documents": n})
    return n


class _Bar:
    """Rank 0's progress: examples, tokens/s, ETA."""

    def __init__(self, total: int, world: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = progress_bar(TextColumn("[bold]index[/] rank 0/{task.fields[world]}"),
                                     BarColumn(), MofNCompleteColumn(), TextColumn("examples"),
                                     TextColumn("{task.fields[tps]} tok/s"),
                                     TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn())
        self.task = self.progress.add_task("index", total=total, world=world, tps="-")
        self.tokens = 0
        self.start = time.perf_counter()
        self.progress.start()

    def advance(self, tokens: int, examples: int) -> None:
        self.tokens += tokens
        tps = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=examples, tps=f"{tps:,.0f}")

    def close(self) -> None:
        self.progress.stop()
