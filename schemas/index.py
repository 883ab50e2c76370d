"""The index on disk (Zarr v3), as a contract between indexer and searcher.

Layout of one index group::

    zarr.json                 group attributes: {"tda": manifest, "bm25": {...} once built}
    shards/<NNNNNN>/          one per block of ``shard_size`` consecutive corpus documents
        vectors  [rows, d]    float16 (or bfloat16 stored as uint16), unit rows
        ids      [rows]       example ids: DOCID, or DOCID#N for chunk N of a long document
        doc_ids  [rows]       the document each row came from
        text     [rows]       the example's text
        n_tokens [rows] int32, loss [rows] float32 (nats), norm [rows] float32 (before normalizing)
        attributes "complete": {"rows", "checksum"} written last: a shard without it does not
        exist
    second_moments/           the optimizer second moments the vectors were corrected with
                              (row/column factors, or full for the exact correction)
    bm25/                     Lucene index over the same ids (local paths)
    profiles/<name>/          correction profiles (see the Hessian issue)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tda.schemas.config import doc

SCHEMA_VERSION = 1
MANIFEST_KEY = "tda"
BM25_KEY = "bm25"
COMPLETE_KEY = "complete"
SHARDS = "shards"
BM25_DIR = "bm25"
PROFILES = "profiles"
MOMENTS = "second_moments"
ROW_ARRAYS = ("vectors", "ids", "doc_ids", "text", "n_tokens", "loss", "norm")


def shard_name(index: int) -> str:
    return f"{index:06d}"


@dataclass(frozen=True)
class IndexOptions:
    """How the index is laid out and built (besides the featurizer's TrackStarConfig)."""

    shard_size: int = doc("Documents per shard: the unit of work, of resuming and of search "
                          "fan-out.", default=4096)
    storage_dtype: Literal["float16", "bfloat16"] = doc("dtype of the stored unit vectors.",
                                                        default="float16")
    batch_tokens: int = doc("Token budget of one forward/backward batch (padding included); "
                            "examples are bucketed by length.", default=8192)
    fsdp: bool = doc("Shard the model over ranks with FSDP2 (for models that do not fit one "
                     "device); ranks then step in lockstep.", default=False)
    bm25: bool = doc("Also build the Lucene BM25 index of the same examples (rank 0, after "
                     "the gradients; for huge corpora build it later without torchrun).",
                     default=True)
    collective_timeout_min: float = doc(
        "Minutes a rank waits in a collective, e.g. while rank 0 alone scans the corpus "
        "(~4 min per 64 GB of JSON Lines).", default=240.0)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.batch_tokens < 2:
            raise ValueError(f"batch_tokens must be >= 2, got {self.batch_tokens}")


@dataclass(frozen=True)
class PreconditionOptions:
    """Which correction R a profile applies (DESIGN.md section 1)."""

    mode: Literal["auto", "none", "train", "mixed"] = doc(
        "R: 'none' (identity, the ablation), 'train' (R_train), 'mixed' (lambda R_eval + "
        "(1 - lambda) R_train, needs --queries); auto: mixed with --queries, else train.",
        default="auto")
    train_sample: int = doc("Training vectors sampled (uniformly, seeded) for R_train.",
                            default=4096)
    components: int = doc("K: lambda makes the K-th largest eigenvalues of lambda R_eval and "
                          "(1 - lambda) R_train equal; 0 means 1.5% of d (the paper's 1,000 "
                          "of 65,536).", default=0)
    damping: float = doc("Added to each block's eigenvalues before the inverse square root, "
                         "as a fraction of the block's mean eigenvalue.", default=0.01)
    seed: int = doc("Seed of the training sample.", default=0)

    def __post_init__(self) -> None:
        if self.train_sample < 1:
            raise ValueError(f"train_sample must be >= 1, got {self.train_sample}")
        if self.components < 0:
            raise ValueError(f"components must be >= 0, got {self.components}")
        if self.damping <= 0:
            raise ValueError(f"damping must be > 0, got {self.damping}")


@dataclass
class Manifest:
    """What an index is: enough to refuse mixing and to reproduce query vectors."""

    model: dict[str, Any]          # path, fingerprint, architecture, tokenizer
    featurizer: dict[str, Any]     # Featurizer.manifest(): config, dim, tracked, second moments
    corpus: dict[str, Any]         # files with fingerprints, reader options, documents
    layout: dict[str, Any]         # shard_size, storage_dtype
    created: str = ""
    tool_version: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"index schema version {data.get('schema_version')} is not "
                             f"{SCHEMA_VERSION}, the one this tda reads")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def dim(self) -> int:
        return int(self.featurizer["dim"])

    def settings(self) -> dict[str, Any]:
        """What must be equal for two builds to write into the same index (not batch sizes,
        not paths, not times)."""
        cfg = {k: v for k, v in self.featurizer["config"].items() if k != "batch_size"}
        return {"model": self.model["fingerprint"], "featurizer": cfg,
                "second_moments": self.featurizer.get("second_moments"),
                "corpus": [(f["name"], f["fingerprint"]) for f in self.corpus["files"]],
                "reader": self.corpus["options"], "layout": self.layout}

    def differences(self, other: "Manifest") -> list[str]:
        """Human-readable settings that differ between two manifests."""
        out = []
        a, b = self.settings(), other.settings()
        for key in a:
            if a[key] != b[key]:
                if isinstance(a[key], dict) and isinstance(b[key], dict):
                    out += [f"{key}.{k}: {a[key].get(k)!r} vs {b[key].get(k)!r}"
                            for k in sorted(set(a[key]) | set(b[key]))
                            if a[key].get(k) != b[key].get(k)]
                else:
                    out.append(f"{key}: {a[key]!r} vs {b[key]!r}")
        return out
