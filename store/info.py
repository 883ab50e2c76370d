"""`tda info`: what an index holds, and the problems visible without reading its data.

Reads the manifest and every part's markers, never the vectors: cheap at any size (`tda
verify` reads everything). Problems it can see (shards unfinished or with unreadable
metadata, a model that is not the index's) are listed in ``problems``.
"""
from __future__ import annotations

from pathlib import Path

from tda.schemas.fields import to_data
from tda.store.index import IndexStore
from tda.store.lock import ensure_not_busy


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def index_info(url: str | Path, model_dir: str | Path | None = None) -> dict:
    """Manifest, counts, size on disk, incomplete shards, BM25 and profiles, as a dict with a
    ``problems`` list. ``model_dir``: also check that it is the index's model (its
    fingerprint; ModelMismatch when not). Raises IndexBusy while a writer holds the index."""
    ensure_not_busy(url)
    store = IndexStore.open(url)
    m = store.manifest
    if model_dir is not None:
        from tda.engine.model import check_model
        check_model(model_dir, m.model.fingerprint, f"{url}: built from {m.model.path}",
                    m.model.base_model)
    status = store.shard_status()
    unreadable = store.unreadable_shards()
    complete = {i: s["rows"] for i, s in status.items() if s}
    n_shards = m.n_shards
    local = store.local_path
    profiles = {}
    for name in store.profile_names():
        p = store.profile(name)
        profiles[name] = {"complete": p.is_complete, **(p.summary or {"settings": p.settings})}
    shards = {"expected": n_shards, "complete": len(complete),
              "incomplete": sorted(i for i, s in status.items() if not s and i not in unreadable),
              "missing": sorted(set(range(n_shards)) - set(status))}
    problems = [f"{url}: shard {i:06d}: metadata unreadable ({why}); `tda index` (the same "
                f"command) rebuilds it" for i, why in sorted(unreadable.items())]
    if shards["incomplete"] or shards["missing"]:
        problems.append(f"{url}: unfinished: incomplete shards {shards['incomplete'][:20]}, "
                        f"missing {shards['missing'][:20]}; rerun `tda index` to finish")
    return {
        "index": str(url),
        "schema_version": m.schema_version,
        "tool_version": m.tool_version,
        "created": m.created,
        "model": to_data(m.model),
        "dim": m.dim,
        "config": m.engine.config.to_dict(),
        "tracked_weights": len(m.engine.tracked),
        "tracked_share": to_data(m.engine.tracked_share),
        "second_moments": to_data(m.engine.second_moments),
        "corpus": {"documents": m.corpus.documents, "files": [f.name for f in m.corpus.files]},
        "layout": to_data(m.layout),
        "build": to_data(m.build),
        "shards": shards,
        "unreadable_shards": sorted(unreadable),
        "examples": sum(complete.values()),
        "bm25": store.bm25_status,
        "profiles": profiles,
        "bytes_on_disk": _disk_bytes(local) if local else None,
        "problems": problems,
    }


def render_info(info: dict) -> str:
    """The info dict as a short human-readable report (problems are not included)."""
    sh = info["shards"]
    cfg = info["config"]
    size = info["bytes_on_disk"]
    lines = [
        f"index       {info['index']}  (schema {info['schema_version']}, tda "
        f"{info['tool_version']}, created {info['created']})",
        f"model       {info['model']['path']}  [{info['model']['architecture']}, "
        f"fingerprint {info['model']['fingerprint']}]",
        f"vectors     d={info['dim']} from {info['tracked_weights']} weights; k="
        f"{cfg['projection_dim']} x{cfg['projection_blocks']} blocks, correction="
        f"{cfg['correction']}, unit_normalize={cfg['unit_normalize']}, max_len={cfg['max_len']}",
        f"moments     {(info['second_moments'] or {}).get('source', 'none')}",
        *([f"tracked     {share['share']:.1%} of the model's matrix parameters "
           f"({share['tracked']:,} of {share['matrix_parameters']:,})"
           + ("; narrowed by include/exclude" if share["narrowed"] else "")
           + "".join(f"\n            {n}" for n in share["left_out"][:10])]
          if (share := info.get("tracked_share")) else []),
        f"corpus      {info['corpus']['documents']} documents from "
        f"{len(info['corpus']['files'])} file(s)",
        f"examples    {info['examples']} in {sh['complete']}/{sh['expected']} complete shards "
        f"({info['layout']['storage_dtype']}, {info['layout']['shard_size']} "
        f"{'examples' if info['layout'].get('shard_unit') == 'examples' else 'documents'}"
        f"/shard)",
    ]
    bad = info["unreadable_shards"]
    if sh["incomplete"] or sh["missing"] or bad:
        lines.append(f"unfinished  incomplete shards {sh['incomplete'][:20]}, unreadable "
                     f"{bad[:20]}, missing {sh['missing'][:20]}: rerun `tda index` to finish")
    bm25 = info["bm25"]
    lines.append(f"bm25        {bm25['documents']} documents" if bm25 and bm25.get("complete")
                 else "bm25        not built")
    if not info["profiles"]:
        lines.append("profiles    none")
    for name, p in info["profiles"].items():
        if p["complete"]:
            lam = p.get("lambda")
            lines.append(f"profile     {name}: R={p['mode']}, K={p['components']}, damping="
                         f"{p['damping']}" + (f", lambda={lam:.3f}" if lam else "")
                         + f", {p['examples']} examples")
        else:
            lines.append(f"profile     {name}: unfinished (rerun tda precondition to finish)")
    if size is not None:
        lines.append(f"on disk     {size / 2**20:,.1f} MiB")
    return "\n".join(lines)
