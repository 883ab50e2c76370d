"""Contracts shared by every part of tda: configs, records, manifests, requests and responses."""
from tda.schemas.config import TrackStarConfig

__all__ = ["TrackStarConfig"]
