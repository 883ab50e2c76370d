"""Configuration of `tda serve`."""
from __future__ import annotations

from dataclasses import dataclass

from tda.schemas.config import doc


@dataclass(frozen=True)
class ServerLimits:
    """Request limits of `tda serve`."""

    max_k: int = doc("Largest k a request may ask for.", default=100)
    max_query_chars: int = doc("Longest prompt + target, in characters.", default=2000)
    max_body_bytes: int = doc("Largest request body, in bytes.", default=16384)
