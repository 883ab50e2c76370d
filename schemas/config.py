"""Typed configuration of the TrackStar featurizer (the engine).

Each field's documentation (``schemas.fields.doc``) is also its ``--help`` text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tda.errors import ConfigError
from tda.schemas.fields import doc, from_data, to_data

Correction = Literal["factored", "exact", "none"]
CORRECTIONS: tuple[str, ...] = ("factored", "exact", "none")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16", "float64")
# max_len when not given: the model's positions, capped here (longer documents become chunks)
MAX_LEN_CAP = 2048
DEFAULT_EPSILON = 1e-8


@dataclass(frozen=True)
class TrackStarConfig:
    """How training examples and queries become TrackStar vectors (docs/design.md, "The
    method")."""

    projection_dim: int = doc(
        "Per-side projection size k of one sketch P_out^T G P_in: k*k features.", default=16)
    projection_blocks: int = doc(
        "Independent k x k sketches per tracked weight, so d = blocks*k*k per weight. At equal "
        "d, more blocks of a smaller k preserve cosines better (error ~ 1/sqrt(blocks)) but cost "
        "more projection compute (~ blocks*k per token and side).", default=1)
    seed: int = doc("Seed of the Gaussian projection matrices (with each weight's name and side).",
                    default=0)
    correction: Correction = doc(
        "Optimizer second-moment correction: 'factored' (row/column factors folded into the "
        "projection; fast), 'exact' (elementwise on the full per-example gradient; slow "
        "reference), 'none' (ablation).", default="factored")
    epsilon: float | None = doc(
        "Added to the second-moment denominator: G/(sqrt(V)+eps) when exact; with factored, each "
        "factor is (r/sqrt(mean V)+eps)^-1/2. Default: each parameter's optimizer param-group "
        "eps (Adam's eps; Adafactor's eps1), else 1e-8; a value here overrides them.",
        default=None)
    unit_normalize: bool = doc("Scale each vector to unit L2 norm (off = Grad-Dot ablation).",
                               default=True)
    max_len: int | None = doc(
        "Maximum tokens per example or query; longer training texts are cut (the indexer splits "
        f"them into chunks first). Default: the model's positions, at most {MAX_LEN_CAP}.",
        default=None)
    include: str = doc("Regular expression over module names: which weights to track.",
                       default=".*")
    exclude: str = doc("Regular expression over module names: weights not to track "
                       "(empty = none).", default="")
    include_embeddings: bool = doc("Also track the input embedding matrices.", default=False)
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = doc(
        "Model compute dtype; auto = the checkpoint's. Hooks and projections compute in float32 "
        "whatever the model's dtype (float64 for float64 models), autocast off.",
        default="auto")
    batch_size: int = doc("Examples per forward/backward pass in Featurizer.encode_*.", default=8)

    def __post_init__(self) -> None:
        if self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.projection_blocks < 1:
            raise ConfigError(f"projection_blocks must be >= 1, got {self.projection_blocks}")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.epsilon is not None and self.epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {self.epsilon}")
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 tokens, got {self.max_len}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (what the manifest stores)."""
        return to_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackStarConfig":
        """From ``to_dict`` output: unknown fields are a ConfigError, missing ones default."""
        return from_data(cls, data)

    def replace(self, **changes: Any) -> "TrackStarConfig":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)
