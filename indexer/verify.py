"""`tda verify`: read every part of an index back and check it against what was recorded."""
from __future__ import annotations

from tda.indexer import lucene
from tda.indexer.profiles import _read_blocks, profile_group
from tda.indexer.store import IndexError_, IndexStore
from tda.schemas.index import COMPLETE_KEY, PROFILES


def verify_index(url: str) -> dict:
    """{"ok": bool, "checked": {...counts}, "problems": ["part: problem", ...]}. Checks the
    manifest, the stored second moments, every shard (presence, marker, each array read back,
    sha256 checksum), the BM25 index (opens, document count, every id resolves) and every
    profile (transform blocks and transformed shards)."""
    problems: list[str] = []
    checked = {"shards": 0, "profile_shards": 0, "bm25_documents": 0, "profiles": 0}
    try:
        store = IndexStore.open(url)
        manifest = store.manifest
    except (IndexError_, ValueError, KeyError) as e:
        return {"ok": False, "checked": checked, "problems": [f"manifest: {e}"]}
    n_shards = -(-manifest.corpus["documents"] // manifest.layout["shard_size"])
    if manifest.featurizer["config"]["correction"] != "none":
        try:
            if store.read_moments() is None:
                problems.append("second_moments: missing or incomplete")
        except Exception as e:  # noqa: BLE001
            problems.append(f"second_moments: unreadable ({e})")
    status = store.shard_status()
    ids: list[str] = []
    for s in range(n_shards):
        checked["shards"] += 1
        if s not in status:
            problems.append(f"shard {s:06d}: missing")
            continue
        if not status[s]:
            problems.append(f"shard {s:06d}: incomplete (no completion marker)")
            continue
        problem = store.verify_shard(s)
        if problem:
            problems.append(problem)
        else:
            ids += store.read_shard(s, ("ids",))["ids"].tolist()
    bm25 = store.bm25_status
    if bm25 and bm25.get("complete") and store.bm25_path is not None:
        try:
            searcher = lucene.BM25(store.bm25_path)
            if len(searcher) != bm25["documents"]:
                problems.append(f"bm25: {len(searcher)} documents, built with {bm25['documents']}")
            missing = [i for i in ids if searcher.record(i) is None]
            checked["bm25_documents"] = len(ids) - len(missing)
            if missing:
                problems.append(f"bm25: {len(missing)} example ids not found (e.g. "
                                f"{missing[0]!r})")
        except Exception as e:  # noqa: BLE001 - any failure to open is a problem to report
            problems.append(f"bm25: unreadable ({type(e).__name__}: {e})")
    names = sorted(store.root[PROFILES].group_keys()) if PROFILES in store.root else []
    for name in names:
        group = profile_group(store, name)
        if not group.attrs.get(COMPLETE_KEY):
            problems.append(f"profile {name}: unfinished (never used; rerun tda precondition)")
            continue
        checked["profiles"] += 1
        try:
            blocks = _read_blocks(group)
            dims = [t["dim"] for t in manifest.featurizer["tracked"]]
            if [b.shape[0] for b in blocks] != dims:
                problems.append(f"profile {name}: transform blocks do not match the index")
        except Exception as e:  # noqa: BLE001
            problems.append(f"profile {name}: transform unreadable ({e})")
        pstatus = store.complete_shards(name)
        for s in range(n_shards):
            checked["profile_shards"] += 1
            if s not in pstatus:
                problems.append(f"profile {name} shard {s:06d}: missing")
                continue
            problem = store.verify_shard(s, name)
            if problem:
                problems.append(problem)
    return {"ok": not problems, "checked": checked, "problems": problems}
