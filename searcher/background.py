"""A part of a searcher that loads on a thread of its own while the rest opens.

Opening a searcher waits on three slow things that do not depend on each other: the query
model (importing transformers and the model's code, loading its weights), BM25 (starting the
JVM and opening the Lucene index) and the vectors (reading and checking them). Started
together they overlap wherever one waits on the disk or runs outside the interpreter lock
(the JVM's own threads, torch's and FAISS's loops), instead of adding up.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``load()`` running on a thread from construction; ``result()`` waits for it and returns
    its value or raises its exception (every time it is asked)."""

    def __init__(self, load: Callable[[], T], name: str):
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(load,), name=f"tda-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self, load: Callable[[], T]) -> None:
        try:
            self._value = load()
        except BaseException as e:  # noqa: BLE001 - handed to whoever asks for the result
            self._error = e

    def result(self) -> T:
        """The loaded value (waits for it); re-raises what the load raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        """Wait for the load to end, whatever its outcome."""
        self._thread.join()
