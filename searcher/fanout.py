"""Dense search over every shard of an index: in this process (threads), or fanned out over
dask workers; each group answers with its top k and the caller merges.

Where it runs (``plan``):

- in process, no cluster, when nothing asks for one and the index fits this process's memory
  budget (or is searched compressed or streamed): the groups are searched on threads;
- a dask ``LocalCluster`` when ``workers`` is given, when the index is larger than one
  worker's budget and this machine has the memory for enough workers, or with several GPUs
  (one worker per GPU, each holding only its own group, on its own device);
- an existing scheduler (``tcp://HOST:PORT``) for many machines, whose workers need tda
  installed and the index path readable.

Kind ``auto``: exact in memory when each group fits its budget, else the compressed ANN with
exact re-scoring, with a warning saying so and how to get exact answers instead (``stream``).

On dask, group g has a preferred worker; a worker that dies or restarts loses its groups and
the next query re-places them on the live workers (a group loads lazily wherever it lands).
A query not answered within ``timeout_s`` fails naming the groups that did not answer.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tda.cluster import DaskCluster
from tda.errors import IndexIncomplete, QueryError, SearchFailed
from tda.schemas.options import AnnOptions
from tda.searcher.dense import GroupResult, ShardGroup, load_faiss, merge, storage_bytes
from tda.store.index import IndexStore

_LOADED: dict[tuple, ShardGroup] = {}       # per worker process: loaded shard groups


@dataclass(frozen=True)
class GroupSpec:
    """What a worker needs to load one group (hashable: the key of the loaded group)."""

    index: str
    shards: tuple[int, ...]
    kind: str
    memory_budget: int
    profile: str | None
    allow_partial: bool
    ann: AnnOptions = AnnOptions()
    device: int | None = None

    def load(self) -> ShardGroup:
        """The group, loaded (its shards checked as they load)."""
        return ShardGroup(self.index, list(self.shards), self.kind, self.memory_budget,
                          profile=self.profile, allow_partial=self.allow_partial,
                          ann=self.ann, device=self.device)

    def describe(self) -> str:
        """'group of shards A..B (n shards[, profile])', for messages."""
        s = self.shards
        span = f"{s[0]}..{s[-1]}" if len(s) > 1 else f"{s[0]}" if s else "none"
        profile = f", profile {self.profile}" if self.profile else ""
        return f"group of shards {span} ({len(s)} shards{profile})"


def _group(spec: GroupSpec) -> ShardGroup:
    if spec not in _LOADED:
        _LOADED[spec] = spec.load()
    return _LOADED[spec]


def load_group(spec: GroupSpec) -> list[str]:
    """Load a group on this worker (its shards checked as they load); returns the problems
    of the shards it skipped (with allow_partial)."""
    return _group(spec).skipped


def search_group(spec: GroupSpec, queries: np.ndarray, k: int) -> tuple[GroupResult, list[str]]:
    """Top ``k`` of group ``spec`` for ``queries`` [m, d] float32, and its warnings."""
    group = _group(spec)
    return group.search(queries, k), list(group.warnings)


def _worker_lost(error: BaseException | None) -> bool:
    """Errors that mean the worker went away, not that the search failed."""
    names = {type(error).__name__} | {c.__name__ for c in type(error).__mro__}
    return bool(names & {"KilledWorker", "CommClosedError", "StreamClosedError",
                         "FutureCancelledError", "CancelledError"})


def split(shards: list[int], groups: int) -> list[list[int]]:
    """Round-robin: shard s goes to group s mod groups (empty groups dropped)."""
    out = [shards[g::groups] for g in range(groups)]
    return [g for g in out if g]


@dataclass
class Plan:
    """Where and how an index is searched (see the module docstring)."""

    where: str                       # "process" | "local-cluster" | "scheduler"
    workers: int                     # processes (1 in process)
    groups: int
    kind: str                        # resolved: exact | stream | ann | FAISS kind
    devices: list[int] = field(default_factory=list)   # GPU of each group (empty: CPU)
    warnings: list[str] = field(default_factory=list)


def available_memory() -> int:
    """Bytes of memory available to new allocations on this machine."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def plan(total_bytes: int, kind: str = "auto", workers: int | None = None,
         scheduler: str | None = None, memory_budget: int = 4 << 30, gpus: int = 0,
         cpus: int | None = None, memory: int | None = None) -> Plan:
    """Decide where the search runs, in how many groups, and what kind ``auto`` stands for.
    ``total_bytes``: the index's stored vector bytes; ``memory_budget``: per process (one
    worker, or this process); ``gpus``: FAISS GPUs visible; ``workers``: with a scheduler,
    its live workers."""
    cpus = cpus or os.cpu_count() or 1
    memory = available_memory() if memory is None else memory
    exactish = kind in ("auto", "exact")
    if scheduler:
        where, n = "scheduler", max(1, workers or 1)
    elif workers:
        where, n = "local-cluster", workers
    elif exactish and gpus > 1:
        where, n = "local-cluster", gpus                    # one worker per GPU
    elif exactish and total_bytes > memory_budget and total_bytes <= 0.8 * memory:
        where, n = "local-cluster", math.ceil(total_bytes / memory_budget)
    else:
        where, n = "process", 1
    if where == "process":
        groups = 1 if kind in ("ann", "stream") or gpus else cpus
    else:
        groups = n
    warnings: list[str] = []
    resolved = kind
    if kind == "auto":
        resolved = "exact" if total_bytes <= memory_budget * n else "ann"
        if resolved == "ann":
            groups = 1 if where == "process" else groups
            warnings.append(
                f"the index's vectors ({total_bytes / 2**30:.1f} GiB) are over the memory "
                f"budget ({memory_budget * n / 2**30:.1f} GiB): searching compressed codes "
                f"(IVF-PQ) with exact re-scoring of the candidates (kind 'ann'); for exact "
                f"answers use --faiss-index stream (reads every vector per query) or a larger "
                f"budget")
    devices = list(range(min(gpus, groups))) if gpus and resolved == "exact" else []
    if devices:
        groups = len(devices)
    return Plan(where, n, groups, resolved, devices, warnings)


