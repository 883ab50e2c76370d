"""Which weights TrackStar tracks, and how each one is used in the forward pass.

A tracked weight (a *block*) is one parameter seen as a matrix G = sum_t u_t v_t^T in the
[out, in] orientation of its gradient, or a bank of ``experts`` such matrices (a 3-D parameter
[experts, out, in] of a mixture-of-experts layer, each expert's slice its own matrix). A block
has one or more *sites*, the places the parameter is used:

- ``linear``: y = x W^T (+ b) with x [..., in] per token: nn.Linear (also subclasses whose
  forward returns a tuple, e.g. routers), HF Conv1D (stored [in, out]), or any module owning a
  2-D ``weight`` whose first output is F.linear of its first input (checked on a probe batch);
- ``lookup``: y = scale * W[ids] (the input embeddings; ``scale`` measured on the probe);
- ``experts``: per expert e, y_e = x_e W_e^T over the tokens routed to e (engine.experts).

A tied input/output embedding tracked with ``include_embeddings`` is ONE block with two sites
(the head's linear use and the embedding's lookup, whose ids sit on the block's ``out`` side),
so its vectors hold the parameter's true gradient. The share of the model's matrix parameters
that is tracked is ``tracked_share``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from tda.engine import experts as X
from tda.errors import ModelError
from tda.schemas.config import TrackStarConfig

SiteKind = Literal["linear", "lookup", "experts"]
SHARE_WARNING = 0.9


@dataclass(frozen=True, eq=False)
class Site:
    """One use of a tracked parameter. ``input_side`` is the block side the module's input
    belongs to ('in' for every linear use; 'out' for a tied embedding's lookup in a block
    oriented like the head). ``attr`` names the expert bank's 3-D parameter."""

    module: nn.Module
    kind: SiteKind
    input_side: Literal["in", "out"] = "in"
    scale: float = 1.0
    attr: str = "weight"
    verify: bool = False        # a linear-like module: check on the probe that it is linear


@dataclass(frozen=True, eq=False)
class TrackedWeight:
    """One tracked block. ``name`` keys its projection seeds and its features; ``param_name`` is
    the canonical parameter; G is [out_features, in_features] (per expert when ``experts``);
    ``stored_transposed`` when the parameter is stored [in, out] ([experts, in, out])."""

    name: str
    param_name: str
    out_features: int
    in_features: int
    stored_transposed: bool
    sites: tuple[Site, ...]
    experts: int = 0

    @property
    def module(self) -> nn.Module:
        return self.sites[0].module

    @property
    def is_embedding(self) -> bool:
        return any(s.kind == "lookup" for s in self.sites)

    @property
    def numel(self) -> int:
        return max(self.experts, 1) * self.out_features * self.in_features

    def gradient_shape(self) -> tuple[int, ...]:
        """Shape of G in the block's orientation: [out, in] or [experts, out, in]."""
        base = (self.out_features, self.in_features)
        return ((self.experts,) if self.experts else ()) + base


@dataclass
class Tracking:
    """The blocks, and what was left out and why (one note per weight)."""

    weights: list[TrackedWeight]
    notes: list[str] = field(default_factory=list)
    narrowed: bool = False               # include/exclude differ from the defaults
    universe: int = 0                    # matrix parameters (numel) the share is taken over

    @property
    def tracked_numel(self) -> int:
        seen, total = set(), 0
        for w in self.weights:
            if w.param_name not in seen:
                seen.add(w.param_name)
                total += w.numel
        return total

    @property
    def share(self) -> float:
        """Tracked matrix parameters / the model's matrix parameters (see ``matrix_universe``)."""
        return self.tracked_numel / max(self.universe, 1)


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "active_adapters")


def _owned_weight(module: nn.Module) -> torch.Tensor | None:
    w = module._parameters.get("weight")
    return w if w is not None and w.dim() == 2 else None


