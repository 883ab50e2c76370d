"""Brute-force TrackStar in float64: autograd per-example gradients of the tracked parameters,
materialized corrections, dense projections with the engine's matrices. The thing the fast path
is checked against; it knows nothing of hooks, sites or experts' routing."""
from __future__ import annotations

import copy

import torch

from tda.engine import Featurizer, collate, factored_scales
from tda.engine.batching import per_example_loss
from tda.engine.featurizer import raw_projection


def untied_copy(model, featurizer: Featurizer | None = None):
    """A float64 copy for autograd. Its LM head owns its weight (so autograd on it gives the
    head's linear use alone, what the engine tracks for a tied head) unless the featurizer
    tracks the tied parameter as one block (both uses). Expert banks run transformers' eager
    loop (its grouped kernel refuses float64)."""
    ref = copy.deepcopy(model).double()
    if hasattr(ref, "set_experts_implementation") and \
            getattr(ref.config, "_experts_implementation", None) not in (None, "eager"):
        ref.set_experts_implementation("eager")
    shared = featurizer is not None and any(w.is_embedding and len(w.sites) > 1
                                            for w in featurizer.weights)
    head = ref.get_output_embeddings()
    if head is not None and head.weight is ref.get_input_embeddings().weight and not shared:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    return ref


def _parameter(ref_model, w):
    """The reference model's tensor whose gradient is w's G: a single linear use is its
    module's own weight (an untied head); anything else the canonical parameter."""
    if len(w.sites) == 1 and w.sites[0].kind == "linear":
        return dict(ref_model.named_modules())[w.name].weight
    return ref_model.get_parameter(w.param_name)


def full_gradients(featurizer: Featurizer, ref_model, seqs) -> list[dict[str, torch.Tensor]]:
    """Per-example gradient of each tracked weight as [out, in] (experts: [experts, out, in]),
    float64, one backward per example."""
    out = []
    params = [_parameter(ref_model, w) for w in featurizer.weights]
    for seq in seqs:
        batch = collate([seq], featurizer.pad_id)
        logits = ref_model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           use_cache=False).logits
        loss = per_example_loss(logits, batch.labels).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        row = {}
        for w, p, g in zip(featurizer.weights, params, grads):
            g = torch.zeros_like(p) if g is None else g
            row[w.name] = (g.transpose(-2, -1) if w.stored_transposed else g).detach()
        out.append(row)
    return out


def corrected(featurizer: Featurizer, grads: dict[str, torch.Tensor], mode: str):
    """Apply the optimizer correction to [.., out, in] gradients: 'exact' divides elementwise by
    sqrt(V)+eps; 'factored' multiplies by the engine's diagonal scales; 'none' leaves them."""
    res = {}
    for w in featurizer.weights:
        g = grads[w.name]
        eps = featurizer.epsilon(w)
        if mode == "exact":
            v = featurizer.second_moments[w.param_name].dense()
            v = v.transpose(-2, -1) if w.stored_transposed else v
            g = g / (v.sqrt() + eps)
        elif mode == "factored":
            d_out, d_in = factored_scales(featurizer.second_moments[w.param_name],
                                          w.stored_transposed, eps)
            g = d_out.unsqueeze(-1) * g * d_in.unsqueeze(-2)
        res[w.name] = g
    return res


def project(featurizer: Featurizer, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense projection P_out_j^T G P_in_j per weight and sketch j with the engine's seeds
    (an expert bank: summed over its experts, each with its own matrices), concatenated [d]."""
    cfg = featurizer.config
    k, m = cfg.projection_dim, cfg.projection_blocks
    parts = []
    for w in featurizer.weights:
        p_out = raw_projection(cfg, w, "out", w.out_features, torch.float64)
        p_in = raw_projection(cfg, w, "in", w.in_features, torch.float64)
        g = grads[w.name]
        if not w.experts:
            p_out, p_in, g = p_out[None], p_in[None], g[None]
        for j in range(m):
            cols = slice(j * k, (j + 1) * k)
            parts.append(sum(p_out[e][:, cols].t() @ g[e] @ p_in[e][:, cols]
                             for e in range(g.shape[0])).flatten())
    return torch.cat(parts)


def reference_vectors(featurizer: Featurizer, seqs, mode: str | None = None) -> torch.Tensor:
    """phi for every sequence by brute force, [n, d] float64 (mode: the config's correction)."""
    mode = mode or featurizer.config.correction
    ref = untied_copy(featurizer.model, featurizer)
    return torch.stack([project(featurizer, corrected(featurizer, g, mode))
                        for g in full_gradients(featurizer, ref, seqs)])


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])
