"""The garbage collector while a searcher is open: its loaded heap (the model, torch,
transformers: ~400k tracked objects for a tiny GPT-2) is frozen out of collections.

CPython's full collection walks every tracked object; with a model loaded one took 180-280 ms
(bench/salience.py), and a search that allocates many surviving objects (salience spans) set
one off about every ten queries. Objects tracked when a Searcher finishes loading are moved to
the permanent generation (``gc.freeze``), so later collections walk only what was allocated
since; when the last open Searcher closes they are handed back (``gc.unfreeze``) and garbage
among them is collected as usual.
"""
from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0


def hold() -> None:
    """Freeze what is tracked now (called once a Searcher has loaded)."""
    global _holders
    with _lock:
        gc.freeze()
        _holders += 1


def release() -> None:
    """One Searcher fewer; the last one unfreezes the heap."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