def candidate_weights(model: nn.Module, config: TrackStarConfig) -> Tracking:
    """The blocks the config asks for, before the probe: nn.Linear / Conv1D / linear-like
    modules, expert banks, and the input embeddings with ``include_embeddings`` (merged with a
    tied head into one block). For a PEFT model only the adapter's trainable weights."""
    canonical: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        canonical.setdefault(id(param), name)
    include = re.compile(config.include)
    exclude = re.compile(config.exclude) if config.exclude else None
    wanted = lambda n: bool(include.search(n)) and not (exclude and exclude.search(n))  # noqa
    peft = is_peft_model(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad} if peft else None
    input_emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_weight = getattr(input_emb, "weight", None)
    tied = head is not None and emb_weight is not None and head.weight is emb_weight

    found: list[TrackedWeight] = []
    for name, module in model.named_modules():
        if not wanted(name):
            continue
        if X.is_expert_bank(module):
            for attr in X.bank_parameters(module):
                p = getattr(module, attr)
                if trainable is not None and id(p) not in trainable:
                    continue
                e, a, b = p.shape
                out_f, in_f = (b, a) if module.is_transposed else (a, b)
                found.append(TrackedWeight(f"{name}.{attr}", canonical[id(p)], out_f, in_f,
                                           bool(module.is_transposed),
                                           (Site(module, "experts", attr=attr),), experts=e))
            continue
        weight = _owned_weight(module)
        if weight is None or (trainable is not None and id(weight) not in trainable):
            continue
        if module is input_emb:
            if not config.include_embeddings:
                continue
            v, h = weight.shape
            if tied:          # one block in the head's [vocab, hidden] orientation
                found.append(TrackedWeight(name, canonical[id(weight)], v, h, False,
                                           (Site(module, "lookup", input_side="out"),
                                            Site(head, "linear"))))
            else:             # [hidden, vocab]: the ids are the input side
                found.append(TrackedWeight(name, canonical[id(weight)], h, v, True,
                                           (Site(module, "lookup"),)))
            continue
        if isinstance(module, nn.Embedding):
            continue          # other lookup tables (positions, per-layer embeddings)
        if module is head and tied and config.include_embeddings:
            continue          # already a site of the embedding's block
        if isinstance(module, nn.Linear):
            out_f, in_f, transposed = weight.shape[0], weight.shape[1], False
            verify = type(module) is not nn.Linear
        elif is_conv1d(module):
            out_f, in_f, transposed, verify = weight.shape[1], weight.shape[0], True, False
        else:
            out_f, in_f, transposed, verify = weight.shape[0], weight.shape[1], False, True
        found.append(TrackedWeight(name, canonical[id(weight)], out_f, in_f, transposed,
                                   (Site(module, "linear", verify=verify),)))
    narrowed = config.include != ".*" or bool(config.exclude)
    tracking = Tracking(found, narrowed=narrowed,
                        universe=matrix_universe(model, config.include_embeddings))
    if not found:
        raise ModelError(f"no weights tracked: no linear, Conv1D or expert module name "
                            f"matches include={config.include!r} exclude={config.exclude!r}")
    return tracking


