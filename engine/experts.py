"""Mixture-of-experts banks: an instrumented, numerically equivalent expert forward.

In transformers 5.x an experts module holds each projection of all experts as one 3-D parameter
([experts, out, in], or [experts, in, out] when ``is_transposed``) and applies it with
functional kernels (a loop of F.linear, batched or grouped matrix products), so module hooks
never see an expert's input or output. While tracking, the bank's forward is replaced by
``instrumented_forward``: per expert e, the tokens routed to it, x_e = hidden[token_idx], go
through y_e = x_e W_e^T (+ b_e), the gate, and the down projection, exactly as the eager
kernel does (the flags ``has_gate``, ``has_bias``, ``is_transposed``, ``_apply_gate``,
``has_post_expert_norm`` set by ``@use_experts_implementation`` say how); each matrix product
passes (attr, e, token_idx, x_e, y_e) to a ``tap`` that hooks it. On the probe batch the result
is checked against the bank's own forward.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

# tap(attr, expert, token_idx [n], x [n, in], y [n, out]) -> y (possibly the same tensor)
Tap = Callable[[str, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def is_expert_bank(module: nn.Module) -> bool:
    """A transformers experts module decorated by ``use_experts_implementation``: 3-D
    ``down_proj`` and ``gate_up_proj`` (or ``up_proj``) parameters and the decorator's flags."""
    if not all(hasattr(module, a) for a in ("has_gate", "has_bias", "is_transposed")):
        return False
    down = module._parameters.get("down_proj")
    up = module._parameters.get("gate_up_proj" if module.has_gate else "up_proj")
    return down is not None and up is not None and down.dim() == 3 and up.dim() == 3


def bank_parameters(module: nn.Module) -> list[str]:
    """The bank's 3-D matrix parameters in the order the forward uses them."""
    return ["gate_up_proj" if module.has_gate else "up_proj", "down_proj"]


def _linear(bank: nn.Module, attr: str, e: int, x: torch.Tensor) -> torch.Tensor:
    w = getattr(bank, attr)[e]
    y = x @ w if bank.is_transposed else F.linear(x, w)
    if bank.has_bias:
        y = y + getattr(bank, f"{attr}_bias")[e]
    return y


def instrumented_forward(bank: nn.Module, tap: Tap, hidden_states: torch.Tensor,
                         top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """The eager expert loop: hidden [tokens, hidden], top_k_index/top_k_weights [tokens, k]
    -> [tokens, hidden]. Indices outside [0, experts) (expert-parallel sentinels) are skipped."""
    n_experts = getattr(bank, bank_parameters(bank)[1]).shape[0]
    out = torch.zeros_like(hidden_states)
    with torch.no_grad():
        hit = [e for e in torch.unique(top_k_index).tolist() if 0 <= e < n_experts]
    up_attr = bank_parameters(bank)[0]
    for e in hit:
        token_idx, pos = torch.where(top_k_index == e)
        x = hidden_states[token_idx]
        h = tap(up_attr, e, token_idx, x, _linear(bank, up_attr, e, x))
        h = bank._apply_gate(h) if bank.has_gate else bank.act_fn(h)
        y = tap("down_proj", e, token_idx, h, _linear(bank, "down_proj", e, h))
        if getattr(bank, "has_post_expert_norm", False):
            y = bank.post_expert_norm(y)
        y = y * top_k_weights[token_idx, pos, None]
        out.index_add_(0, token_idx, y.to(out.dtype))
    return out


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (0 when both are zero)."""
    got, ref = got.detach().double(), ref.detach().double()
    denom = float(ref.norm())
    return float((got - ref).norm()) / denom if denom > 0 else float(got.norm())


def tolerance(dtype: torch.dtype) -> float:
    """Relative error two correct implementations of one matrix product may differ by."""
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 2e-2)


def own_forward(bank: nn.Module, *args, **kwargs) -> torch.Tensor:
    """The bank's transformers forward (its configured kernel); the eager loop when that kernel
    refuses the dtype (grouped_mm refuses float64)."""
    forward = type(bank).forward
    try:
        return forward(bank, *args, **kwargs)
    except RuntimeError:
        eager = getattr(forward, "__wrapped__", None)
        if eager is None:
            raise
        return eager(bank, *args, **kwargs)


def instrument(bank: nn.Module, tap: Tap, verify: bool = False,
               on_mismatch: Callable[[str], None] | None = None) -> Callable[[], None]:
    """Route ``bank``'s forward through ``instrumented_forward`` with ``tap``; returns the
    function that restores it. With ``verify`` each call is also run through the bank's own
    forward and ``on_mismatch(reason)`` is called when they differ."""
    saved = bank.__dict__.get("forward")

    def forward(hidden_states, top_k_index=None, top_k_weights=None, *args, **kwargs):
        if top_k_index is None:
            top_k_index = kwargs.pop("router_indices")
        if top_k_weights is None:
            top_k_weights = kwargs.pop("routing_weights")
        out = instrumented_forward(bank, tap, hidden_states, top_k_index, top_k_weights)
        if verify:
            with torch.no_grad():
                ref = own_forward(bank, hidden_states, top_k_index, top_k_weights)
            err = relative_error(out, ref)
            if err > tolerance(hidden_states.dtype) and on_mismatch is not None:
                on_mismatch(f"the instrumented expert forward differs from transformers' by "
                            f"{err:.1e} (relative)")
        return out

    bank.forward = forward

    def restore() -> None:
        if saved is None:
            del bank.forward
        else:
            bank.forward = saved
    return restore
