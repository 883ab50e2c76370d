"""`tda plan`: memory per device and per host, index size and time of a `tda index` run, before
running it.

Exact where it can be: the parameters, tracked weights, projection sizes and the index dimension
come from the model built on the meta device (no weights read, any transformers architecture);
activations and hook buffers per token are measured by running the real featurize code on
narrow copies of the model (``engine/memory.py``). The rest is arithmetic from stated constants,
each listed in the plan's ``assumptions``. Units: bytes, seconds, FLOP.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tda.errors import ConfigError, ModelError
from tda.schemas.config import MAX_LEN_CAP, TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.options import IndexOptions, PlanOptions

GB = 1e9
# measured on this project's CPU machine: RSS of a `tda index` process with its imports
# (Python, torch, transformers, zarr, tda) and a tiny model loaded (bench/plan.py checks it)
HOST_RUNTIME_BYTES = 420 * 2 ** 20
CUDA_CONTEXT_BYTES = 0.5e9          # CUDA context and kernel images per device (typical)
# glibc malloc on CPUs: after the first free of a large block its mmap threshold rises (up to
# 32 MiB), so later tensors come from the heap, whose freed holes stay resident: peak RSS was
# 1.1-1.7x the live activation bytes (bench/plan.py). With MALLOC_MMAP_THRESHOLD_ set (fixed
# threshold) freed tensors go back to the system and the RSS follows the live bytes.
CPU_MALLOC_FACTOR = 1.5
DEVICE_HEADROOM = 0.9               # keep 10% of device memory for the caching allocator
# one shard while it is written: float32 rows [rows, d], their float16 copy and the checksum's
# copy of that (bytes per vector value); Blosc works chunk by chunk (1,024 rows)
SHARD_BYTES_PER_VALUE = 4 + 2 + 2
PY_BYTES_PER_TOKEN = 36             # a token id in a Python tuple: pointer + int object
PY_BYTES_PER_EXAMPLE = 600          # Example, Sequence, id strings, list slots
SCAN_BYTES_PER_DOCUMENT = 16        # 64-bit id hash, up to twice while the array grows
VECTOR_COMPRESSION = 0.91           # stored vectors / raw d x 2 bytes (bench/results/index.json)
TEXT_COMPRESSION = 2.8              # English text, zstd level 3 (docs/cluster.md)
BM25_OVER_TEXT = 1.29               # Lucene index / raw text (bench/results/index.json)
BM25_BYTES_PER_S = 4.6e6            # single-threaded Lucene indexing (docs/cluster.md)
OPTIMIZER_STATE_BYTES = 4           # exp_avg_sq per parameter (float32) in optimizer.pt
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


# ---------------------------------------------------------------- the model
@dataclass
class ModelShape:
    """What the plan needs from the model, read from its meta-device instance."""

    source: str
    architecture: str
    parameters: int
    blocks: int
    block_parameters: int            # the largest block
    root_parameters: int             # outside the blocks (embeddings, LM head, final norm)
    matmul_parameters: int           # weights of every nn.Linear / Conv1D (a tied head counts)
    two_d_parameters: int            # what an optimizer state's 2-D second moments cover
    two_d_rows_cols: int             # sum of rows + columns over those
    largest_two_d: int
    tracked_weights: int
    tracked_parameters: int
    projection_values: int           # sum over tracked weights of (out + in) x blocks x k
    dim: int                         # index dimension d
    attention_width: int             # query heads x head size
    max_positions: int | None
    saved_dtype: str | None          # the checkpoint's dtype (config "dtype" / "torch_dtype")
    has_optimizer_state: bool | None  # None: only a config was given
    tokenizer_dir: str | None


def _read_config(source: str) -> tuple[dict, str, Path | None]:
    """The raw config.json of a model directory, a config.json file or a Hub id found in the
    local Hugging Face cache (nothing is downloaded). Returns (config, its path, directory)."""
    path = Path(source)
    if path.is_dir():
        file, directory = path / "config.json", path
        if not file.is_file():
            raise ModelError(f"{path}: not a model directory (no config.json)")
    elif path.is_file():
        file, directory = path, None
    else:
        from huggingface_hub import constants, try_to_load_from_cache
        cached = try_to_load_from_cache(source, "config.json") \
            if source.count("/") <= 1 and not source.startswith((".", "/")) else None
        if not isinstance(cached, str):
            raise ModelError(f"{source}: no such directory or file, and no model of that id in "
                            f"the local Hugging Face cache ({constants.HF_HUB_CACHE}); pass a "
                            f"model directory or its config.json, or download it first")
        file, directory = Path(cached), Path(cached).parent
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{file}: not a readable JSON config ({e})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{file}: a JSON {type(raw).__name__}, not a config object")
    return raw, str(file), directory


def model_config(raw: dict, where: str):
    """The transformers config of ``raw``; a ModelError naming every field it lacks that the plan
    needs (an architecture's defaults would silently plan for another model)."""
    from transformers import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if not model_type:
        raise ModelError(f"{where}: lacks the field model_type (which architecture?)")
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"{where}: model_type {model_type!r} is not an architecture this "
                        f"transformers knows")
    cls = CONFIG_MAPPING[model_type]
    aliases = getattr(cls, "attribute_map", {}) or {}
    needed = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
    if getattr(cls(), "intermediate_size", None) is not None:
        needed.append("intermediate_size")
    missing = [n for n in needed if n not in raw and aliases.get(n) not in raw]
    if missing:
        names = ", ".join(f"{n} (or {aliases[n]})" if n in aliases else n for n in missing)
        raise ModelError(f"{where}: lacks the fields tda plan needs: {names}")
    try:
        return cls.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{where}: not a valid {model_type} config ({e})") from None


