"""`tda precondition`: fit a correction profile and transform every example into it.

Steps, each resumable: (1) settings recorded; (2) R fitted from a sample of training vectors
(and the task's queries) and its blocks R^-1/2 stored; (3) each shard's vectors transformed by
a dask task (a LocalCluster, or an existing scheduler) and written with a marker; (4) the
profile marked complete. Rerunning the same command continues where it stopped; other settings
rebuild the profile from scratch; a complete profile is replaced only with ``overwrite``.
The math is ``engine/preconditioner.py``; the storage ``store/profiles.py``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from tda.cluster import DaskCluster
from tda.engine import preconditioner
from tda.errors import ProfileError
from tda.log import logger
from tda.schemas.options import PreconditionOptions
from tda.schemas.queries import read_queries
from tda.store.index import IndexStore
from tda.store.lock import IndexLock
from tda.store.profiles import StoredProfile

log = logger(__name__)


def default_components(d: int) -> int:
    """K ~ 1.5% of d (the paper: 1,000 of 65,536)."""
    return max(1, round(0.015 * d))


def build_profile(index: str | Path, name: str, queries: str | Path | None = None,
                  options: PreconditionOptions = PreconditionOptions(), *,
                  overwrite: bool = False) -> dict:
    """Build (or finish) profile ``name`` of ``index`` from ``queries`` (JSON Lines of
    {prompt, target}; needed for the mixed R); returns its summary."""
    with IndexLock(index, f"tda precondition {name}"):
        return _build_profile(str(index), name, queries, options, overwrite)


def _build_profile(index: str, name: str, queries, options: PreconditionOptions,
                   overwrite: bool) -> dict:
    start = time.perf_counter()
    store = IndexStore.open(index, mode="r+")
    if not name or "/" in name or name.startswith("."):
        raise ProfileError(f"profile name {name!r}: use letters, digits, '-' or '_'")
    d = store.manifest.dim
    mode = options.mode if options.mode != "auto" else ("mixed" if queries else "train")
    if mode == "mixed" and not queries:
        raise ProfileError("mode 'mixed' needs --queries (the task's queries)")
    components = options.components or default_components(d)
    if not 1 <= components <= d:
        raise ProfileError(f"components K={components} must be between 1 and d={d}")
    query_pairs = [(q.prompt, q.target) for q in read_queries(queries, need_target=True)] \
        if queries else None
    settings = {"mode": mode, "train_sample": options.train_sample, "components": components,
                "damping": options.damping, "seed": options.seed,
                "queries": None if query_pairs is None else
                {"file": str(Path(queries).resolve()), "count": len(query_pairs),
                 "fingerprint": _pairs_fingerprint(query_pairs)}}
    if options.mixing:
        if settings["mode"] != "mixed":
            raise ProfileError(f"mixing (lambda) = {options.mixing} needs mode 'mixed'")
        settings["mixing"] = options.mixing
    profile = _prepare(store, name, settings, overwrite)
    if not profile.transform_info:
        _fit_and_store(store, profile, settings, query_pairs, options.model_dir)
    _transform_shards(store, name, options.scheduler, options.workers)
    summary = {"profile": name, **settings, **profile.transform_info, "dim": d,
               "examples": sum(store.complete_shards(name).values()),
               "seconds": round(time.perf_counter() - start, 2)}
    profile.mark_complete(summary)
    return summary


def _pairs_fingerprint(pairs) -> str:
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def _prepare(store: IndexStore, name: str, settings: dict, overwrite: bool) -> StoredProfile:
    profile = store.profile(name)
    if profile is not None:
        if profile.is_complete and not overwrite:
            raise ProfileError(f"{store.url}: profile {name!r} exists; pass --overwrite to "
                               f"replace it")
        if overwrite or profile.settings != settings:
            if not overwrite:
                log.info(f"profile {name!r}: an unfinished build with other settings; "
                         f"starting over")
            profile = None
        else:
            log.info(f"profile {name!r}: resuming an unfinished build")
    return profile if profile is not None else store.create_profile(name, settings)


def sample_phi(store: IndexStore, n: int, seed: int) -> torch.Tensor:
    """phi of ``n`` training examples drawn uniformly without replacement (all if fewer):
    stored unit vector times its norm (or the vector itself when the index is not normalized),
    [n, d] float32."""
    rows = store.complete_shards()
    offsets = np.cumsum([0] + [rows[s] for s in sorted(rows)])
    total = int(offsets[-1])
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    normalized = store.manifest.engine.config.unit_normalize
    parts = []
    for i, shard in enumerate(sorted(rows)):
        local = pick[(pick >= offsets[i]) & (pick < offsets[i + 1])] - offsets[i]
        if local.size:
            data = store.read_shard(shard, ("vectors", "norm"))
            v = data["vectors"][local]
            parts.append(v * data["norm"][local, None] if normalized else v)
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def _fit_and_store(store: IndexStore, profile: StoredProfile, settings: dict, query_pairs,
                   model_dir) -> None:
    slices = preconditioner.block_slices(store.manifest.engine.block_dims)
    train_phi = sample_phi(store, settings["train_sample"], settings["seed"])
    eval_phi = None
    if query_pairs is not None:
        from tda.searcher.encoder import QueryEncoder
        encoder = QueryEncoder(store, model_dir)
        try:
            eval_phi = encoder.phi(query_pairs)
        except ValueError as e:
            raise ProfileError(f"{settings['queries']['file']}: {e}") from None
    log.info(f"fitting R ({settings['mode']}) from {len(train_phi)} training vectors"
             + (f" and {len(eval_phi)} queries" if eval_phi is not None else ""))
    blocks, info = preconditioner.fit_blocks(train_phi, eval_phi, slices, settings["mode"],
                                             settings["components"], settings["damping"],
                                             settings.get("mixing", 0.0))
    profile.write_transform([b.float().numpy() for b in blocks],
                            {**info, "components": settings["components"],
                             "train_vectors": len(train_phi),
                             "queries": 0 if eval_phi is None else len(eval_phi)})


def transform_shard(index: str, name: str, shard: int) -> int:
    """One dask task: transform a base shard into the profile (GPU when there is one)."""
    store = IndexStore.open(index, mode="r+")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    blocks = [torch.from_numpy(b).to(device).double()
              for b in store.profile(name).read_transform()]
    slices = preconditioner.block_slices(store.manifest.engine.block_dims)
    v = torch.from_numpy(store.read_shard(shard, ("vectors",), verify=True)["vectors"]) \
        .to(device).double()
    out = preconditioner.transform(blocks, slices, v, store.manifest.engine.config
                                   .unit_normalize).float().cpu().numpy()
    store.write_profile_shard(name, shard, out)
    return int(out.shape[0])


def _transform_shards(store: IndexStore, name: str, scheduler, workers) -> None:
    base = sorted(store.complete_shards())
    done = set(store.complete_shards(name))
    todo = [s for s in base if s not in done]
    if not todo:
        return
    log.info(f"transforming {len(todo)} of {len(base)} shards")
    from distributed import KilledWorker
    with DaskCluster(scheduler, workers) as cluster:
        futures = cluster.client.map(transform_shard, [store.url] * len(todo),
                                     [name] * len(todo), todo, pure=False)
        try:
            cluster.client.gather(futures)
        except KilledWorker as e:
            raise ProfileError(f"profile {name!r}: a dask worker died transforming shards "
                               f"({e}); the finished shards are kept: rerun to resume") from None
