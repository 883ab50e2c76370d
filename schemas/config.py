"""Typed configuration of the TrackStar featurizer.

Each field's ``metadata["help"]`` is its documentation; the CLI turns it into ``--help`` text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Correction = Literal["factored", "exact", "none"]
CORRECTIONS: tuple[str, ...] = ("factored", "exact", "none")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field whose help text is ``text``."""
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class TrackStarConfig:
    """How training examples and queries become TrackStar vectors (DESIGN.md section 1)."""

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
    epsilon: float = doc(
        "Added to the second-moment denominator: G/(sqrt(V)+eps) when exact; with factored, each "
        "factor is (r/sqrt(mean V)+eps)^-1/2.", default=1e-8)
    unit_normalize: bool = doc("Scale each vector to unit L2 norm (off = Grad-Dot ablation).",
                               default=True)
    max_len: int = doc("Maximum tokens per example or query; longer training texts are cut "
                       "(the indexer splits them into chunks first).", default=256)
    include: str = doc("Regular expression over module names: which weights to track.",
                       default=".*")
    exclude: str = doc("Regular expression over module names: weights not to track "
                       "(empty = none).", default="")
    include_embeddings: bool = doc("Also track the input embedding matrices.", default=False)
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = doc(
        "Model compute dtype. Projections are computed in float32 (float64 for float64 models).",
        default="float32")
    batch_size: int = doc("Examples per forward/backward pass in Featurizer.encode_*.", default=8)

    def __post_init__(self) -> None:
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.projection_blocks < 1:
            raise ValueError(f"projection_blocks must be >= 1, got {self.projection_blocks}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 tokens, got {self.max_len}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackStarConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrackStarConfig fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "TrackStarConfig":
        return dataclasses.replace(self, **changes)
