"""`tda verify`: read every part of an index back and check it against what was recorded."""
from __future__ import annotations

from pathlib import Path

from tda.errors import IndexMismatch, IndexMissing, IndexUnusable, ModelError, NotAnIndex
from tda.store import bm25
from tda.store.index import IndexStore
from tda.store.lock import ensure_not_busy
from tda.store.rowtable import row_table_problems


def verify_index(url: str, model_dir: str | Path | None = None) -> dict:
    """{"ok": bool, "checked": {...counts}, "problems": ["part: problem", ...]}. Checks the
    manifest, the model (``model_dir``, else the recorded model path when it is there: its
    fingerprint), the stored second moments, every shard (presence, marker, each array read
    back, sha256 checksums), the id -> (shard, row) table, the BM25 index (opens, document
    count, every id resolves) and
    every profile (transform blocks and transformed shards).

    Raises IndexMissing, NotAnIndex or IndexBusy when there is nothing to verify (yet); a
    manifest that cannot be read is a problem of the report."""
    ensure_not_busy(url)
    problems: list[str] = []
    checked = {"shards": 0, "profile_shards": 0, "bm25_documents": 0, "profiles": 0,
               "model": None}
    try:
        store = IndexStore.open(url)
    except (IndexMissing, NotAnIndex):
        raise
    except IndexUnusable as e:          # an unreadable or unknown manifest: a problem found
        return {"ok": False, "checked": checked, "problems": [f"manifest: {e}"]}
    manifest = store.manifest
    model = Path(model_dir) if model_dir is not None else Path(manifest.model.path)
    if model_dir is not None or model.is_dir():
        from tda.engine.model import check_model
        try:
            check_model(model, manifest.model.fingerprint, f"{url}: built from "
                        f"{manifest.model.path}",
                        None if model_dir is not None else manifest.model.base_model)
            checked["model"] = str(model)
        except (IndexMismatch, ModelError) as e:
            problems.append(f"model: {e}")
    if manifest.engine.config.correction != "none":
        try:
            if store.read_moments() is None:
                problems.append("second_moments: missing or incomplete")
        except Exception as e:  # noqa: BLE001
            problems.append(f"second_moments: unreadable ({e})")
    status = store.shard_status()
    unreadable = store.unreadable_shards()
    ids: list[str] = []
    shard_problems = len(problems)
    for s in range(manifest.n_shards):
        checked["shards"] += 1
        if s in unreadable:
            problems.append(f"{url}: shard {s:06d}: metadata unreadable ({unreadable[s]})")
            continue
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
    if len(problems) == shard_problems:   # a damaged shard already explains a stale table
        problems += row_table_problems(store, sum(store.complete_shards().values()))
    status_bm25 = store.bm25_status
    if status_bm25 and status_bm25.get("complete") and store.bm25_path is not None:
        try:
            searcher = bm25.BM25(store.bm25_path)
            if len(searcher) != status_bm25["documents"]:
                problems.append(f"bm25: {len(searcher)} documents, built with "
                                f"{status_bm25['documents']}")
            missing = [i for i in ids if searcher.record(i) is None]
            checked["bm25_documents"] = len(ids) - len(missing)
            if missing:
                problems.append(f"bm25: {len(missing)} example ids not found (e.g. "
                                f"{missing[0]!r})")
        except Exception as e:  # noqa: BLE001 - any failure to open is a problem to report
            problems.append(f"bm25: unreadable ({type(e).__name__}: {e})")
    for name in store.profile_names():
        profile = store.profile(name)
        if not profile.is_complete:
            problems.append(f"profile {name}: unfinished (never used; rerun tda precondition)")
            continue
        checked["profiles"] += 1
        try:
            blocks = profile.read_transform()
            if [b.shape[0] for b in blocks] != manifest.engine.block_dims:
                problems.append(f"profile {name}: transform blocks do not match the index")
        except Exception as e:  # noqa: BLE001
            problems.append(f"profile {name}: transform unreadable ({e})")
        pstatus = store.complete_shards(name)
        for s in range(manifest.n_shards):
            checked["profile_shards"] += 1
            if s not in pstatus:
                problems.append(f"profile {name} shard {s:06d}: missing")
                continue
            problem = store.verify_shard(s, name)
            if problem:
                problems.append(problem)
    return {"ok": not problems, "checked": checked, "problems": problems}
