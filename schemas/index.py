"""The index manifest: what an index is, as typed, versioned records.

The manifest is the contract between the indexer (which writes it once, when it creates the
index) and everything that reads an index (searcher, precondition, info, verify, evaluation).
It is stored as the ``tda`` attribute of the index's root ``zarr.json`` (layout of the rest of
the index: ``store/layout.py`` and docs/design.md, "The index on disk"); ``Manifest.to_dict``
and ``Manifest.from_dict`` are its only writer and reader.

Versions. ``schema_version`` says how to read the manifest and the data it describes. A change
that an older reader would misread (a field changing meaning, data laid out differently)
bumps ``SCHEMA_VERSION``; an unknown version is refused with a message that says how to
rebuild. Adding information is not such a change: a new *optional* field (with a default, so
manifests that lack it still read) keeps the version, as the ``build`` record does here
(manifests of tda 0.1.0 have none). To add one: declare it ``added(default)``
(``schemas.fields.added``: ``None`` or an empty value; left out of the JSON while it holds
its default, so older manifests are written back unchanged), write it in the indexer, and
read it where it is used, handling the default. A reader older than the field refuses the manifest ("unknown fields"): it never
silently ignores what it does not understand.

Version 2 (this tda) sizes shards in examples (``Layout.shard_unit`` "examples", whatever the
documents) and records the corpus' examples; tda 0.1.0 would have read its ``shard_size`` as
documents, so the version changed. Version 1 indexes still read (searched, inspected,
verified, preconditioned) with ``shard_unit`` "documents"; `tda index` refuses to resume one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tda.errors import SchemaVersionMismatch
from tda.schemas.config import TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.fields import added, from_data, to_data
from tda.schemas.options import IndexOptions

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)   # 1: tda 0.1.0, shards of documents (searchable, not resumable)


@dataclass(frozen=True)
class ModelRecord:
    """The model the vectors come from (queries must use the same one)."""

    path: str                    # resolved model directory at build time
    fingerprint: str             # engine.model.model_fingerprint (16 hex of a sha256)
    architecture: str            # the Hugging Face class, e.g. GPT2LMHeadModel
    tokenizer: str               # the tokenizer's class name
    given: str = added("")       # what --model said (a path or a cached Hub id)
    base_model: str | None = added()   # resolved base model directory of a PEFT adapter


@dataclass(frozen=True)
class TrackedWeightRecord:
    """One tracked weight and its projection: phi_W = P_out^T G P_in, ``blocks`` independent
    [k, k] sketches, ``dim`` = blocks*k*k columns of the vectors (in tracked order)."""

    name: str                          # module path; projection seeds are keyed by it
    param: str                         # canonical parameter name (second moments are keyed by it)
    shape_out_in: tuple[int, int]      # G's shape [out, in]
    k: int
    blocks: int
    dim: int
    experts: int = added(0)            # a bank of this many [out, in] matrices (0: one matrix)
    sites: tuple[str, ...] = added(())  # its uses: linear | lookup | experts
    epsilon: float | None = added()    # eps of its correction (None: no correction)


@dataclass(frozen=True)
class SecondMomentSource:
    """Where the optimizer second moments V came from (the moments themselves are stored in
    the index's ``second_moments/`` group)."""

    source: str                  # a file path, or "estimated: ..." when estimated from texts
    optimizer: str               # adam | adafactor | adam+adafactor | estimated
    estimate: EstimateRecord | None = added()   # how V was estimated (optimizer "estimated")


@dataclass(frozen=True)
class EstimateRecord:
    """V estimated without optimizer state: the mean squared per-example gradient over a seeded
    random sample of the corpus's documents."""

    examples: int                # examples (chunks) the mean is over
    form: str                    # full | factored (row/column sums only)
    documents: int | None = None          # documents sampled
    corpus_documents: int | None = None   # documents in the corpus
    seed: int | None = None


@dataclass(frozen=True)
class TrackedShare:
    """How much of the model's matrix parameters the vectors see (engine.tracking)."""

    share: float                 # tracked / matrix_parameters
    tracked: int                 # parameters (numel) of the tracked weights
    matrix_parameters: int       # the model's matrix parameters (embeddings only if tracked)
    narrowed: bool = False       # --include/--exclude narrowed the set on purpose
    left_out: tuple[str, ...] = ()   # notes: weights left out and why


@dataclass(frozen=True)
class EngineRecord:
    """Everything needed to compute the same vectors again (queries, ablations). Stored under
    the manifest key ``featurizer`` (its name in schema version 1)."""

    config: TrackStarConfig
    dim: int                                     # d: sum of the tracked weights' dims
    tracked: tuple[TrackedWeightRecord, ...]
    second_moments: SecondMomentSource | None    # None when config.correction == "none"
    model_dtype: str | None = added()            # the model's parameter dtype when built
    tracked_share: TrackedShare | None = added()  # None in indexes older than the field
    projection_digest: str | None = added()      # engine.projection.projection_digest
    torch: str | None = added()                  # torch version that drew the projections

    @property
    def block_dims(self) -> list[int]:
        """Width of each tracked weight's column block of the vectors, in order."""
        return [t.dim for t in self.tracked]


@dataclass(frozen=True)
class CorpusFile:
    """One corpus source as read."""
    name: str                    # resolved path
    fingerprint: str             # indexer.readers.fingerprint: sizes + first/last MiB, sha256


@dataclass(frozen=True)
class CorpusRecord:
    """The corpus read, how it was read, and how many documents it gave."""

    files: tuple[CorpusFile, ...]
    options: CorpusOptions
    documents: int               # valid (indexed) documents, in corpus order
    examples: int | None = None  # the examples they make (chunks of max_len tokens); None:
                                 # schema 1, which did not record it


@dataclass(frozen=True)
class Layout:
    """How examples are laid out in shards (what every reader needs). Schema 2: shard s holds
    examples [s*n, (s+1)*n) of the corpus in order, whatever the documents (a long document's
    chunks can span shards); schema 1 (``shard_unit`` "documents"): the examples of documents
    [s*n, (s+1)*n)."""

    shard_size: int              # examples (schema 1: documents) per shard
    storage_dtype: str           # float16, float32, or bfloat16 stored as uint16 bits
    shard_unit: Literal["examples", "documents"] = "documents"
    # how vector chunks are encoded: "raw" (uncompressed, new builds: a row is one small
    # read, a load reads each byte once) or "blosc-zstd" (tda 0.1.0 indexes, the default when
    # absent). Readers follow each array's own Zarr metadata; writers follow this field, so
    # a resumed build keeps its index's encoding.
    vector_codec: str = "blosc-zstd"

    def shard_count(self, units: int) -> int:
        """Shards of a corpus of ``units`` examples (or documents, by ``shard_unit``)."""
        return -(-units // self.shard_size)

    def units_in(self, shard: int, units: int) -> int:
        """Examples (documents) in shard ``shard`` of a corpus of ``units`` (the last may be
        short)."""
        return max(0, min(self.shard_size, units - shard * self.shard_size))


@dataclass(frozen=True)
class BuildRecord:
    """The resolved options of the build that created the index (the engine's TrackStarConfig
    is ``engine.config``): enough to rerun it. Optional: tda 0.1.0 did not record it."""

    index: IndexOptions
    ranks: int = 1                                # processes of the creating run


@dataclass(frozen=True)
class Manifest:
    """What an index is: enough to refuse mixing and to reproduce query vectors."""

    model: ModelRecord
    engine: EngineRecord
    corpus: CorpusRecord
    layout: Layout
    build: BuildRecord | None = None
    created: str = ""
    tool_version: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading and writing
    def to_dict(self) -> dict[str, Any]:
        """The manifest as stored (JSON-ready): the engine record under ``featurizer``."""
        data = to_data(self)
        data["featurizer"] = data.pop("engine")
        if data["build"] is None:
            del data["build"]
        if self.schema_version == 1:        # written as read: schema 1 had neither field
            data["corpus"].pop("examples", None)
            data["layout"].pop("shard_unit", None)
        if data["layout"]["vector_codec"] == Layout.vector_codec:
            del data["layout"]["vector_codec"]     # an index before it is written back as read
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "index") -> "Manifest":
        """Read a stored manifest; ``where`` (the index path) starts every error message.
        Another schema version is a SchemaVersionMismatch that says how to rebuild; missing,
        unknown or malformed fields are too (this tda cannot read that manifest)."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS:
            raise SchemaVersionMismatch(
                f"{where}: index schema version {version!r}, but this tda reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild the index with this tda (`tda index` with the same "
                f"model and corpus into a new --out, or --overwrite), or read it with the tda "
                f"version that wrote it")
        data = dict(data)
        if "featurizer" in data:
            data["engine"] = data.pop("featurizer")
        try:
            return from_data(cls, data, "manifest", SchemaVersionMismatch)
        except SchemaVersionMismatch as e:
            raise SchemaVersionMismatch(
                f"{where}: the manifest does not read as schema version {version} ({e}); "
                f"written by another tda? Rebuild the index with this one (`tda index ... "
                f"--overwrite`)") from None

    # ------------------------------------------------------------------ derived
    @property
    def dim(self) -> int:
        """d, the vectors' dimension."""
        return self.engine.dim

    @property
    def n_shards(self) -> int:
        """Shards the corpus fills."""
        return self.layout.shard_count(self.corpus.examples if self.layout.shard_unit ==
                                       "examples" else self.corpus.documents)

    def settings(self) -> dict[str, Any]:
        """What must be equal for two builds to write into the same index (not batch sizes,
        not paths, not times)."""
        cfg = {k: v for k, v in self.engine.config.to_dict().items() if k != "batch_size"}
        moments = self.engine.second_moments
        return {"model fingerprint": self.model.fingerprint, "featurizer": cfg,
                "second_moments": None if moments is None else to_data(moments),
                "projection_digest": self.engine.projection_digest,
                "corpus": [(f.name, f.fingerprint) for f in self.corpus.files],
                "reader": to_data(self.corpus.options),
                "layout": {k: v for k, v in to_data(self.layout).items() if k != "vector_codec"}}

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
