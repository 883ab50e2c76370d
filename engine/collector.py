"""Forward/backward hooks that turn activations and output gradients into projected
per-example gradients, without weights ever holding ``.grad``.

For a tracked weight with inputs a_t [in] and output gradients delta_t [out] of one example,
G = sum_t delta_t a_t^T. With the factored correction G~ = D_r G D_c, the projected gradient is
phi = P_out'^T G P_in' = sum_t (P_out'^T delta_t)(P_in'^T a_t)^T with P_out' = D_r P_out,
P_in' = D_c P_in: each side is projected per token (``TokenTerms``: u_t = P_out'^T delta_t,
v_t = P_in'^T a_t), then one [k, T] x [T, k] product per example and block. With m blocks,
P_out and P_in hold m independent [*, k] matrices side by side and phi is the m diagonal
[k, k] blocks. The exact path materializes G [batch, out, in] and divides it elementwise by
sqrt(V) + eps.

Sites (engine.tracking): a linear use contributes delta_t a_t^T; an embedding lookup of token
x_t contributes scale * g_t e_{x_t}^T (or e_{x_t} g_t^T in a tied block oriented like the head),
so its input side is a row of P indexed by the id; an expert bank contributes, for each expert
e, the routed tokens' delta_t a_t^T projected by that expert's own P_out[e], P_in[e], summed
into the bank's one [k, k] sketch (a sum of independent sketches of the experts' gradients is a
sketch of the concatenated gradient: inner products are kept in expectation).

All hook arithmetic runs in the projections' dtype (float32, or float64 for a float64 model)
with autocast disabled, whatever the model computes in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from tda.engine import experts as X
from tda.engine.tracking import Site, TrackedWeight

# token_sink(name, batch_idx [n], position [n], u [n, m, k], v [n, m, k]): the per-token terms,
# phi[b] = sum over its tokens of u_t v_t^T (per sketch). A dense use passes every token of
# the [B, T] batch in order (n = B * T, row b * T + t) with batch_idx and position None.
TokenSink = Callable[[str, torch.Tensor | None, torch.Tensor | None, torch.Tensor,
                      torch.Tensor], None]


@dataclass
class ExactTerms:
    """The exact path's per-token terms of one use of a tracked weight: token n adds
    ``delta[n] a[n]^T`` to G (before the elementwise division by sqrt(V) + eps), never
    materialized per token. ``kind``: 'linear' (delta [n, out], a [n, in]), 'lookup' with
    ``input_side`` 'in' (a holds ids [n]: a_n = e_id) or 'out' (delta holds ids [n]: delta_n =
    e_id, the tied orientation), 'experts' (expert ``expert``'s routed tokens). ``batch_idx``
    [n] and ``position`` [n] place each token."""

    name: str
    kind: str
    input_side: str
    expert: int | None
    batch_idx: torch.Tensor
    position: torch.Tensor
    delta: torch.Tensor
    a: torch.Tensor

    def contract(self, W: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """delta_n^T W a_n [n] (or over the tokens ``rows`` [n] bool selects) for W [out, in]
        in W's dtype: the per-token term of <W, G> without forming any [out, in] per token."""
        d, a = (self.delta, self.a) if rows is None else (self.delta[rows], self.a[rows])
        if self.kind == "lookup" and self.input_side == "in":
            return (d.to(W.dtype) * W.T[a]).sum(-1)
        if self.kind == "lookup":
            return (W[d] * a.to(W.dtype)).sum(-1)
        return ((d.to(W.dtype) @ W) * a.to(W.dtype)).sum(-1)


# exact_sink(terms): the exact path's per-token terms (ExactTerms), one call per use and batch
ExactSink = Callable[[ExactTerms], None]


@dataclass
class WeightProjector:
    """What one tracked weight needs: ``p_out`` [out, blocks*k] and ``p_in`` [in, blocks*k]
    (with the factored correction folded in; [experts, *, blocks*k] for an expert bank), or for
    the exact path the raw matrices and ``denominator`` [out, in] ([experts, out, in]) =
    sqrt(V) + eps."""

    weight: TrackedWeight
    p_out: torch.Tensor
    p_in: torch.Tensor
    blocks: int
    denominator: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Per-side projection size k."""
        return self.p_out.shape[-1] // self.blocks

    @property
    def dim(self) -> int:
        """Columns of phi for this weight: blocks*k*k."""
        return self.blocks * self.k * self.k


class SiteHooks:
    """Context manager hooking every site of ``weights``: subclasses get each use's input in
    the forward (``forward_*``, returning what the backward needs) and its output gradient in
    the backward (``backward_*``). Inputs and gradients arrive as [batch, tokens, *] with pad
    rows zeroed (experts: [n, *] over the routed tokens, with their batch index). A subclass
    that zeroes pad rows itself after projecting them (``mask_raw = False``) gets the raw
    inputs and gradients, pad rows as they are: zeroing [B, T, k] after a projection costs
    k / width of zeroing the [B, T, width] tensors, a full pass per use that the forward and
    backward themselves do not pay."""

    mask_raw = True

    def __init__(self, weights: list[TrackedWeight], input_embeddings: torch.nn.Module,
                 dtype: torch.dtype):
        self.weights = weights
        self.input_embeddings = input_embeddings
        self.dtype = dtype
        self.mask: torch.Tensor | None = None
        self.outputs: list[torch.Tensor] = []     # hooked outputs, in forward order
        self._handles: list = []
        self._restores: list = []

    def __enter__(self):
        # Weights are frozen, so the graph starts at the embedding output: make it a leaf
        # that requires grad (registered first so the tracking hooks see the leaf).
        self._handles.append(self.input_embeddings.register_forward_hook(self._make_leaf))
        banks: dict[int, tuple[torch.nn.Module, dict[str, TrackedWeight]]] = {}
        for w in self.weights:
            for site in w.sites:
                if site.kind == "experts":
                    banks.setdefault(id(site.module), (site.module, {}))[1][site.attr] = w
                else:
                    self._handles.append(site.module.register_forward_hook(
                        partial(self._module_forward, w, site)))
        for bank, members in banks.values():
            self._restores.append(X.instrument(bank, partial(self._expert_tap, members)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for r in self._restores:
            r()
        self._handles.clear()
        self._restores.clear()
        self.outputs = []

    def start(self, mask: torch.Tensor) -> None:
        """Begin a batch; ``mask`` [batch, tokens] is True at real tokens."""
        self.mask = mask
        self.padded = not bool(mask.all())
        self.outputs = []

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (a scalar) down to the hooked outputs only: nothing below the
        earliest tracked layer is computed, and no parameter gets a gradient."""
        outputs, self.outputs = self.outputs, []     # no tensor -> hook -> self cycle
        if outputs:
            torch.autograd.grad(loss, outputs, allow_unused=True)

    # ------------------------------------------------------------------ plumbing
    def _make_leaf(self, module, inputs, output):
        return output.detach().requires_grad_(True)

    def _no_autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, enabled=False)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the pad rows of [B, T, *] (they can hold anything, even NaN)."""
        return torch.where(self.mask.unsqueeze(-1), x, 0.0) if self.padded else x

    def _module_forward(self, w: TrackedWeight, site: Site, module, inputs, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        if not out.requires_grad:
            return None
        B, T = self.mask.shape
        with self._no_autocast(out.device):
            if site.kind == "lookup":
                x = inputs[0]                                       # ids [B, T]
            else:
                x = inputs[0].reshape(B, T, -1).to(self.dtype)
                x = self._masked(x) if self.mask_raw else x
            ctx = self.forward_site(w, site, x)
        self.outputs.append(out)
        out.register_hook(partial(self._module_backward, w, site, ctx))
        return None

    def _module_backward(self, w: TrackedWeight, site: Site, ctx, grad: torch.Tensor):
        B, T = self.mask.shape
        with self._no_autocast(grad.device):
            g = grad.reshape(B, T, -1).to(self.dtype)
            g = self._masked(g) if self.mask_raw else g
            if site.scale != 1.0:
                g = g * site.scale
            self.backward_site(w, site, ctx, g)

    def _expert_tap(self, members: dict[str, TrackedWeight], attr: str, e: int,
                    token_idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = members.get(attr)
        if w is None or not y.requires_grad:
            return y
        T = self.mask.shape[1]
        batch_idx = torch.div(token_idx, T, rounding_mode="floor")
        keep = self.mask.flatten()[token_idx]
        with self._no_autocast(y.device):
            xs = torch.where(keep[:, None], x.to(self.dtype), 0.0)
            ctx = self.forward_expert(w, e, batch_idx, xs)
        self.outputs.append(y)
        y.register_hook(partial(self._expert_backward, w, e, batch_idx, token_idx, keep, ctx))
        return y

    def _expert_backward(self, w, e, batch_idx, token_idx, keep, ctx, grad):
        with self._no_autocast(grad.device):
            g = torch.where(keep[:, None], grad.to(self.dtype), 0.0)
            self.backward_expert(w, e, batch_idx, token_idx, ctx, g)

    # ------------------------------------------------------------------ for subclasses
    def forward_site(self, w: TrackedWeight, site: Site, x: torch.Tensor):
        return x

    def backward_site(self, w: TrackedWeight, site: Site, ctx, g: torch.Tensor) -> None:
        raise NotImplementedError

    def forward_expert(self, w: TrackedWeight, e: int, batch_idx: torch.Tensor,
                       x: torch.Tensor):
        return x

    def backward_expert(self, w, e, batch_idx, token_idx, ctx, g) -> None:
        raise NotImplementedError


def site_gradient(w: TrackedWeight, site: Site, x: torch.Tensor,
                  g: torch.Tensor) -> torch.Tensor:
    """Per-example G of one dense use, [B, out, in]: x is the input [B, T, in] (ids [B, T] for
    a lookup), g the output gradient [B, T, *] (already scaled)."""
    if site.kind != "lookup":
        return g.transpose(1, 2) @ x
    B, T, width = g.shape
    vocab = w.in_features if site.input_side == "in" else w.out_features
    rows = g.new_zeros((B, vocab, width))
    rows.scatter_add_(1, x.unsqueeze(-1).expand(B, T, width), g)   # [B, vocab, hidden]
    return rows.transpose(1, 2) if site.input_side == "in" else rows


def expert_gradient(w: TrackedWeight, batch: int, batch_idx: torch.Tensor, x: torch.Tensor,
                    g: torch.Tensor) -> torch.Tensor:
    """Per-example G of one expert, [B, out, in], from its routed tokens' x [n, in] and
    g [n, out]."""
    G = g.new_zeros((batch, w.out_features, w.in_features))
    return G.index_add_(0, batch_idx, g.unsqueeze(2) * x.unsqueeze(1))


class GradientCollector(SiteHooks):
    """After ``backward`` on the summed per-example losses, ``features()`` holds phi for each
    example. ``token_sink`` (optional) receives every token's projected terms (the factored
    and no-correction paths); ``exact_sink`` (optional) every token's raw terms on the exact
    path (ExactTerms: the sum over tokens of delta_t a_t^T is G). Pad rows are zeroed after
    projection (``mask_raw = False``): both factors u and v of every pad row, so a pad row
    holding NaN or inf contributes nothing; the exact path zeroes the raw rows it multiplies."""

    mask_raw = False

    def __init__(self, projectors: list[WeightProjector], input_embeddings: torch.nn.Module,
                 token_sink: TokenSink | None = None, exact_sink: ExactSink | None = None):
        dtype = projectors[0].p_out.dtype if projectors else torch.float32
        super().__init__([p.weight for p in projectors], input_embeddings, dtype)
        self.projectors = projectors
        self.by_name = {p.weight.name: p for p in projectors}
        self.token_sink = token_sink
        self.exact_sink = exact_sink
        self._phi: dict[str, torch.Tensor] = {}

    def start(self, mask: torch.Tensor) -> None:
        super().start(mask)
        self._phi.clear()

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

    # ---------------------------------------------------------------- dense sites
    def forward_site(self, w, site, x):
        proj = self.by_name[w.name]
        if proj.denominator is not None:
            return x if site.kind == "lookup" else self._masked(x)
        p = proj.p_in if site.input_side == "in" else proj.p_out
        return p[x] if site.kind == "lookup" else self._masked(x @ p)    # [B, T, m*k]

    def backward_site(self, w, site, ctx, g):
        proj = self.by_name[w.name]
        m, k = proj.blocks, proj.k
        B, T = g.shape[:2]
        if proj.denominator is not None:
            g = self._masked(g)
            if self.exact_sink is not None:
                self._exact_terms(w, site, ctx, g)
            self._add_exact(proj, site_gradient(w, site, ctx, g))
            return
        p = proj.p_out if site.input_side == "in" else proj.p_in
        gp = self._masked(g @ p)                                        # [B, T, m*k]
        xp = ctx if site.kind != "lookup" else self._masked(ctx)
        u, v = (gp, xp) if site.input_side == "in" else (xp, gp)
        u, v = u.view(B, T, m, k), v.view(B, T, m, k)
        if self.token_sink is not None:       # a dense use: every token, in order
            self.token_sink(w.name, None, None, u.flatten(0, 1), v.flatten(0, 1))
        self._add(w.name, u.permute(0, 2, 3, 1) @ v.transpose(1, 2))  # [B, m, k, k]

    # ---------------------------------------------------------------- experts
    def forward_expert(self, w, e, batch_idx, x):
        proj = self.by_name[w.name]
        return x if proj.denominator is not None else x @ proj.p_in[e]   # [n, m*k]

    def backward_expert(self, w, e, batch_idx, token_idx, ctx, g):
        proj = self.by_name[w.name]
        B = self.mask.shape[0]
        if proj.denominator is not None:
            if self.exact_sink is not None:
                T = self.mask.shape[1]
                self.exact_sink(ExactTerms(w.name, "experts", "in", e, batch_idx,
                                           token_idx % T, g, ctx))
            self._add_exact(proj, expert_gradient(w, B, batch_idx, ctx, g), e)
            return
        m, k = proj.blocks, proj.k
        u = (g @ proj.p_out[e]).view(-1, m, k)
        v = ctx.view(-1, m, k)
        if self.token_sink is not None:
            T = self.mask.shape[1]
            self.token_sink(w.name, batch_idx, token_idx % T, u, v)
        phi = u.new_zeros((B, m, k, k))
        self._add(w.name, phi.index_add_(0, batch_idx, u.unsqueeze(3) * v.unsqueeze(2)))

    def _exact_terms(self, w, site, x, g) -> None:
        """Hand a dense use's per-token terms to the exact sink: x [B, T, in] (ids [B, T] for
        a lookup), g [B, T, *] (scaled)."""
        B, T = g.shape[:2]
        batch_idx = torch.arange(B, device=g.device).repeat_interleave(T)
        pos = torch.arange(T, device=g.device).repeat(B)
        g, x = g.flatten(0, 1), x.flatten(0, 1)
        if site.kind == "lookup" and site.input_side == "out":
            delta, a = x, g          # G = e_id g^T in the tied head's orientation
        else:
            delta, a = g, x
        self.exact_sink(ExactTerms(w.name, site.kind, site.input_side, None, batch_idx, pos,
                                   delta, a))

    # ---------------------------------------------------------------- accumulation
    def _add_exact(self, proj: WeightProjector, G: torch.Tensor, expert: int | None = None):
        """phi += P_out^T (G / (sqrt(V) + eps)) P_in per sketch, G [B, out, in]."""
        if expert is None:
            den, p_out, p_in = proj.denominator, proj.p_out, proj.p_in
        else:
            den, p_out, p_in = proj.denominator[expert], proj.p_out[expert], proj.p_in[expert]
        m, k = proj.blocks, proj.k
        gp = ((G / den) @ p_in).view(G.shape[0], G.shape[1], m, k)          # [B, out, m, k]
        self._add(proj.weight.name, torch.einsum("omk,boml->bmkl", p_out.view(-1, m, k), gp))

    def _add(self, name: str, phi: torch.Tensor) -> None:
        # a weight used twice in one forward contributes the sum of both uses
        prev = self._phi.get(name)
        self._phi[name] = phi if prev is None else prev + phi
