"""What tda tells its user while it works: one logger, one console.

Library code reports progress and recoverable problems through ``logger(__name__)`` (info:
what it is doing; warning: a problem it survived, e.g. a shard rebuilt); problems with a
caller's inputs that a library call survives (texts cut at ``max_len``) are
``warnings.warn`` so API callers can filter them. The CLI (``setup_cli``) prints both on
stderr through the rich ``console`` that the progress bars (``progress``) draw on, so lines
and bars never tear each other. Results (reports, tables, JSON) go to stdout.
"""
from __future__ import annotations

import logging
import warnings

ROOT = "tda"
_console = None


def logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (under the ``tda`` logger)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def console():
    """The rich Console on stderr that log lines and progress bars share."""
    global _console
    if _console is None:
        from rich.console import Console
        _console = Console(stderr=True, highlight=False)
    return _console


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            prefix = "warning: " if record.levelno >= logging.WARNING else ""
            console().print(prefix + text, markup=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logger("warnings").warning(str(message))


def setup_cli(quiet: bool = False) -> None:
    """Route the ``tda`` logger and Python warnings to stderr (info and up; warnings only
    when ``quiet``, e.g. with ``--json``). Idempotent."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        root.addHandler(_ConsoleHandler())
        root.propagate = False
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    warnings.showwarning = _show_warning


def progress(*columns, disable: bool = False):
    """A rich Progress on the shared console (columns as rich.progress takes them)."""
    from rich.progress import Progress
    return Progress(*columns, console=console(), disable=disable)
