"""Forward/backward hooks that turn activations and output gradients into projected
per-example gradients, without weights ever holding ``.grad``.

For a tracked weight with inputs a_t [in] and output gradients delta_t [out] of one example,
G = sum_t delta_t a_t^T. With the factored correction G~ = D_r G D_c, the projected gradient is
phi = P_out'^T G P_in' = sum_t (P_out'^T delta_t)(P_in'^T a_t)^T with P_out' = D_r P_out,
P_in' = D_c P_in: each side is projected per token, then one [k, T] x [T, k] product per example
and block. With m blocks, P_out and P_in hold m independent [*, k] matrices side by side and phi
is the m diagonal [k, k] blocks. The exact path materializes G [batch, out, in] and divides it
elementwise by sqrt(V) + eps.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tda.engine.model import TrackedWeight


@dataclass
class WeightProjector:
    """What one tracked weight needs: ``p_out`` [out, blocks*k] and ``p_in`` [in, blocks*k]
    (with the factored correction folded in), or for the exact path the raw matrices and
    ``denominator`` [out, in] = sqrt(V) + eps."""

    weight: TrackedWeight
    p_out: torch.Tensor
    p_in: torch.Tensor
    blocks: int
    denominator: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Per-side projection size k."""
        return self.p_out.shape[1] // self.blocks

    @property
    def dim(self) -> int:
        """Columns of phi for this weight: blocks*k*k."""
        return self.blocks * self.k * self.k


class GradientCollector:
    """Context manager: hooks every tracked module; after ``torch.autograd.grad`` on the summed
    per-example losses, ``features()`` holds phi for each example."""

    def __init__(self, projectors: list[WeightProjector], input_embeddings: torch.nn.Module):
        self.projectors = projectors
        self.input_embeddings = input_embeddings
        self.mask: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None   # embedding output [B, T, hidden], the graph's root
        self.outputs: list[torch.Tensor] = []    # tracked modules' outputs, in forward order
        self._phi: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "GradientCollector":
        # Weights are frozen, so the graph starts at the embedding output: make it a leaf
        # that requires grad (registered first so tracking hooks see the leaf).
        self._handles.append(self.input_embeddings.register_forward_hook(self._make_leaf))
        for proj in self.projectors:
            hook = partial(self._forward, proj)
            self._handles.append(proj.weight.module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs, self.leaf = [], None

    def start(self, mask: torch.Tensor) -> None:
        """Begin a batch; ``mask`` [batch, tokens] is True at real tokens."""
        self.mask = mask
        self.padded = not bool(mask.all())
        self.leaf = None
        self.outputs = []
        self._phi.clear()

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (a scalar) down to the tracked outputs only: nothing below the
        earliest tracked layer is computed, and no parameter gets a gradient."""
        outputs, self.outputs, self.leaf = self.outputs, [], None   # no tensor -> hook -> self cycle
        torch.autograd.grad(loss, outputs, allow_unused=True)

    def features(self, batch: int) -> torch.Tensor:
        """phi for the batch, [batch, d], tracked weights concatenated in order (zeros for a
        weight that received no gradient)."""
        parts = []
        for proj in self.projectors:
            phi = self._phi.get(proj.weight.name)
            if phi is None:
                phi = proj.p_out.new_zeros((batch, proj.dim))
            parts.append(phi.flatten(1))
        return torch.cat(parts, dim=1)

    def _make_leaf(self, module, inputs, output):
        self.leaf = output.detach().requires_grad_(True)
        return self.leaf

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the pad rows of [B, T, *] (they can hold anything, even NaN)."""
        return torch.where(self.mask.unsqueeze(-1), x, 0.0) if self.padded else x

    def _forward(self, proj: WeightProjector, module, inputs, output):
        if not output.requires_grad:
            return None
        x = inputs[0]
        self.outputs.append(output)
        if proj.denominator is None:
            if proj.weight.is_embedding:
                a = proj.p_in[x]                                  # [B, T, m*k]
            else:
                a = x.to(proj.p_in.dtype) @ proj.p_in             # [B, T, m*k]
            output.register_hook(partial(self._backward_projected, proj, self._masked(a)))
        else:
            a = x if proj.weight.is_embedding else self._masked(x.to(proj.p_in.dtype))
            output.register_hook(partial(self._backward_exact, proj, a))
        return None

    def _backward_projected(self, proj: WeightProjector, a: torch.Tensor, grad: torch.Tensor):
        # pad rows of the input side are zeroed (forward hook), so they add nothing here
        d = grad.to(proj.p_out.dtype) @ proj.p_out
        B, T, m, k = d.shape[0], d.shape[1], proj.blocks, proj.k
        d = d.view(B, T, m, k).permute(0, 2, 3, 1)                          # [B, m, k, T]
        self._add(proj.weight.name, d @ a.view(B, T, m, k).transpose(1, 2))  # [B, m, k, k]

    def _backward_exact(self, proj: WeightProjector, a: torch.Tensor, grad: torch.Tensor):
        delta = self._masked(grad.to(proj.p_out.dtype))                      # [B, T, out]
        if proj.weight.is_embedding:
            g = delta.new_zeros((delta.shape[0], proj.weight.in_features, delta.shape[2]))
            g.scatter_add_(1, a.unsqueeze(-1).expand_as(delta), delta)      # [B, in, out]
            g = g.transpose(1, 2)
        else:
            g = delta.transpose(1, 2) @ a                                     # [B, out, in]
        g = g / proj.denominator
        m, k = proj.blocks, proj.k
        gp = (g @ proj.p_in).view(g.shape[0], g.shape[1], m, k)              # [B, out, m, k]
        self._add(proj.weight.name, torch.einsum("omk,boml->bmkl",
                                                 proj.p_out.view(-1, m, k), gp))  # [B, m, k, k]

    def _add(self, name: str, phi: torch.Tensor) -> None:
        # a module called twice in one forward contributes the sum of both calls
        prev = self._phi.get(name)
        self._phi[name] = phi if prev is None else prev + phi


