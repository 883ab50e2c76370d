"""Crash points for fault-injection tests: ``TDA_CRASH_AT=NAME`` (or ``NAME:K``, the K-th
time in one process) SIGKILLs the process group (the command and any dask workers it started,
as when a job is killed) when a process reaches point NAME. Unset, a point costs one
dictionary lookup. Points: manifest, moments, shard-arrays, shard-marker, bm25,
profile-transform, profile-shard."""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL the process group here when ``TDA_CRASH_AT`` names this point."""
    spec = os.environ.get("TDA_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.killpg(os.getpgrp(), signal.SIGKILL)
