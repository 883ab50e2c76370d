"""The TrackStar math on tensors: models, second moments, hooks, projection, featurization.
Knows no file formats beyond loading a model and its optimizer state."""
from tda.engine.batching import TokenSequence, TokenBatch, collate
from tda.engine.estimate import estimate_from_texts, estimate_moments
from tda.engine.featurizer import Features, Featurizer, factored_scales
from tda.engine.model import load_model, model_fingerprint
from tda.engine.projection import projection_matrix
from tda.engine.second_moments import Moment, SecondMoments, load_second_moments
from tda.engine.tracking import TrackedWeight, Tracking
from tda.schemas.config import TrackStarConfig

__all__ = [
    "TrackStarConfig", "Featurizer", "Features", "estimate_from_texts", "estimate_moments",
    "factored_scales", "TokenSequence", "TokenBatch", "collate", "TrackedWeight", "Tracking",
    "load_model", "model_fingerprint", "projection_matrix", "Moment",
    "SecondMoments", "load_second_moments",
]
