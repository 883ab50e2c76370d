"""Brute-force TrackStar in float64: autograd per-example gradients, materialized corrections,
dense projections with the engine's matrices. The thing the fast path is checked against."""
from __future__ import annotations

import copy

import torch

from tda.engine import Featurizer, collate, factored_scales, projection_matrix


def untied_copy(model):
    """A float64 copy whose LM head owns its weight, so autograd on it gives the gradient of
    the head's linear use alone (what the engine tracks for a tied head)."""
    ref = copy.deepcopy(model).double()
    head = ref.get_output_embeddings()
    if head is not None and head.weight is ref.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    return ref


def full_gradients(featurizer: Featurizer, ref_model, seqs) -> list[dict[str, torch.Tensor]]:
    """Per-example gradient of each tracked weight as [out, in], float64, one backward each."""
    from tda.engine.batching import per_example_loss

    modules = dict(ref_model.named_modules())
    out = []
    for seq in seqs:
        batch = collate([seq], featurizer.pad_id)
        logits = ref_model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           use_cache=False).logits
        loss = per_example_loss(logits, batch.labels).sum()
        weights = [modules[w.name].weight for w in featurizer.weights]
        grads = torch.autograd.grad(loss, weights)
        out.append({w.name: (g.t() if w.stored_transposed else g).detach()
                    for w, g in zip(featurizer.weights, grads)})
    return out


def corrected(featurizer: Featurizer, grads: dict[str, torch.Tensor], mode: str):
    """Apply the optimizer correction to [out, in] gradients: 'exact' divides elementwise by
    sqrt(V)+eps; 'factored' multiplies by the engine's diagonal scales; 'none' leaves them."""
    cfg = featurizer.config
    res = {}
    for w in featurizer.weights:
        g = grads[w.name]
        if mode == "exact":
            v = featurizer.second_moments[w.param_name].dense()
            v = v.t() if w.stored_transposed else v
            g = g / (v.sqrt() + cfg.epsilon)
        elif mode == "factored":
            d_out, d_in = factored_scales(featurizer.second_moments[w.param_name],
                                          w.stored_transposed, cfg.epsilon)
            g = d_out[:, None] * g * d_in[None, :]
        res[w.name] = g
    return res


def project(featurizer: Featurizer, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense projection P_out_j^T G P_in_j per weight and block j with the engine's seeds,
    concatenated [d]."""
    cfg = featurizer.config
    k, m = cfg.projection_dim, cfg.projection_blocks
    parts = []
    for w in featurizer.weights:
        p_out = projection_matrix(cfg.seed, w.name, "out", w.out_features, k, m, torch.float64)
        p_in = projection_matrix(cfg.seed, w.name, "in", w.in_features, k, m, torch.float64)
        for j in range(m):
            cols = slice(j * k, (j + 1) * k)
            parts.append((p_out[:, cols].t() @ grads[w.name] @ p_in[:, cols]).flatten())
    return torch.cat(parts)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])