def model_shape(source: str, track: TrackStarConfig):
    """(ModelShape, transformers config) of a model directory, config.json or cached Hub id."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from tda.engine.model import TORCH_DTYPES
    from tda.engine.optimizer_state import has_state_file
    from tda.engine.tracking import candidate_weights
    from tda.indexer.distributed import transformer_blocks

    raw, where, directory = _read_config(source)
    config = model_config(raw, where)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=TORCH_DTYPES[_compute_dtype(track, _saved_dtype(raw))])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ModelError(f"{where}: transformers cannot build a causal LM from it "
                        f"({type(e).__name__}: {e})") from None
    tracked = candidate_weights(model, track).weights   # structure only: no probe on meta
    params = list(model.parameters())
    blocks = transformer_blocks(model)
    block_sizes = [sum(p.numel() for p in b.parameters()) for b in blocks] or [0]
    matrices = [p for p in params if p.dim() == 2]
    matmul = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    k, m = track.projection_dim, track.projection_blocks
    tokenizer_dir = str(directory) if directory is not None and any(
        directory.glob("tokenizer*")) else None
    optimizer = None if directory is None else has_state_file(directory)
    positions = next((getattr(config, a) for a in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, a, None), int)), None)
    shape = ModelShape(
        source=where, architecture=type(model).__name__, parameters=sum(p.numel() for p in params),
        blocks=len(blocks), block_parameters=max(block_sizes),
        root_parameters=sum(p.numel() for p in params) - sum(block_sizes),
        matmul_parameters=matmul, two_d_parameters=sum(p.numel() for p in matrices),
        two_d_rows_cols=sum(p.shape[0] + p.shape[1] for p in matrices),
        largest_two_d=max((p.numel() for p in matrices), default=0),
        tracked_weights=len(tracked),
        tracked_parameters=sum(w.numel for w in tracked),
        projection_values=sum(max(w.experts, 1) * (w.out_features + w.in_features) * m * k
                              for w in tracked),
        dim=len(tracked) * m * k * k, attention_width=heads * head_dim,
        max_positions=positions, saved_dtype=_saved_dtype(raw), has_optimizer_state=optimizer, tokenizer_dir=tokenizer_dir)
    if positions is not None and track.max_len is not None and track.max_len > positions:
        raise ConfigError(f"max_len={track.max_len} exceeds the model's {positions} positions")
    return shape, config


def _compute_dtype(track: TrackStarConfig, saved: str | None) -> str:
    """The dtype the featurizer computes in: the config's, or for "auto" the checkpoint's
    ``saved`` dtype (float32 when the config does not say)."""
    return track.dtype if track.dtype != "auto" else (saved or "float32")


def _saved_dtype(raw: dict) -> str | None:
    value = raw.get("dtype") or raw.get("torch_dtype")
    return value if value in DTYPE_BYTES else None


# ---------------------------------------------------------------- the corpus
@dataclass
class CorpusSize:
    """Documents, examples (after chunking at max_len), tokens and UTF-8 text bytes."""

    documents: int
    examples: int
    tokens: int
    text_bytes: int
    longest_example: int             # tokens: the row length batches are planned at
    how: str


def corpus_size(files: list[str], plan: PlanOptions, track: TrackStarConfig,
                corpus_options: CorpusOptions, tokenizer_dir: str | None) -> CorpusSize:
    """Measured on the first ``plan.sample_records`` documents of each file and extrapolated by
    size (bytes for JSON Lines and text, rows for Parquet and datasets); from ``plan.tokens``
    when no files are given."""
    if not files:
        if plan.tokens <= 0:
            raise ConfigError("give the corpus: --corpus FILES or --tokens N")
        tokens = int(plan.tokens)
        full = math.ceil(tokens / track.max_len)
        documents = int(plan.documents) or full
        per_doc = tokens / documents
        examples = max(full, documents * math.ceil(per_doc / track.max_len)) \
            if plan.documents else full
        return CorpusSize(documents, examples, tokens, int(tokens * plan.bytes_per_token),
                          track.max_len,
                          "from --tokens" + (" and --documents" if plan.documents else
                                             ": every example a full max_len chunk"))
    from tda.indexer.documents import valid_documents
    from tda.indexer.readers import corpus_files

    tokenizer = None
    if tokenizer_dir:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    totals = dict(documents=0.0, examples=0.0, tokens=0.0, text_bytes=0.0)
    longest, exact = 0, True
    for path in corpus_files(files):
        seen = dict(documents=0, examples=0, tokens=0, text_bytes=0)
        last_line, finished = 0, True
        for i, doc in enumerate(valid_documents([path], corpus_options)):
            if i >= plan.sample_records:
                finished = False
                break
            n = len(tokenizer(doc.text)["input_ids"]) if tokenizer else \
                max(1, round(len(doc.text.encode()) / plan.bytes_per_token))
            seen["documents"] += 1
            seen["text_bytes"] += len(doc.text.encode())
            if n >= 2:
                seen["examples"] += math.ceil(n / track.max_len)
                seen["tokens"] += n
                longest = max(longest, min(n, track.max_len))
            last_line = doc.line
        factor = 1.0 if finished else _extrapolation(path, last_line)
        exact = exact and finished
        for key in totals:
            totals[key] += seen[key] * factor
    how = ("counted" if exact else f"measured on the first {plan.sample_records} documents "
           "of each file, extrapolated by size") + \
        (" with the model's tokenizer" if tokenizer else
         f" at {plan.bytes_per_token} bytes per token (no tokenizer)")
    return CorpusSize(*(int(round(totals[k])) for k in ("documents", "examples", "tokens",
                                                        "text_bytes")),
                      longest or track.max_len, how)


def _extrapolation(path: Path, last_line: int) -> float:
    """Total / sampled: by bytes for line-based files, by rows for Parquet and datasets."""
    from tda.indexer.readers import is_hf_dataset
    if is_hf_dataset(path):
        import datasets
        return len(datasets.load_from_disk(str(path))) / last_line
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows / last_line
    sampled = 0
    with path.open("rb") as f:
        for _ in range(last_line):
            sampled += len(f.readline())
    return path.stat().st_size / max(sampled, 1)


# ---------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Everything `tda plan` prints (bytes, seconds, FLOP)."""

    model: dict
    corpus: dict
    cluster: dict
    device: dict            # per device: the GPU (or, on CPUs, the one memory of a rank)
    host: dict              # per rank, besides the device (GPU runs only)
    index: dict             # on disk
    shards: dict
    time: dict
    activation_profile: dict
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(model: str, files: list[str], plan: PlanOptions = PlanOptions(),
              track: TrackStarConfig = TrackStarConfig(), options: IndexOptions = IndexOptions(),
              corpus_options: CorpusOptions = CorpusOptions()) -> Plan:
    """Plan a `tda index` run of ``model`` over ``files`` (or ``plan.tokens``)."""
    from tda.engine.memory import activation_profile

    shape, config = model_shape(model, track)
    track = track.replace(   # as `tda index` resolves them (engine.featurizer.resolve_config)
        dtype=_compute_dtype(track, shape.saved_dtype),
        max_len=track.max_len or min(shape.max_positions or MAX_LEN_CAP, MAX_LEN_CAP))
    corpus = corpus_size(files, plan, track, corpus_options, shape.tokenizer_dir)
    world = plan.world
    wbytes = DTYPE_BYTES[track.dtype]
    cbytes = 8 if track.dtype == "float64" else 4
    assumptions: list[str] = []

    # weights on the device
    if options.fsdp and world > 1:
        weights = (math.ceil(shape.parameters / world) + shape.root_parameters
                   + 2 * shape.block_parameters) * wbytes
        weights_how = (f"FSDP over {world} ranks: 1/{world} of the weights, the gathered root "
                       f"(embeddings, LM head) and two gathered blocks")
    else:
        weights = shape.parameters * wbytes
        weights_how = "whole model on every rank"
    projections = shape.projection_values * cbytes
    denominators = shape.tracked_parameters * cbytes if track.correction == "exact" else 0

    # activations at the largest batch: rows of the longest example's length
    row = corpus.longest_example
    rows = max(1, options.batch_tokens // row)
    padded = max(rows * row, row)
    profile = activation_profile(config, track, rows, row)
    per_token = profile.per_token(shape.blocks)
    activations = per_token * padded

    # host-side buffers of a rank
    shard_rows = _shard_rows(options, corpus)
    tokens_per_example = corpus.tokens / max(corpus.examples, 1)
    text_per_example = corpus.text_bytes / max(corpus.examples, 1)
    shard_buffers = shard_rows * shape.dim * SHARD_BYTES_PER_VALUE \
        + shard_rows * (tokens_per_example * PY_BYTES_PER_TOKEN + PY_BYTES_PER_EXAMPLE
                        + 2 * text_per_example)
    scan = math.ceil(corpus.documents / world) * SCAN_BYTES_PER_DOCUMENT
    moments_source = _moments_source(shape, track)
    moments_kept, load_extra, estimate_device = _moments_memory(shape, track, moments_source,
                                                                wbytes)
    gpu = plan.device == "cuda"
    runtime = CUDA_CONTEXT_BYTES if gpu else HOST_RUNTIME_BYTES
    # a checkpoint saved in another dtype is read (file pages) and converted while loading
    converting = shape.saved_dtype is not None and shape.saved_dtype != track.dtype
    file_pages = shape.parameters * DTYPE_BYTES[shape.saved_dtype] if converting else 0
    load_extra += file_pages
    malloc = 1.0 if gpu or os.environ.get("MALLOC_MMAP_THRESHOLD_") else CPU_MALLOC_FACTOR
    activations_resident = activations * malloc
    featurize_phase = weights + projections + denominators + activations_resident
    if gpu:
        device_total = runtime + featurize_phase + estimate_device
        host_load = HOST_RUNTIME_BYTES + shape.parameters * wbytes + load_extra
        host_run = HOST_RUNTIME_BYTES + moments_kept + shard_buffers + scan
        host = {"runtime": HOST_RUNTIME_BYTES, "weights_while_loading": shape.parameters * wbytes,
                "second_moments_while_loading": load_extra, "second_moments_kept": moments_kept,
                "shard_buffers": round(shard_buffers), "corpus_scan": scan,
                "peak": round(max(host_load, host_run)),
                "peak_phase": "loading" if host_load >= host_run else "featurizing"}
    else:
        load = runtime + shape.parameters * wbytes + load_extra
        run = runtime + featurize_phase + moments_kept + shard_buffers + scan
        device_total = max(load, run)
        host = {}
    budget = plan.device_memory_gb * GB * DEVICE_HEADROOM
    fixed = device_total - activations_resident
    device = {
        "runtime": runtime, "weights": weights, "weights_how": weights_how,
        "projections": projections, "exact_correction_denominators": denominators,
        "activations": round(activations), "activations_resident": round(activations_resident),
        "activations_per_token": round(per_token),
        "activations_lm_head_and_loss_per_token": round(profile.base),
        "activations_per_block_per_token": round(profile.block),
        "batch": {"rows": rows, "tokens_per_row": row, "padded_tokens": padded},
        "second_moments_estimate": estimate_device,
        **({} if gpu else {"second_moments_while_loading": load_extra,
                           "second_moments_kept": moments_kept,
                           "shard_buffers": round(shard_buffers), "corpus_scan": scan,
                           "peak_phase": "loading" if load >= run else "featurizing"}),
        "total": round(device_total), "memory": plan.device_memory_gb * GB,
        "fits": device_total <= budget,
        "max_batch_tokens": max(0, int((budget - fixed) / (per_token * malloc)))
        if per_token else None,
    }

    # the index on disk
    vectors_raw = corpus.examples * shape.dim * 2
    texts = corpus.text_bytes / TEXT_COMPRESSION
    bm25 = corpus.text_bytes * BM25_OVER_TEXT if options.bm25 else 0
    moments_disk = moments_kept if track.correction != "none" else 0
    index = {"vectors_raw": vectors_raw, "vectors": round(vectors_raw * VECTOR_COMPRESSION),
             "texts": round(texts), "bm25": round(bm25), "second_moments": moments_disk,
             "total": round(vectors_raw * VECTOR_COMPRESSION + texts + bm25 + moments_disk)}
    n_shards = _n_shards(options, corpus)
    shards = {"count": n_shards, "rows": round(shard_rows),
              "vector_bytes": round(shard_rows * shape.dim * 2),
              "per_rank": math.ceil(n_shards / world)}

    # time
    flops = flops_per_token(shape, corpus.tokens / max(corpus.examples, 1))
    tps, tps_how = _throughput(plan, flops, track)
    seconds = corpus.tokens / (tps * world)
    bm25_s = corpus.text_bytes / BM25_BYTES_PER_S if options.bm25 else 0.0
    time_ = {"flops_per_token": flops, "total_flops": flops * corpus.tokens,
             "tokens_per_s_per_device": round(tps, 1), "throughput_from": tps_how,
             "device_hours": corpus.tokens / tps / 3600, "featurize_wall_s": seconds,
             "bm25_wall_s": bm25_s, "wall_s": seconds + bm25_s}
    assumptions += [
        f"activations: {profile.method}",
        f"row length {row} tokens (the longest example, at most max_len); batches of "
        f"{options.batch_tokens} padded tokens",
        *([] if gpu else [
            f"CPU: activations x {malloc} for glibc malloc's retained heap" if malloc > 1 else
            "CPU: MALLOC_MMAP_THRESHOLD_ is set, so freed tensors are returned: activations "
            "x 1"]),
        *([f"the checkpoint is {shape.saved_dtype}: read and converted to {track.dtype} "
           f"while loading"] if converting else []),
        f"second moments: {moments_source}" + (
            "; while loading, the pages of every 2-D second moment (a memory-mapped file: in "
            "each rank's RSS, shared by the ranks of a node, reclaimable) and the largest "
            "twice in float64" if moments_source.startswith("the optimizer") else ""),
        f"runtime per process: {HOST_RUNTIME_BYTES / 2**20:.0f} MiB on the host (Python, torch, "
        f"transformers, zarr)" + (f"; {CUDA_CONTEXT_BYTES / GB:.1f} GB CUDA context per GPU"
                                  if gpu else ""),
        f"fits: total <= {DEVICE_HEADROOM:.0%} of the device memory (the caching allocator "
        f"holds more than the peak it hands out)" if gpu else
        "one memory: the peak RSS of a rank is the larger of loading and featurizing",
        f"index: vectors compress to {VECTOR_COMPRESSION} of d x 2 bytes, texts by "
        f"{TEXT_COMPRESSION}x, BM25 = {BM25_OVER_TEXT} x text; BM25 indexes "
        f"{BM25_BYTES_PER_S / 1e6} MB/s on rank 0 alone",
    ]
    return Plan(
        model={**asdict(shape), "dtype": track.dtype},
        corpus={**asdict(corpus), "files": [str(f) for f in files]},
        cluster={"nodes": plan.nodes, "devices_per_node": plan.devices_per_node,
                 "world": world, "device": plan.device, "fsdp": options.fsdp},
        device=device, host=host, index=index, shards=shards, time=time_,
        activation_profile=asdict(profile), assumptions=assumptions)


def _shard_rows(options: IndexOptions, corpus: CorpusSize) -> float:
    """Examples in one (full) shard: ``shard_size`` examples, whatever the documents."""
    return min(options.shard_size, corpus.examples)


def _n_shards(options: IndexOptions, corpus: CorpusSize) -> int:
    return math.ceil(corpus.examples / options.shard_size)


def _moments_source(shape: ModelShape, track: TrackStarConfig) -> str:
    if track.correction == "none":
        return "none (correction 'none')"
    if shape.has_optimizer_state is False:
        return "estimated from the corpus (no optimizer state in the model directory)"
    return "the optimizer state, memory-mapped (Adam exp_avg_sq, float32" + \
        (", assumed: only a config was given)" if shape.has_optimizer_state is None else ")")


def _moments_memory(shape: ModelShape, track: TrackStarConfig, source: str,
                    weight_bytes: int) -> tuple[int, int, int]:
    """(kept on the host, extra while loading, extra on the device while estimating)."""
    if track.correction == "none":
        return 0, 0, 0
    kept = shape.two_d_rows_cols * 8 if track.correction == "factored" \
        else shape.two_d_parameters * 8
    if source.startswith("estimated"):
        # float64 sums and the mean over the tracked weights; their gradients on the device
        return kept, shape.tracked_parameters * 16, shape.tracked_parameters * weight_bytes
    # every 2-D second moment's pages are read; the largest is held twice in float64
    return kept, shape.two_d_parameters * OPTIMIZER_STATE_BYTES + 2 * 8 * shape.largest_two_d, 0


def flops_per_token(shape: ModelShape, tokens_per_example: float) -> float:
    """Forward and activation backward (no weight gradients): 4 FLOP per matmul weight,
    causal attention (3 x forward, over half the row on average), the projections."""
    attention_forward = 4 * (tokens_per_example / 2) * shape.attention_width * shape.blocks
    return 4 * shape.matmul_parameters + 3 * attention_forward + 2 * shape.projection_values


def _throughput(plan: PlanOptions, flops: float, track: TrackStarConfig) -> tuple[float, str]:
    if plan.tokens_per_s:
        return plan.tokens_per_s, "--tokens-per-s (measured by the user)"
    if plan.throughput_json:
        return throughput_from_json(plan.throughput_json, track.projection_dim), \
            f"featurize tokens/s in {plan.throughput_json}"
    return plan.tflops * 1e12 * plan.utilization / flops, \
        f"{plan.utilization:.0%} of {plan.tflops:g} TFLOP/s over {flops:.3g} FLOP per token"


def throughput_from_json(path: str, k: int) -> float:
    """The featurize tokens/s of one device in a bench/featurize.py or bench/gpu.py JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    candidates = [("tokens_per_s", f"featurize_k{k}"), ("tokens_per_s", "featurize_k16"),
                  ("single_gpu", "featurize_tokens_per_s")]
    for outer, inner in candidates:
        value = (data.get(outer) or {}).get(inner) if isinstance(data, dict) else None
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    raise ConfigError(f"{path}: no featurize throughput (looked for "
                    + ", ".join(f"{o}.{i}" for o, i in candidates) + ")")


# ---------------------------------------------------------------- rendering
def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:,.1f} h"
    if s >= 60:
        return f"{s / 60:,.1f} min"
    return f"{s:,.1f} s"


def render_plan(p: Plan) -> str:
    m, c, d, t = p.model, p.corpus, p.device, p.time
    gpu = p.cluster["device"] == "cuda"
    lines = [
        f"model   {m['architecture']} {m['parameters']:,} parameters, {m['blocks']} blocks, "
        f"{m['dtype']}; {m['tracked_weights']} tracked weights, d = {m['dim']:,}",
        f"corpus  {c['documents']:,} documents -> {c['examples']:,} examples, "
        f"{c['tokens']:,} tokens, {_size(c['text_bytes'])} of text ({c['how']})",
        f"cluster {p.cluster['nodes']} x {p.cluster['devices_per_node']} "
        f"{p.cluster['device']} = {p.cluster['world']} ranks"
        + (", FSDP" if p.cluster["fsdp"] else ""),
        "",
        f"per {'GPU' if gpu else 'rank (one memory)'}:",
        f"  runtime                 {_size(d['runtime'])}",
        f"  weights                 {_size(d['weights'])}  ({d['weights_how']})",
        f"  projection matrices     {_size(d['projections'])}",
    ]
    if d["exact_correction_denominators"]:
        lines.append(f"  exact-correction sqrt(V) {_size(d['exact_correction_denominators'])}")
    b = d["batch"]
    lines.append(f"  activations + hooks     {_size(d['activations'])}  "
                 f"({_size(d['activations_per_token'])} per token x {b['padded_tokens']:,}: "
                 f"{b['rows']} rows of {b['tokens_per_row']}; LM head and loss "
                 f"{_size(d['activations_lm_head_and_loss_per_token'])}, each block "
                 f"{_size(d['activations_per_block_per_token'])} per token)")
    if d["activations_resident"] != d["activations"]:
        lines.append(f"  ... resident (malloc)   {_size(d['activations_resident'])}")
    if d["second_moments_estimate"]:
        lines.append(f"  estimating moments      {_size(d['second_moments_estimate'])}")
    if not gpu:
        lines += [f"  loading (file pages, moments) {_size(d['second_moments_while_loading'])}",
                  f"  second moments (kept)   {_size(d['second_moments_kept'])}",
                  f"  shard buffers           {_size(d['shard_buffers'])}",
                  f"  corpus scan             {_size(d['corpus_scan'])}"]
    lines.append(f"  total                   {_size(d['total'])} of {_size(d['memory'])}: "
                 + ("fits" if d["fits"] else "DOES NOT FIT")
                 + (f"; largest --batch-tokens that fits: {d['max_batch_tokens']:,}"
                    if d["max_batch_tokens"] is not None else "")
                 + ("" if gpu else f" (peak while {d['peak_phase']})"))
    if gpu:
        h = p.host
        lines += ["per rank, host memory:",
                  f"  runtime {_size(h['runtime'])}, weights while loading "
                  f"{_size(h['weights_while_loading'])}, second moments while loading "
                  f"{_size(h['second_moments_while_loading'])} (kept "
                  f"{_size(h['second_moments_kept'])}), shard buffers "
                  f"{_size(h['shard_buffers'])}, corpus scan {_size(h['corpus_scan'])}",
                  f"  peak {_size(h['peak'])} (while {h['peak_phase']})"]
    i, s = p.index, p.shards
    lines += ["", f"index   {_size(i['total'])} on disk: vectors {_size(i['vectors'])} "
                  f"({_size(i['vectors_raw'])} raw), texts {_size(i['texts'])}, BM25 "
                  f"{_size(i['bm25'])}, second moments {_size(i['second_moments'])}",
              f"shards  {s['count']:,} of {s['rows']:,} rows ({_size(s['vector_bytes'])} of "
              f"vectors each), {s['per_rank']:,} per rank",
              f"time    {t['tokens_per_s_per_device']:,.0f} tokens/s per device "
              f"({t['throughput_from']}): {t['device_hours']:,.0f} device-hours, featurizing "
              f"{_duration(t['featurize_wall_s'])} on {p.cluster['world']} ranks"
              + (f" + BM25 {_duration(t['bm25_wall_s'])} on rank 0" if t["bm25_wall_s"]
                 else ""),
              "", "assumptions:"] + [f"  - {a}" for a in p.assumptions]
    return "\n".join(lines)