def matrix_universe(model: nn.Module, include_embeddings: bool) -> int:
    """Elements of the model's matrix parameters (2-D and above, each counted once), the
    denominator of the tracked share: every parameter of 2 or more dimensions except lookup
    tables (nn.Embedding weights that are not the output head; the input embeddings count when
    ``include_embeddings``) and biases (an expert bank's [experts, out] biases are 2-D). For a
    PEFT model, its trainable (adapter) parameters only."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_w = getattr(head, "weight", None)
    input_w = getattr(model.get_input_embeddings(), "weight", None)
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    peft = is_peft_model(model)
    total = 0
    for name, p in model.named_parameters():          # each parameter once
        if p.dim() < 2 or (peft and not p.requires_grad) or name.endswith("bias"):
            continue
        if id(p) in lookup and p is not head_w and not (include_embeddings and p is input_w):
            continue
        total += p.numel()
    return total


# --------------------------------------------------------------------------- probe
PROBE_TEXTS = ("The capital of France is Paris, on the Seine.",
               "Allan Peiper was born in Alexandra, Victoria, in 1960.")


def probe_batch(tokenizer, vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed two-row batch of real text, ids [2, T] and mask [2, T] (right padded), that
    every rank and the query side build identically."""
    rows = [[i for i in tokenizer(t, add_special_tokens=True)["input_ids"] if 0 <= i < vocab_size]
            for t in PROBE_TEXTS]
    rows = [r if len(r) >= 2 else [0, 0] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = True
    return ids.to(device), mask.to(device)


@dataclass
class _SiteProbe:
    grad: bool = False
    problem: str | None = None
    scale: float | None = None


def probe(model: nn.Module, tracking: Tracking, ids: torch.Tensor,
          mask: torch.Tensor) -> Tracking:
    """One forward and backward on the probe batch with the weights frozen. Keeps the blocks
    whose every site behaved as its kind says and received a gradient, and notes the others:
    a linear-like module must return F.linear of its input, for every token of the batch; an
    expert bank's instrumented forward must equal transformers' own; a lookup must be a
    (scaled) row lookup, whose scale is measured here."""
    B, T = ids.shape
    state: dict[int, _SiteProbe] = {}
    outputs: list[torch.Tensor] = []

    def info(site: Site) -> _SiteProbe:
        return state.setdefault(id(site), _SiteProbe())

    def watch(site: Site, out: torch.Tensor) -> None:
        if out.requires_grad:
            outputs.append(out)
            out.register_hook(lambda g: setattr(info(site), "grad", True))

    def module_hook(w: TrackedWeight, site: Site, module, inputs, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        x = inputs[0] if inputs else None
        if site.kind == "lookup":
            plain = nn.functional.embedding(x, module.weight)
            scale = float((out.detach().double() * plain.double()).sum()
                          / (plain.double() ** 2).sum().clamp_min(1e-300))
            if X.relative_error(out, plain * scale) > X.tolerance(out.dtype):
                info(site).problem = "its output is not a (scaled) row lookup"
            info(site).scale = scale
        elif x is None or x.numel() != B * T * w.in_features or \
                out.numel() != B * T * w.out_features:
            info(site).problem = ("it is not applied once to every token of the batch "
                                  "(per-example gradients cannot be separated)")
            return None
        elif site.verify:
            bias = getattr(module, "bias", None)
            bias = bias if isinstance(bias, torch.Tensor) and bias.dim() == 1 else None
            with torch.no_grad():
                ref = nn.functional.linear(x.reshape(-1, w.in_features).to(module.weight.dtype),
                                           module.weight, bias)
            if X.relative_error(out.reshape(ref.shape), ref) > X.tolerance(ref.dtype):
                info(site).problem = "its first output is not F.linear of its first input"
        watch(site, out)
        return None

    def bank_tap(members: dict[str, Site]):
        def tap(attr, expert, token_idx, x, y):
            site = members.get(attr)
            if site is not None:
                watch(site, y)
            return y
        return tap

    def bank_mismatch(members: dict[str, Site]):
        def report(why: str) -> None:
            for site in members.values():
                info(site).problem = why
        return report

    banks: dict[int, tuple[nn.Module, dict[str, Site]]] = {}
    for w in tracking.weights:
        for s in w.sites:
            if s.kind == "experts":
                banks.setdefault(id(s.module), (s.module, {}))[1][s.attr] = s
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    handles, restores = [], []
    leaf = {}

    def make_leaf(module, inputs, output):
        leaf["x"] = output.detach().requires_grad_(True)
        return leaf["x"]

    try:
        for p in params:
            p.requires_grad_(False)
        handles.append(model.get_input_embeddings().register_forward_hook(make_leaf))
        for w in tracking.weights:
            for s in w.sites:
                if s.kind != "experts":
                    handles.append(s.module.register_forward_hook(
                        lambda m, i, o, w=w, s=s: module_hook(w, s, m, i, o)))
        for bank, members in banks.values():
            restores.append(X.instrument(bank, bank_tap(members), verify=True,
                                         on_mismatch=bank_mismatch(members)))
        with torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits     # right padded
            labels = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
            loss = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                               labels.flatten(), ignore_index=-100)
            if outputs:
                torch.autograd.grad(loss, outputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for restore in restores:
            restore()
        for p, s in zip(params, saved):
            p.requires_grad_(s)

    kept, notes = [], list(tracking.notes)
    for w in tracking.weights:
        sites, problem = [], None
        for s in w.sites:
            st = state.get(id(s), _SiteProbe())
            problem = problem or st.problem or (
                None if st.grad else "it receives no gradient on a probe batch (the loss does "
                                     "not reach it)")
            sites.append(replace(s, scale=st.scale) if st.scale is not None else s)
        if problem:
            notes.append(f"{w.name}: left out: {problem}")
        else:
            kept.append(replace(w, sites=tuple(sites)))
    if not kept:
        raise ModelError("no tracked weight is usable: " + "; ".join(notes[:5]))
    return Tracking(kept, notes, tracking.narrowed, tracking.universe)


def share_warning(tracking: Tracking) -> str | None:
    """The warning `tda index` prints when under 90% of the matrix parameters are tracked and
    the user did not narrow the set (include/exclude)."""
    if tracking.narrowed or tracking.share >= SHARE_WARNING:
        return None
    return (f"only {tracking.share:.1%} of the model's matrix parameters are tracked "
            f"({tracking.tracked_numel:,} of {tracking.universe:,}); the rest: "
            + ("; ".join(tracking.notes[:3]) or "no supported use found")
            + ". Narrow the set on purpose with --include/--exclude to silence this.")
