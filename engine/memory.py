"""How much memory one featurize batch needs, measured by running it on a narrow copy of the model.

The activations (and hook buffers) a forward + backward keeps depend on the architecture's code:
which tensors autograd saves, which the hooks hold, which dtype casts the modelling code makes.
Rather than a hand-written rule per architecture, ``activation_profile`` runs the real
``Featurizer.featurize_batch`` on the CPU on copies of the model with one and two transformer
blocks and every width (hidden size, MLP width, head size, vocabulary) divided by a power of two,
counts the bytes of tensor storage alive at once (``LiveBytes``), and extrapolates to the full
width (every per-token buffer is a polynomial in the widths: linear, or quadratic for the exact
correction's per-example gradients) and to the full depth (the second block's cost repeats).
Models small enough are measured at full width, without extrapolation.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tda.engine.batching import TokenSequence, collate
from tda.schemas.config import TrackStarConfig

# widths scaled together (config attribute names; aliases such as GPT-2's n_embd resolve
# through the config's attribute_map). Heads and key/value heads keep their number.
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "head_dim", "n_inner", "ffn_dim",
                "moe_intermediate_size", "shared_expert_intermediate_size")
MIN_TRACE_HIDDEN = 128        # narrowest hidden size traced
FULL_WIDTH_PARAMETERS = 30e6  # a two-block copy up to this size is traced at full width


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the context and alive at the same time
    (views and in-place results share their storage and count once). Tensors made before
    entering (weights, inputs) are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._prune()       # storages freed since the last op (their addresses can be reused)
        inputs = {StorageWeakRef(t.untyped_storage()).cdata
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                # an output sharing an input's storage is a view or in-place result: counted
                # already, or made before the context (weights)
                if ref.cdata not in self.live and ref.cdata not in inputs:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        self._prune()
        return out

    def _prune(self) -> None:
        for key in [k for k, (r, _) in self.live.items() if r.expired()]:
            self.current -= self.live.pop(key)[1]


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes per padded token of a featurize batch, at ``tokens`` tokens per row:
    ``base`` outside the transformer blocks (embedding output, LM head, loss, their hooks) and
    ``block`` for each block. ``traces``: what was measured."""

    base: float
    block: float
    tokens: int
    traces: list[dict] = field(default_factory=list)
    method: str = ""

    def per_token(self, blocks: int) -> float:
        return self.base + blocks * self.block


