"""`tda info`: what an index holds."""
from __future__ import annotations

from pathlib import Path

from tda.indexer.store import IndexStore
from tda.schemas.index import PROFILES


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def index_info(url: str | Path) -> dict:
    """Manifest, counts, size on disk, incomplete shards, BM25 and profiles, as a dict."""
    store = IndexStore.open(url)
    m = store.manifest
    status = store.shard_status()
    complete = {i: s["rows"] for i, s in status.items() if s}
    n_docs = m.corpus["documents"]
    n_shards = -(-n_docs // m.layout["shard_size"])
    local = store.local_path
    from tda.indexer.profiles import profile_group
    names = sorted(store.root[PROFILES].group_keys()) if PROFILES in store.root else []
    profiles = {}
    for n in names:
        attrs = profile_group(store, n).attrs
        done = attrs.get("complete")
        profiles[n] = {"complete": bool(done), **(done or {"settings": attrs.get("settings")})}
    return {
        "index": str(url),
        "schema_version": m.schema_version,
        "tool_version": m.tool_version,
        "created": m.created,
        "model": m.model,
        "dim": m.dim,
        "config": m.featurizer["config"],
        "tracked_weights": len(m.featurizer["tracked"]),
        "second_moments": m.featurizer.get("second_moments"),
        "corpus": {"documents": n_docs, "files": [f["name"] for f in m.corpus["files"]]},
        "layout": m.layout,
        "shards": {"expected": n_shards, "complete": len(complete),
                   "incomplete": sorted(i for i, s in status.items() if not s),
                   "missing": sorted(set(range(n_shards)) - set(status))},
        "examples": sum(complete.values()),
        "bm25": store.bm25_status,
        "profiles": profiles,
        "bytes_on_disk": _disk_bytes(local) if local else None,
    }


def render_info(info: dict) -> str:
    """The info dict as a short human-readable report."""
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
        f"corpus      {info['corpus']['documents']} documents from "
        f"{len(info['corpus']['files'])} file(s)",
        f"examples    {info['examples']} in {sh['complete']}/{sh['expected']} complete shards "
        f"({info['layout']['storage_dtype']}, {info['layout']['shard_size']} docs/shard)",
    ]
    if sh["incomplete"] or sh["missing"]:
        lines.append(f"unfinished  incomplete shards {sh['incomplete'][:20]}, missing "
                     f"{sh['missing'][:20]}: rerun `tda index` to finish")
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
