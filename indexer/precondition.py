"""`tda precondition`: fit a correction profile and transform every example into it.

Steps, each resumable: (1) settings recorded; (2) R fitted from a sample of training vectors
(and the task's queries) and its blocks R^-1/2 stored; (3) each shard's vectors transformed by
a dask task (a LocalCluster, or an existing scheduler) and written with a marker; (4) the
profile marked complete. Rerunning the same command continues where it stopped; other settings
rebuild the profile from scratch; a complete profile is replaced only with ``overwrite``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from tda.indexer.profiles import (MODES, ProfileError, _read_blocks, block_slices, fit,
                                  profile_group, read_queries, sample_phi)
from tda.indexer.faults import crash_point
from tda.indexer.lock import IndexLock
from tda.indexer.store import IndexStore
from tda.schemas.index import COMPLETE_KEY, PROFILES, PreconditionOptions


def default_components(d: int) -> int:
    """K ~ 1.5% of d (the paper: 1,000 of 65,536)."""
    return max(1, round(0.015 * d))


def build_profile(index: str | Path, name: str, queries: str | Path | None = None,
                  options: PreconditionOptions = PreconditionOptions(), *,
                  overwrite: bool = False, scheduler: str | None = None, workers: int = 2,
                  model_dir: str | Path | None = None, log=print) -> dict:
    """Build (or finish) profile ``name``; returns its summary."""
    with IndexLock(index, f"tda precondition {name}"):
        return _build_profile(index, name, queries, options, overwrite, scheduler, workers,
                              model_dir, log)


def _build_profile(index, name, queries, options, overwrite, scheduler, workers, model_dir,
                   log) -> dict:
    start = time.perf_counter()
    store = IndexStore.open(index, mode="r+")
    if not name or "/" in name or name.startswith("."):
        raise ProfileError(f"profile name {name!r}: use letters, digits, '-' or '_'")
    d = store.manifest.dim
    mode = options.mode if options.mode != "auto" else ("mixed" if queries else "train")
    if mode not in MODES:
        raise ProfileError(f"mode must be one of {MODES} or auto, got {options.mode!r}")
    if mode == "mixed" and not queries:
        raise ProfileError("mode 'mixed' needs --queries (the task's queries)")
    components = options.components or default_components(d)
    if not 1 <= components <= d:
        raise ProfileError(f"components K={components} must be between 1 and d={d}")
    query_pairs = read_queries(queries) if queries else None
    settings = {"mode": mode, "train_sample": options.train_sample, "components": components,
                "damping": options.damping, "seed": options.seed,
                "queries": None if query_pairs is None else
                {"file": str(Path(queries).resolve()), "count": len(query_pairs),
                 "fingerprint": _pairs_fingerprint(query_pairs)}}
    group = _prepare(store, name, settings, overwrite, log)
    if not group.attrs.get("transform"):
        _fit_and_store(store, group, settings, query_pairs, model_dir, log)
    _transform_shards(store, name, scheduler, workers, log)
    info = dict(group.attrs["transform"])
    summary = {"profile": name, **settings, **info, "dim": d,
               "examples": sum(store.complete_shards(name).values()),
               "seconds": round(time.perf_counter() - start, 2)}
    group.attrs[COMPLETE_KEY] = summary
    return summary


def _pairs_fingerprint(pairs) -> str:
    import hashlib
    import json
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def _prepare(store: IndexStore, name: str, settings: dict, overwrite: bool, log):
    group = profile_group(store, name)
    if group is not None:
        if group.attrs.get(COMPLETE_KEY) and not overwrite:
            raise ProfileError(f"{store.url}: profile {name!r} exists; pass --overwrite to "
                               f"replace it")
        if overwrite or group.attrs.get("settings") != settings:
            if not overwrite:
                log(f"profile {name!r}: an unfinished build with other settings; starting over")
            del store.root[f"{PROFILES}/{name}"]
            group = None
        else:
            log(f"profile {name!r}: resuming an unfinished build")
    if group is None:
        group = store.root.require_group(PROFILES).create_group(name)
        group.attrs["settings"] = settings
    return group


def _fit_and_store(store, group, settings, query_pairs, model_dir, log) -> None:
    slices = block_slices(store)
    train_phi = sample_phi(store, settings["train_sample"], settings["seed"])
    eval_phi = None
    if query_pairs is not None:
        from tda.indexer.encoder import QueryEncoder
        encoder = QueryEncoder(store, model_dir)
        try:
            feats = encoder.featurizer.featurize(encoder.featurizer.query_sequences(query_pairs))
        except ValueError as e:
            raise ProfileError(f"{settings['queries']['file']}: {e}") from None
        normalized = encoder.config.unit_normalize
        eval_phi = feats.vectors * feats.norm[:, None] if normalized else feats.vectors
    log(f"fitting R ({settings['mode']}) from {len(train_phi)} training vectors"
        + (f" and {len(eval_phi)} queries" if eval_phi is not None else ""))
    blocks, info = fit(train_phi, eval_phi, slices, settings["mode"], settings["components"],
                       settings["damping"])
    if "transform" in group:
        del group["transform"]
    t = group.create_group("transform")
    for i, b in enumerate(blocks):
        arr = t.create_array(f"{i:05d}", shape=tuple(b.shape), dtype="float32")
        arr[:] = b.float().numpy()
    crash_point("profile-transform")
    group.attrs["transform"] = {**info, "components": settings["components"],
                                "train_vectors": len(train_phi),
                                "queries": 0 if eval_phi is None else len(eval_phi)}


def transform_shard(index: str, name: str, shard: int) -> int:
    """One dask task: transform a base shard into the profile (GPU when there is one)."""
    store = IndexStore.open(index, mode="r+")
    group = profile_group(store, name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    blocks = [b.to(device) for b in _read_blocks(group)]
    slices = block_slices(store)
    v = torch.from_numpy(store.read_shard(shard, ("vectors",), verify=True)["vectors"]) \
        .to(device).double()
    from tda.engine import preconditioner as P
    out = P.normalize_rows(P.apply_blocks(blocks, slices, v)).float().cpu().numpy()
    store.write_profile_shard(name, shard, out, store.manifest.layout["storage_dtype"])
    return int(out.shape[0])


def _transform_shards(store: IndexStore, name: str, scheduler, workers, log) -> None:
    base = sorted(store.complete_shards())
    done = set(store.complete_shards(name))
    todo = [s for s in base if s not in done]
    if not todo:
        return
    log(f"transforming {len(todo)} of {len(base)} shards")
    import logging

    import dask
    from dask.distributed import Client, LocalCluster
    dask.config.set({"distributed.logging.distributed": "error"})
    cluster = None if scheduler else LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR)
    from distributed import KilledWorker
    with Client(scheduler or cluster) as client:
        futures = client.map(transform_shard, [store.url] * len(todo), [name] * len(todo), todo,
                             pure=False)
        try:
            client.gather(futures)
        except KilledWorker as e:
            raise ProfileError(f"profile {name!r}: a dask worker died transforming shards "
                               f"({e}); the finished shards are kept: rerun to resume") from None
    if cluster is not None:
        cluster.close()