def _attr(config, name: str):
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def trace_scales(config, degree: int) -> list[int]:
    """Width divisors to trace at: [1] (full width) for small models, else ``degree + 1``
    powers of two that keep every width and head size whole and even."""
    hidden = _attr(config, "hidden_size")
    heads = _attr(config, "num_attention_heads")
    head_dim = _attr(config, "head_dim") or (hidden // heads if hidden and heads else None)

    def ok(s: int) -> bool:
        for name in WIDTH_FIELDS:
            v = _attr(config, name)
            if v is not None and v % s:
                return False
        hd = head_dim // s if head_dim and head_dim % s == 0 else None
        explicit = _attr(config, "head_dim") is not None
        return hd is not None and hd >= 2 and hd % 2 == 0 and (
            explicit or (hidden // s) % heads == 0)

    largest = 1
    while ok(largest * 2) and hidden // (largest * 2) >= MIN_TRACE_HIDDEN:
        largest *= 2
    scales = [largest // 2 ** i for i in range(degree + 1)]
    if scales[-1] < 1:
        return [1]
    return scales


def scaled_config(config, divisor: int, blocks: int):
    """A copy of a transformers config with every width divided by ``divisor`` (vocabulary
    rounded up) and ``blocks`` transformer blocks."""
    cfg = config.__class__.from_dict(config.to_dict())
    for name in WIDTH_FIELDS:
        v = _attr(config, name)
        if v is not None:
            setattr(cfg, name, v // divisor)
    cfg.vocab_size = math.ceil(config.vocab_size / divisor)
    cfg.num_hidden_layers = blocks
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list):
        cfg.layer_types = layer_types[:blocks]
    return cfg


def _trace_peak(config, track: TrackStarConfig, rows: int, tokens: int, seed: int = 0) -> int:
    """Peak live bytes of one Featurizer.featurize_batch of ``rows`` rows of ``tokens`` tokens
    (the last row one token shorter, so the padded path runs) on a randomly initialized model."""
    from transformers import AutoModelForCausalLM

    from tda.engine.featurizer import Featurizer
    from tda.engine.model import TORCH_DTYPES
    from tda.engine.tracking import candidate_weights
    from tda.engine.second_moments import Moment, SecondMoments

    torch.manual_seed(seed)
    dtype = "float32" if track.dtype == "auto" else track.dtype   # a random model: no checkpoint
    track = track.replace(dtype=dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype]).eval()
    tracking = candidate_weights(model, track)     # no probe: there is no real tokenizer here
    moments = None
    if track.correction != "none":
        moments = SecondMoments({w.param_name: Moment(full=torch.ones(
            tuple(dict(model.named_parameters())[w.param_name].shape), dtype=torch.float64))
            for w in tracking.weights}, source="plan trace")
    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)
    featurizer = Featurizer(model, tokenizer, track, optimizer_state=moments, tracking=tracking)
    gen = torch.Generator().manual_seed(seed)
    seqs = [TokenSequence(tuple(torch.randint(1, config.vocab_size, (tokens - (r == rows - 1
                                                                            and rows > 1),),
                                         generator=gen).tolist()), 1) for r in range(rows)]
    batch = collate(seqs, 0)
    with LiveBytes() as live:
        featurizer.featurize_batch(batch)
    return live.peak


def trace_lengths(tokens: int) -> list[int]:
    """Row lengths to trace at: the real one up to 256 tokens, else 128 and 256 (per-token costs
    are affine in the row length: the attention mask, eager attention's probabilities)."""
    return [tokens] if tokens <= 256 else [128, 256]


def activation_profile(config, track: TrackStarConfig, rows: int, tokens: int,
                       scales: list[int] | None = None, lengths: list[int] | None = None
                       ) -> ActivationProfile:
    """Bytes per padded token of a featurize batch of ``rows`` rows of ``tokens`` tokens for the
    model of transformers ``config`` (see the module docstring). At most 4 rows are traced
    (per-token costs do not depend on the number of rows, up to small per-row buffers), at the
    lengths of ``trace_lengths``; the fit is exact for costs polynomial in the width (degree 1,
    or 2 with the exact correction) times affine in the row length. ``scales`` (width
    divisors) and ``lengths`` override the choice (e.g. [1] and [tokens]: a direct measurement).
    """
    rows = max(1, min(rows, 4))
    degree = 2 if track.correction == "exact" else 1
    if scales is None:
        scales = [1] if _two_block_parameters(config) <= FULL_WIDTH_PARAMETERS else \
            trace_scales(config, degree)
    lengths = lengths or trace_lengths(tokens)
    traces, points, base, block = [], [], [], []
    for s in scales:
        for t in lengths:
            peaks = [_trace_peak(scaled_config(config, s, n), track, rows, t) for n in (1, 2)]
            per_token = [p / (rows * t) for p in peaks]
            traces += [{"width_divisor": s, "blocks": n, "rows": rows, "tokens": t,
                        "peak_bytes": p} for n, p in zip((1, 2), peaks)]
            points.append((1.0 / s, t))
            block.append(per_token[1] - per_token[0])
            base.append(per_token[0] - block[-1])
    # features f^i * t^j (i <= len(scales) - 1, j <= len(lengths) - 1): as many as points
    powers = [(i, j) for i in range(len(scales)) for j in range(len(lengths))]
    design = np.array([[f ** i * t ** j for i, j in powers] for f, t in points])
    target = np.array([tokens ** j for _, j in powers], dtype=float)   # f = 1: full width

    def fit(ys: list[float]) -> float:
        return float(target @ np.linalg.solve(design, np.array(ys)))

    if scales == [1]:
        method = "measured at full width"
    else:
        method = f"extrapolated to full width from widths / {scales}"
    if len(lengths) > 1:
        method += f" and to {tokens} tokens per row from {lengths}"
    return ActivationProfile(fit(base), fit(block), tokens, traces, method)


def _two_block_parameters(config) -> float:
    """Rough parameter count of a two-block copy at full width (to choose full-width tracing)."""
    h = _attr(config, "hidden_size") or 0
    inter = _attr(config, "intermediate_size") or _attr(config, "n_inner") or 4 * h
    return 2 * config.vocab_size * h + 2 * (4 * h * h + 3 * h * inter)
