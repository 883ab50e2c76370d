"""tda: training-data attribution for language models (TrackStar next to BM25).

Heavy parts load on first use: ``tda.Searcher(index)`` (in process) and
``tda.SearchClient(url)`` (over HTTP) return the same ``tda.SearchResponse``;
``tda.Featurizer`` and ``tda.TrackStarConfig`` are the engine; ``tda.SearchOptions`` and
``tda.IndexOptions`` are the options a Searcher and an index build take; every error tda
raises for a user is a ``tda.TdaError`` (kinds in ``tda.errors``). Design: docs/design.md.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TrackStarConfig": "tda.schemas.config",
    "Featurizer": "tda.engine.featurizer",
    "Searcher": "tda.searcher.searcher",
    "SearchClient": "tda.searcher.client",
    "SearchRequest": "tda.schemas.search",
    "SearchResponse": "tda.schemas.search",
    "SearchOptions": "tda.schemas.options",
    "IndexOptions": "tda.schemas.options",
    "TdaError": "tda.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tda' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
