"""The options of every command, as typed dataclasses: the one documented place for each.

Each field's text (``doc``) is its documentation and the command's ``--help``; ``cli.py``
generates the click options from these classes, and the Python API takes the same objects
(``build_index(..., options=IndexOptions(...))``, ``Searcher(index, SearchOptions(...))``,
``build_profile(..., PreconditionOptions(...))``). Besides this module: the engine's
``TrackStarConfig`` (schemas/config.py), the corpus readers' ``CorpusOptions``
(schemas/corpus.py) and a search request's fields (``SearchRequest``, schemas/search.py).

A ``...Command`` class holds what only the command line has (paths, ``--json``); the other
classes are what the library functions take.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from tda.errors import ConfigError, PrepareError
from tda.schemas.fields import doc


# --------------------------------------------------------------------------- shared fields
def _model_for_queries() -> Any:
    return doc("Model for query vectors (default: the index's; must match its fingerprint).",
               default=None, flag="--model")


def _scheduler(otherwise: str = "a local cluster") -> Any:
    return doc(f"Existing dask scheduler (tcp://HOST:PORT); default: {otherwise}.",
               default=None)


def _workers() -> Any:
    return doc("Local dask worker processes (ignored with --scheduler).", default=2)


def _json() -> Any:
    return doc("Print the result as JSON instead of the text report.", default=False)


def _positive(obj, *names: str, minimum: float = 1) -> None:
    for name in names:
        if getattr(obj, name) < minimum:
            raise ConfigError(f"{name} must be >= {minimum:g}, got {getattr(obj, name)}")


# --------------------------------------------------------------------------- tda index
@dataclass(frozen=True)
class IndexOptions:
    """How the index is laid out and built (besides the engine's TrackStarConfig and the
    corpus' CorpusOptions); recorded in the manifest."""

    shard_size: int = doc("Examples per shard (chunks of at most --max-len tokens, whatever "
                          "the documents): the unit of work, of resuming and of search "
                          "fan-out; bounds a rank's buffers.", default=4096)
    storage_dtype: Literal["float16", "bfloat16", "float32"] = doc(
        "dtype of the stored vectors. An index without unit normalization is stored in "
        "float32 when float16 is asked (its values may exceed float16's 65,504).",
        default="float16")
    batch_tokens: int = doc("Token budget of one forward/backward batch (padding included); "
                            "examples are bucketed by length.", default=8192)
    fsdp: bool = doc("Shard the model over ranks with FSDP2 (for models that do not fit one "
                     "device); ranks then step in lockstep.", default=False)
    bm25: bool = doc("Also build the Lucene BM25 index of the same examples (rank 0, after "
                     "the gradients; for huge corpora build it later without torchrun).",
                     default=True)
    collective_timeout_min: float = doc(
        "Minutes a rank waits in a collective, e.g. for the other ranks' part of the corpus "
        "scan or for rank 0's checks.", default=240.0)
    optimizer_state: str | None = doc(
        "Optimizer state (file or dir). Default: the model directory's optimizer.pt / "
        "tda_second_moments.pt, else estimated from the corpus.", default=None)
    estimate_examples: int = doc(
        "Documents sampled at random over the whole corpus (seeded by --seed) to estimate "
        "second moments when no optimizer state exists.", default=256)

    def __post_init__(self) -> None:
        _positive(self, "shard_size", "estimate_examples")
        _positive(self, "batch_tokens", minimum=2)
        if self.collective_timeout_min <= 0:
            raise ConfigError(f"collective_timeout_min must be > 0, got "
                              f"{self.collective_timeout_min}")


@dataclass(frozen=True)
class IndexCommand:
    """`tda index`: what to featurize, where to, and how to report."""

    model_dir: str = doc("Hugging Face causal LM: a directory (config, weights, tokenizer), "
                         "a PEFT adapter directory (adapter_config.json; its adapter matrices "
                         "are tracked), or a Hub id already in the local cache (resolved "
                         "offline).", flag="--model")
    corpus: tuple[str, ...] = doc("Corpus file or directory (.jsonl, .txt, .parquet, datasets "
                                  "dir); repeat, or list more after the options.")
    out: str = doc("Index path (a directory, or any fsspec URL).")
    base_model: str | None = doc("Base model of a PEFT adapter --model (directory or cached "
                                 "Hub id); default: the base its adapter_config.json names.",
                                 default=None)
    overwrite: bool = doc("Replace whatever is at --out.", default=False)
    progress: bool = doc("Show a progress bar (rank 0).", default=True)
    json: bool = _json()


# --------------------------------------------------------------------------- tda plan
@dataclass(frozen=True)
class PlanOptions:
    """What `tda plan` assumes about the corpus, the machines and their speed (the engine's
    TrackStarConfig and the IndexOptions are those of the `tda index` run planned)."""

    tokens: float = doc("Corpus tokens, when no --corpus files are given (160e9 is fine).",
                        default=0)
    documents: float = doc("Corpus documents, with --tokens (0: every example a full "
                           "--max-len chunk, the fewest examples possible).", default=0)
    bytes_per_token: float = doc("UTF-8 bytes of text per token, with --tokens (measured from "
                                 "the corpus when files are given).", default=4.0)
    sample_records: int = doc("Records read from the start of each corpus file to measure "
                              "tokens per document (the rest is extrapolated by size).",
                              default=2000)
    nodes: int = doc("Nodes.", default=1)
    devices_per_node: int = doc("Devices (ranks) per node.", default=1)
    device: Literal["cuda", "cpu"] = doc("Device kind: cuda (memory per GPU, plus the host "
                                         "per rank) or cpu (one memory).", default="cuda")
    device_memory_gb: float = doc("Memory of one device, GB (10^9 bytes).", default=80.0)
    tokens_per_s: float = doc("Featurize throughput of one device, tokens/s, as measured "
                              "(0: from --throughput-json, else from --tflops).", default=0.0)
    throughput_json: str = doc("JSON printed by bench/featurize.py or bench/gpu.py: its "
                               "featurize tokens/s (one device).", default="")
    tflops: float = doc("Dense peak of one device in the model dtype, TFLOP/s (H100 SXM "
                        "bfloat16: 989), for the time when no throughput is given.",
                        default=989.0)
    utilization: float = doc("Fraction of --tflops sustained.", default=0.4)

    def __post_init__(self) -> None:
        minimums = {"tokens": 0, "documents": 0, "tokens_per_s": 0, "nodes": 1,
                    "devices_per_node": 1, "sample_records": 1}
        for name, least in minimums.items():
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be >= {least}, got {getattr(self, name)}")
        for name in ("bytes_per_token", "device_memory_gb", "tflops", "utilization"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def world(self) -> int:
        """Ranks in all."""
        return self.nodes * self.devices_per_node


@dataclass(frozen=True)
class PlanCommand:
    """`tda plan`: which model and corpus to plan for, and how to report."""

    model: str = doc("Model directory, its config.json, or a Hub id in the local Hugging Face "
                     "cache (nothing is downloaded).")
    corpus: tuple[str, ...] = doc("Corpus files or directories, as for tda index (or give "
                                  "--tokens).", default=())
    json: bool = _json()


# --------------------------------------------------------------------------- tda info / verify
@dataclass(frozen=True)
class InfoCommand:
    """`tda info`: what an index holds."""

    model_dir: str | None = doc("Also check that this model directory is the index's model "
                                "(same fingerprint).", default=None, flag="--model")
    json: bool = _json()


@dataclass(frozen=True)
class VerifyCommand:
    """`tda verify`: every part read back and checked."""

    model_dir: str | None = doc("Model directory to check against the index's fingerprint "
                                "(default: the recorded model path, when it is there).",
                                default=None, flag="--model")
    json: bool = _json()


# --------------------------------------------------------------------------- tda precondition
@dataclass(frozen=True)
class PreconditionOptions:
    """Which correction R a profile applies (docs/design.md, "The method"), and where the
    work runs."""

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
    mixing: float = doc("lambda itself (0 < lambda < 1) instead of choosing it from K; 0: "
                        "chosen from K (mode 'mixed' only).", default=0.0)
    model_dir: str | None = _model_for_queries()
    scheduler: str | None = _scheduler()
    workers: int = _workers()

    def __post_init__(self) -> None:
        _positive(self, "train_sample", "workers")
        _positive(self, "components", minimum=0)
        if self.damping <= 0:
            raise ConfigError(f"damping must be > 0, got {self.damping}")
        if not 0 <= self.mixing < 1:
            raise ConfigError(f"mixing (lambda) must be in (0, 1), or 0 to choose it from K; "
                              f"got {self.mixing}")


@dataclass(frozen=True)
class PreconditionCommand:
    """`tda precondition`: which profile, from which queries."""

    name: str = doc("Profile name (search with --profile NAME).")
    queries: str | None = doc("The task's queries, JSON Lines of {prompt, target}: enables the "
                              "mixed R.", default=None)
    overwrite: bool = doc("Replace a complete profile of that name.", default=False)
    json: bool = _json()


# --------------------------------------------------------------------------- tda search / serve
@dataclass(frozen=True)
class AnnOptions:
    """How the compressed ANN index (``--faiss-index ann``: IVF-PQ codes in memory, candidates
    re-scored exactly from the stored vectors) is built and searched (searcher/ann.py)."""

    candidates: int = doc("Candidates per query re-scored exactly from the stored vectors (at "
                          "least k).", default=1000, flag="--ann-candidates")
    scan: int = doc("PQ codes scanned per query (FAISS max_codes), nearest lists first.",
                    default=65536, flag="--ann-scan")
    lists: int = doc("Inverted lists; 0: a power of two near sqrt(n) / 2.", default=0,
                     flag="--ann-lists")
    pq_bytes: int = doc("PQ code bytes per vector (must divide d); 0: d / 8.", default=0,
                        flag="--ann-pq-bytes")
    pq_bits: int = doc("Bits per PQ code; 0: 8 (fewer for groups under 1024 rows).",
                       default=0, flag="--ann-pq-bits")
    train_sample: int = doc("Rows sampled (uniformly, seeded) to train; 0: max(65536, "
                            "64 x lists).", default=0, flag="--ann-train-sample")
    coarse_dim: int = doc("Dimensions (top principal directions of the sample) the list "
                          "centroids are found and compared in.", default=256,
                          flag="--ann-coarse-dim")
    seed: int = doc("Seed of the training sample and k-means.", default=0, flag="--ann-seed")

    def __post_init__(self) -> None:
        _positive(self, "candidates", "scan", "coarse_dim")
        _positive(self, "lists", "pq_bytes", "train_sample", minimum=0)
        if not 0 <= self.pq_bits <= 16:
            raise ConfigError(f"pq_bits must be in [0, 16], got {self.pq_bits}")


FAISS_KINDS = ("auto", "exact", "stream", "ann", "hnsw", "ivfpq")


@dataclass(frozen=True)
class SearchOptions:
    """How an index is searched (`tda search`, `tda serve`, ``tda.Searcher``)."""

    model_dir: str | None = _model_for_queries()
    scheduler: str | None = _scheduler("none (see --workers)")
    workers: int | None = doc("Start a local dask cluster of this many worker processes "
                              "(default: search in this process on threads, unless the index "
                              "is over one process's memory budget; ignored with --scheduler).",
                              default=None)
    faiss_index: str = doc("auto (exact in memory when the vectors fit the budget, else ann, "
                           "with a warning) | exact | stream (exact, reads the shards per "
                           "query) | ann (compressed IVF-PQ, candidates re-scored exactly) | "
                           "hnsw | ivfpq | any FAISS factory string.", default="auto")
    memory_budget_gb: float = doc("Stored vector bytes (GiB) one process (this one, or each "
                                  "worker) may hold in memory.", default=4.0)
    allow_partial: bool = doc("Leave out shards that fail their checksum (with a warning) "
                              "instead of refusing to search.", default=False)
    timeout_s: float = doc("Seconds a query waits for the dask workers' answers before "
                           "failing, naming the groups that did not answer.", default=120.0)
    ann: AnnOptions = doc("The compressed index's settings (--faiss-index ann).",
                          default_factory=AnnOptions, cli=False)

    def __post_init__(self) -> None:
        if self.workers is not None:
            _positive(self, "workers")
        if self.memory_budget_gb <= 0:
            raise ConfigError(f"memory_budget_gb must be > 0, got {self.memory_budget_gb}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not self.faiss_index.strip():
            raise ConfigError(f"faiss_index must be one of {FAISS_KINDS} or a FAISS factory "
                              f"string")


@dataclass(frozen=True)
class SearchCommand:
    """`tda search`: which index, and one query or a file of them."""

    index: str = doc("Index path.")
    queries: str | None = doc("JSON Lines of {prompt, target?, k?, mode?, profile?}: many "
                              "queries at once (the options give the defaults).", default=None)
    json: bool = doc("JSON output (one line per query).", default=False)
    format: Literal["response", "pair"] = doc(
        "response: the search responses (a table, or JSON with --json); pair: JSON Lines in "
        "the TrackStar paper's released results format, one record per query and list "
        "(example_id, inputs_plaintext, targets_plaintext, proponents, proponent_ids, "
        "proponent_scores, method; opponents for the trackstar list; proponent_correct when "
        "the query file gives ground-truth proponents).", default="response")
    opponents: int = doc("With --format pair: opponents (lowest scores) per trackstar list "
                         "(0: none).", default=10)

    def __post_init__(self) -> None:
        _positive(self, "opponents", minimum=0)


@dataclass(frozen=True)
class ServerLimits:
    """Request limits of `tda serve`."""

    max_k: int = doc("Largest k a request may ask for.", default=100)
    max_query_chars: int = doc("Longest prompt + target, in characters.", default=2000)
    max_body_bytes: int = doc("Largest request body, in bytes.", default=16384)
    max_batch: int = doc("Most queries in one POST /search/batch.", default=256)
    max_explain_hits: int = doc("Most TrackStar hits one call may explain (the sum of k over "
                                "its requests with explain): their salience is one forward "
                                "and backward over all of them.", default=50)

    def __post_init__(self) -> None:
        _positive(self, "max_k", "max_query_chars", "max_body_bytes", "max_batch",
                  "max_explain_hits")


def _host() -> Any:
    return doc("Address to bind (loopback by default; anything else exposes the index).",
               default="127.0.0.1")


def _port() -> Any:
    return doc("Port to listen on.", default=8080)


def _token() -> Any:
    return doc("Bearer token every request must carry (env TDA_TOKEN); the page at / asks for "
               "it.", default=None, envvar="TDA_TOKEN")


@dataclass(frozen=True)
class ServeCommand:
    """`tda serve`: where to listen and who may ask."""

    host: str = _host()
    port: int = _port()
    token: str | None = _token()
    reports: str | None = doc("Directory of report .jsonl files (the paper's results format: "
                              "`tda eval run`'s pairs/, `tda search --format pair`) for the "
                              "page's Reports view.", default=None)


@dataclass(frozen=True)
class ViewCommand:
    """`tda view`: the page's Reports view alone (no index, no model)."""

    host: str = _host()
    port: int = _port()
    token: str | None = _token()


# --------------------------------------------------------------------------- tda demo
@dataclass(frozen=True)
class DemoOptions:
    """`tda demo`: the tiny model, index and searches it runs (cached by these settings)."""

    epochs: int = doc("Training epochs of the tiny model (fewer: faster, knows fewer facts).",
                      default=30)        # 982 texts: ~150 s on 2 CPU cores, knows 80 of 160
    preset: str = doc("Model size preset (evaluation/models.py).", default="tiny")
    projection_dim: int = doc("Projection size k of the demo index (d = k*k per weight).",
                              default=16)
    max_len: int = doc("Maximum tokens per training text and query.", default=128)
    examples: int = doc("Attributions shown.", default=3)
    k: int = doc("Results per list in each attribution.", default=5)

    def __post_init__(self) -> None:
        _positive(self, "epochs", "projection_dim", "examples", "k")
        _positive(self, "max_len", minimum=2)


@dataclass(frozen=True)
class DemoCommand:
    """`tda demo`: where it caches."""

    work: str | None = doc("Cache directory (default: $TDA_CACHE or ~/.cache/tda, + /demo).",
                           default=None)
    fresh: bool = doc("Ignore cached model and index.", default=False)


# --------------------------------------------------------------------------- tda eval
@dataclass(frozen=True)
class PrepareOptions:
    """What ``tda eval prepare`` samples from LAMA T-REx and how it builds queries and texts."""

    relations: str = doc(
        "Comma-separated LAMA relation ids, e.g. P19,P101, in any order (empty: every P*.jsonl "
        "in the LAMA directory).", default="")
    facts: int = doc(
        "Facts to sample in total, spread as evenly as possible over the relations; only facts "
        "with at least one evidence sentence count (0: all of them).", default=0)
    templates: Literal["lama", "pararel"] = doc(
        "Query templates: 'lama' (the relation's LAMA template) or 'pararel' (per fact, one "
        "seeded pick among the relation's ParaRel templates with [X] before [Y]; relations "
        "without ParaRel templates fall back to LAMA).", default="lama")
    paraphrases: int = doc(
        "Paraphrase sentences per fact added to the corpus: ParaRel templates filled with "
        "subject and object label, never the fact's query template (fewer when the relation "
        "has fewer templates, none without ParaRel templates).", default=0)
    distractors: str = doc(
        "File of distractor sentences added with no facts: FewRel JSON (relation -> "
        "[{tokens, h, t}]) or JSON Lines with a 'text' field (empty: none).", default="")
    distractor_count: int = doc(
        "Distractor sentences to sample from the file (0: all).", default=0)
    seed: int = doc("Seed of fact, template, paraphrase and distractor sampling.", default=0)

    def __post_init__(self) -> None:
        for name in ("facts", "paraphrases", "distractor_count"):
            if getattr(self, name) < 0:
                raise PrepareError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.templates not in ("lama", "pararel"):
            raise PrepareError(
                f"templates must be one of ('lama', 'pararel'), got {self.templates!r}")
        if self.distractor_count and not self.distractors:
            raise PrepareError("distractor_count needs a distractors file")

    def relation_list(self) -> list[str]:
        """The requested relations, upper-cased and deduplicated (empty: all)."""
        out: dict[str, None] = {}
        for part in self.relations.split(","):
            rel = part.strip().upper()
            if not rel:
                continue
            if not re.fullmatch(r"P\d+", rel):
                raise PrepareError(f"not a relation id: {part.strip()!r} (expected e.g. P19)")
            out.setdefault(rel)
        return list(out)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (recorded in the benchmark manifest)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PrepareCommand:
    """`tda eval prepare`: where the LAMA data is and where the benchmark goes."""

    lama_dir: str = doc("LAMA T-REx directory (P*.jsonl, relations.jsonl).", flag="--lama")
    out: str = doc("Benchmark directory: corpus.jsonl, queries.jsonl, manifest.json.")
    pararel_dir: str | None = doc("ParaRel templates (default: pararel-templates beside "
                                  "--lama).", default=None, flag="--pararel")


@dataclass(frozen=True)
class TrainOptions:
    """How ``tda eval train`` trains a small causal LM from scratch (AdamW)."""

    preset: Literal["mini", "tiny", "small"] = doc(
        "Model size: mini (4 layers x 64, ~0.5M parameters with the default vocabulary), tiny "
        "(4 x 128, ~1.35M) or small (6 x 256, ~5.8M).", default="tiny")
    arch: Literal["gpt2", "llama"] = doc("Architecture: gpt2 (Conv1D, tied head) or llama "
                                         "(nn.Linear, untied head).", default="gpt2")
    epochs: int = doc("Passes over the corpus.", default=20)
    lr: float = doc("Peak learning rate (linear warmup, cosine decay to 10%).", default=3e-3)
    batch_size: int = doc("Texts per optimizer step.", default=32)
    vocab_size: int = doc("Byte-level BPE vocabulary size.", default=4096)
    max_len: int = doc("Tokens per training text (longer ones are cut).", default=128)
    seed: int = doc("Seed of initialization, shuffling and the tokenizer.", default=0)
    queries: str | None = doc("Queries for the fact accuracy (default: queries.jsonl beside the "
                              "corpus).", default=None)
    batching: Literal["length", "random"] = doc(
        "length: texts of similar length batched together (shuffled batches, little padding); "
        "random: random batches padded to the longest.", default="length")
    threads: int = doc("Torch threads for training (0: torch's default; 1 is often faster on a "
                       "busy machine).", default=0)
    fact_check_every: int = doc("Also count the facts known every this many epochs (a "
                                "learning curve in training.json; 0: only at the end).",
                                default=0)

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "vocab_size")
        _positive(self, "threads", "fact_check_every", minimum=0)
        _positive(self, "max_len", minimum=2)
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainCommand:
    """`tda eval train`: which corpus, which output directory."""

    corpus: str = doc("BENCH/corpus.jsonl (records with 'text').")
    out: str = doc("Model directory.")
    json: bool = doc("Print training.json (without losses).", default=False)


EVAL_METHODS = ("bm25", "graddot", "gradcos", "optcos", "rtrain", "trackstar", "exact", "fused")


@dataclass(frozen=True)
class EvalRunOptions:
    """What ``tda eval run`` retrieves and scores."""

    methods: str = doc("Comma-separated methods.", default=",".join(EVAL_METHODS))
    tail_patch: int = doc("Tail-patch the top K retrieved examples (0: skip).", default=10)
    tail_patch_queries: int = doc("Tail-patch a seeded sample of this many queries (0: all).",
                                  default=0)
    workers: int = _workers()
    seed: int = doc("Seed of the tail-patch query sample and of the random reference.",
                    default=0)
    sweep_components: str = doc(
        "Comma-separated K values as fractions of d (e.g. 0.005,0.05): a TrackStar row per K, "
        "its mixed R fitted with that K.", default="")
    sweep_mixing: str = doc(
        "Comma-separated factors on lambda's odds lambda / (1 - lambda) (e.g. 0.5,2): a "
        "TrackStar row per factor, around the lambda that the default K chooses.", default="")
    pairs: bool = doc("Write REPORT/pairs/METHOD.jsonl: per query, the top 100 in the format "
                      "of the TrackStar paper's released results.", default=True)
    query_set: str | None = doc("The results files' query_set (default: the name of the "
                                "queries' directory).", default=None)

    def __post_init__(self) -> None:
        _positive(self, "tail_patch", "tail_patch_queries", minimum=0)
        _positive(self, "workers")
        unknown = [m for m in self.method_list() if m not in EVAL_METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {list(EVAL_METHODS)}")
        for f in self.component_sweep():
            if not 0 < f <= 1:
                raise ConfigError(f"sweep_components are fractions of d in (0, 1], got {f}")
        for f in self.mixing_sweep():
            if f <= 0:
                raise ConfigError(f"sweep_mixing factors must be > 0, got {f}")

    def method_list(self) -> list[str]:
        """The methods, in the given order."""
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def component_sweep(self) -> list[float]:
        """The K sweep, as fractions of d."""
        return _floats(self.sweep_components, "sweep_components")

    def mixing_sweep(self) -> list[float]:
        """The lambda sweep, as factors on lambda's odds."""
        return _floats(self.sweep_mixing, "sweep_mixing")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from None


@dataclass(frozen=True)
class EvalRunCommand:
    """`tda eval run`: which index and queries, and where the report goes."""

    index: str = doc("The TrackStar index (factored, unit norm) of the benchmark corpus.")
    queries: str = doc("BENCH/queries.jsonl.")
    out: str = doc("Report directory.")


@dataclass(frozen=True)
class EvalSizesCommand:
    """`tda eval sizes`: which reports (one per model size), where the comparison goes."""

    reports: tuple[str, ...] = doc("A report directory of `tda eval run` (repeat: one per "
                                   "model size, all on the same queries).", flag="--report")
    out: str = doc("Directory for sizes.json, sizes.md and sizes.png.")
