"""The BM25 part of an index: a Lucene index (``bm25/``) over every example's text, built
through pyserini and searched with Anserini's searcher (the Java set-up of both is
store/java.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from tda.errors import IndexCorrupt
from tda.store.java import lucene_searcher, quiet_logs, setup_java


def build(path: str | Path, docs: Iterable[dict], threads: int = 1) -> int:
    """Write a Lucene BM25 index at ``path`` of records {"id", "contents", ...}: "contents" is
    the searched text; the whole record is stored and comes back from ``BM25.record``.
    Returns the number of documents."""
    setup_java()
    from pyserini.index.lucene import LuceneIndexer

    quiet_logs()
    path = Path(path)
    indexer = LuceneIndexer(args=["-index", str(path), "-storeRaw", "-storeContents"],
                            threads=threads)
    n = 0
    batch: list[str] = []
    for doc in docs:
        batch.append(json.dumps(doc))   # raw JSON: every field is stored
        n += 1
        if len(batch) >= 1000:
            indexer.add_batch_raw(batch)
            batch = []
    if batch:
        indexer.add_batch_raw(batch)
    indexer.close()
    return n


class BM25:
    """A BM25 searcher over a Lucene index built by ``build``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not (path.is_dir() and any(path.glob("segments_*"))):
            raise IndexCorrupt(f"{path}: not a Lucene index (no segments file)")
        self.path = path
        self._searcher = lucene_searcher(str(path))

    def __len__(self) -> int:
        return int(self._searcher.get_total_num_docs())

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """Top ``k`` (id, BM25 score), best first."""
        if not query.strip():
            return []
        return [(h.docid, float(h.score)) for h in self._searcher.search(query, k)]

    def record(self, doc_id: str) -> dict | None:
        """The stored record of a document (id, contents, and any extra fields), or None."""
        doc = self._searcher.doc(doc_id)
        if doc is None:
            return None
        raw = doc.get("raw")
        return json.loads(raw) if raw else {"id": doc_id, "contents": doc.get("contents")}

    def text(self, doc_id: str) -> str | None:
        """The stored text of a document, or None when the id is unknown."""
        rec = self.record(doc_id)
        return None if rec is None else rec["contents"]

    def iter_ids(self) -> Iterator[str]:
        """Every document id of the Lucene index, in its internal order."""
        for i in range(len(self)):
            yield self._searcher.doc(i).get("id")
