"""The garbage collector while a searcher loads and while it is open.

Loading (importing torch and transformers, the model, the index) allocates hundreds of
thousands of long-lived objects and no garbage worth collecting; CPython's collections during
it each walk everything allocated so far, a noticeable share of the import time. ``pause()``
/ ``resume()`` turn collections off for that time (counted, so overlapping loads nest; the
collector is left as it was found).

Once loaded, the heap (~400k tracked objects for a tiny GPT-2) is frozen out of collections:
a full collection walked all of it, 180-280 ms with a model loaded (bench/salience.py), and a
search that allocates many surviving objects (salience spans) set one off about every ten
queries. Objects tracked when a Searcher finishes loading are moved to the permanent
generation (``gc.freeze``), so later collections walk only what was allocated since; when the
last open Searcher closes they are handed back (``gc.unfreeze``) and garbage among them is
collected as usual.
"""
from __future__ import annotations

import contextlib
import gc
import threading

_lock = threading.Lock()
_holders = 0
_pauses = 0
_was_enabled = True


def pause() -> None:
    """No automatic collections until the matching ``resume()`` (a load starts)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1


def resume() -> None:
    """A load has ended; the last one re-enables collections if they were on before."""
    global _pauses
    with _lock:
        if _pauses == 0:
            return
        _pauses -= 1
        if _pauses == 0 and _was_enabled:
            gc.enable()


@contextlib.contextmanager
def paused():
    """``pause()`` for the ``with`` block."""
    pause()
    try:
        yield
    finally:
        resume()


def hold() -> None:
    """Freeze what is tracked now (called once a Searcher has loaded)."""
    global _holders
    with _lock:
        gc.freeze()
        _holders += 1


def refreeze() -> None:
    """Freeze what is tracked now into the held heap (a part that finished loading after its
    Searcher opened); nothing when no Searcher holds the heap."""
    with _lock:
        if _holders:
            gc.freeze()


def release() -> None:
    """One Searcher fewer; the last one unfreezes the heap."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