class DenseSearch:
    """Exact (or approximate) inner-product search over every shard of an index: its own
    vectors, or a correction profile's transformed ones (loaded on first use)."""

    def __init__(self, index: str, *, scheduler: str | None = None, workers: int | None = None,
                 groups: int | None = None, faiss_index: str = "auto",
                 memory_budget: int = 4 << 30, allow_partial: bool = False,
                 ann: AnnOptions = AnnOptions(), timeout_s: float = 120.0,
                 gpus: int | None = None):
        self.index, self.memory_budget = str(index), memory_budget
        self.allow_partial, self.ann, self.timeout_s = allow_partial, ann, timeout_s
        self.store = IndexStore.open(self.index)
        self.dim = self.store.manifest.dim
        self.shards = sorted(self.store.complete_shards())
        n = sum(self.store.complete_shards().values())
        total = storage_bytes(n, self.dim, self.store.manifest.layout.storage_dtype)
        if gpus is None:
            faiss = load_faiss()
            gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self.client = self.cluster = None
        if scheduler:
            self.cluster = DaskCluster(scheduler)
            self.client = self.cluster.client
        try:
            self.plan = plan(total, faiss_index, len(self.cluster.workers) if scheduler
                             else workers, scheduler, memory_budget, gpus)
            if groups:
                self.plan.groups = groups
            self.kind = self.plan.kind
            self.warnings: list[str] = list(self.plan.warnings)
            self._loaded: dict[GroupSpec, ShardGroup] = {}
            self._pool: ThreadPoolExecutor | None = None
            if self.plan.where == "process":
                self._pool = ThreadPoolExecutor(max(1, self.plan.groups),
                                                thread_name_prefix="tda-dense")
            elif self.plan.where == "local-cluster":
                self.cluster = DaskCluster(None, self.plan.workers)
                self.client = self.cluster.client
            self._placements: dict[str | None, dict[GroupSpec, str | None]] = {}
            self._placement(None)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ set-up
    def _live(self) -> list[str]:
        return self.cluster.workers

    def _specs(self, profile: str | None) -> list[GroupSpec]:
        devices = self.plan.devices
        return [GroupSpec(self.index, tuple(g), self.kind, self.memory_budget, profile,
                          self.allow_partial, self.ann, devices[i] if i < len(devices) else None)
                for i, g in enumerate(split(self.shards, self.plan.groups))]

    def _placement(self, profile: str | None) -> dict[GroupSpec, str | None]:
        """Which worker holds which group of ``profile`` (loading them the first time)."""
        if profile not in self._placements:
            if profile is not None:
                done = set(self.store.complete_shards(profile))
                missing = [s for s in self.shards if s not in done]
                if missing:
                    raise IndexIncomplete(f"{self.index}: profile {profile!r} lacks shards "
                                     f"{missing[:5]}; rebuild it with tda precondition")
            specs = self._specs(profile)
            if self.client is None:
                groups = list(self._pool.map(lambda s: s.load(), specs))
                for spec, g in zip(specs, groups):
                    self._loaded[spec] = g
                    self._note([f"skipped {p}" for p in g.skipped])
                self._placements[profile] = {s: None for s in specs}
            else:
                live = self._live()
                placement = {s: live[i % len(live)] for i, s in enumerate(specs)}
                self._load_on(placement)
                self._placements[profile] = placement
        return self._placements[profile]

    def _load_on(self, placement: dict[GroupSpec, str]) -> None:
        futures = [self.client.submit(load_group, spec, workers=[w], allow_other_workers=False,
                                      pure=False) for spec, w in placement.items()]
        for skipped in self.client.gather(futures):
            self._note([f"skipped {p}" for p in skipped])

    def _note(self, messages: list[str]) -> None:
        for m in messages:
            if m not in self.warnings:
                self.warnings.append(m)

    def _replace_lost(self, placement: dict[GroupSpec, str], specs=None) -> None:
        """Move groups whose worker is gone (or ``specs``) to live workers, least loaded
        first."""
        live = self._live()
        if not live:
            raise SearchFailed(f"{self.index}: no dask workers left to search on")
        moved = {s: w for s, w in placement.items() if w not in live or (specs and s in specs)}
        if not moved:
            return
        load = {w: 0 for w in live}
        for s, w in placement.items():
            if s not in moved and w in load:
                load[w] += 1
        for spec in moved:
            w = min(live, key=lambda x: (load[x], x))
            placement[spec] = w
            load[w] += 1

    @property
    def placement(self) -> dict[GroupSpec, str | None]:
        """The groups of the index's own vectors and the worker holding each (None: this
        process)."""
        return self._placement(None)

    # ------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, profile: str | None = None) -> GroupResult:
        """Top ``k`` for each of ``queries`` [m, d] float32 over the whole index."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise QueryError(f"query vectors have d={queries.shape[1]}, the index {self.dim}")
        placement = self._placement(profile)
        if self.client is None:
            groups = [self._loaded[s] for s in placement]
            if queries.shape[0] == 1 and self.kind == "exact" and len(groups) > 1:
                parts = list(self._pool.map(lambda g: g.search(queries, k), groups))
            else:              # batched scoring uses every core in one group at a time
                parts = [g.search(queries, k) for g in groups]
            for g in groups:
                self._note(g.warnings)
            return merge(parts, k)
        return merge(self._fan_out(placement, queries, k), k)

    def _fan_out(self, placement, queries, k) -> list[GroupResult]:
        """Each group's answer from its worker. A group whose worker leaves meanwhile is
        re-placed on a live worker and asked again at once; one not answered within
        ``timeout_s`` fails the query, naming it."""
        import time

        from dask.distributed import wait
        self._replace_lost(placement)
        deadline = time.monotonic() + self.timeout_s
        results: dict[GroupSpec, GroupResult] = {}
        asked: dict[GroupSpec, object] = {}
        failures: dict[GroupSpec, str] = {}

        def ask(spec):
            asked[spec] = self.client.submit(search_group, spec, queries, k,
                                             workers=[placement[spec]],
                                             allow_other_workers=False, pure=False)
        for spec in placement:
            ask(spec)
        while asked:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                wait(list(asked.values()), timeout=min(0.5, left), return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            live = set(self._live())
            lost = []
            for spec, f in list(asked.items()):
                if f.status == "finished":
                    res, warnings = f.result()
                    results[spec] = res
                    self._note(warnings)
                    del asked[spec]
                elif f.status in ("error", "cancelled") or placement[spec] not in live:
                    problem = f"{type(f.exception()).__name__}: {f.exception()}" \
                        if f.status == "error" else "its worker left"
                    if f.status == "error" and not _worker_lost(f.exception()):
                        raise SearchFailed(f"{self.index}: {spec.describe()} failed: {problem}")
                    f.cancel()
                    failures[spec] = problem
                    lost.append(spec)
            if lost:
                self._replace_lost(placement, specs=set(lost))
                for spec in lost:
                    ask(spec)
        if asked:
            for f in asked.values():
                f.cancel()
            names = "; ".join(f"{s.describe()} on {placement[s]}"
                              + (f" (after: {failures[s]})" if s in failures else "")
                              for s in asked)
            raise SearchFailed(f"{self.index}: not answered within {self.timeout_s:g} s: "
                             f"{names}")
        return [results[s] for s in placement]

    def close(self) -> None:
        """Stop the threads, and the dask client (and the local cluster it started)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
        if self.cluster is not None:
            self.cluster.close()
