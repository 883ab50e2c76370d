"""Second moments when no optimizer state exists: V = E[g^2] of the per-example gradient over a
seeded random sample of the corpus, computed with the featurizer's own hooks on its device.

Each batch's per-example gradients G_b [batch, out, in] (per expert for a bank; a tied block's
uses summed first) are squared and reduced at once: into the full V [rows, cols] for the exact
correction, or only into row and column sums (what the factored correction needs) otherwise, so
the host never holds a model-sized float64 V. Under torchrun every rank featurizes its share of
the sample and the sums are added across ranks (``reduce``), so every rank gets the same V.
"""
from __future__ import annotations

from typing import Callable, Sequence as Seq

import numpy as np
import torch

from tda.engine.batching import TokenSequence, collate, per_example_loss
from tda.engine.collector import SiteHooks, expert_gradient, site_gradient
from tda.engine.featurizer import Featurizer
from tda.engine.second_moments import Moment, SecondMoments
from tda.errors import CorpusError
from tda.schemas.config import TrackStarConfig

Reduce = Callable[[torch.Tensor], torch.Tensor]


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """``min(n, total)`` distinct ordinals of [0, total), drawn uniformly with ``seed``, sorted."""
    if total <= 0 or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(total, size=min(n, total), replace=False).tolist())


class MomentCollector(SiteHooks):
    """Sums of squared per-example gradients per tracked parameter, in the parameter's storage
    orientation, float64 on the model's device: ``full`` [..., rows, cols] or ``row``
    [..., rows] and ``col`` [..., cols] sums."""

    def __init__(self, featurizer: Featurizer, factored: bool):
        super().__init__(featurizer.weights, featurizer.model.get_input_embeddings(),
                         featurizer.compute_dtype)
        self.factored = factored
        self.device = featurizer.device
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self._uses: dict[tuple, int] = {}
        self._pending: dict[tuple, list] = {}      # (name, expert) -> [G sum, uses received]
        self.active = True

    def start(self, mask: torch.Tensor) -> None:
        super().start(mask)
        self._uses.clear()
        self._pending.clear()

    def finish(self) -> None:
        """Square and add what is still pending (uses whose outputs got no gradient)."""
        for (name, e), (G, _) in list(self._pending.items()):
            self._square_add(self._weight(name), e, G)
        self._pending.clear()

    def _weight(self, name: str):
        return next(w for w in self.weights if w.name == name)

    def forward_site(self, w, site, x):
        self._uses[(w.name, None)] = self._uses.get((w.name, None), 0) + 1
        return x

    def forward_expert(self, w, e, batch_idx, x):
        self._uses[(w.name, e)] = self._uses.get((w.name, e), 0) + 1
        return x

    def backward_site(self, w, site, ctx, g):
        self._received(w, None, site_gradient(w, site, ctx, g))

    def backward_expert(self, w, e, batch_idx, token_idx, ctx, g):
        self._received(w, e, expert_gradient(w, self.mask.shape[0], batch_idx, ctx, g))

    def _received(self, w, e, G: torch.Tensor) -> None:
        # a parameter used several times in one forward: its uses' G add up before squaring
        key = (w.name, e)
        entry = self._pending.setdefault(key, [None, 0])
        entry[0] = G if entry[0] is None else entry[0] + G
        entry[1] += 1
        if entry[1] >= self._uses.get(key, 1):
            del self._pending[key]
            self._square_add(w, e, entry[0])

    def _square_add(self, w, e, G: torch.Tensor) -> None:
        if not self.active:
            return
        sq = (G.transpose(-2, -1) if w.stored_transposed else G).double() ** 2  # [B, rows, cols]
        shape = tuple(w.gradient_shape())
        if w.stored_transposed:
            shape = shape[:-2] + (shape[-1], shape[-2])
        sums = self.sums.setdefault(w.param_name, {})
        if self.factored:
            parts = {"row": sq.sum((0, 2)), "col": sq.sum((0, 1))}
            sizes = {"row": shape[:-1], "col": shape[:-2] + shape[-1:]}
        else:
            parts, sizes = {"full": sq.sum(0)}, {"full": shape}
        for key, value in parts.items():
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = torch.zeros(sizes[key], dtype=torch.float64,
                                              device=value.device)
            if e is None:
                acc += value
            else:
                acc[e] += value


def estimate_moments(featurizer: Featurizer, seqs: Seq[TokenSequence], factored: bool,
                     batch_size: int = 8, reduce: Reduce | None = None,
                     batches: int | None = None, description: str = "") -> SecondMoments:
    """V = mean over ``seqs`` of the squared per-example gradient of every tracked parameter.

    ``reduce`` adds a tensor over ranks (torch.distributed all_reduce) so that every rank ends
    with the same V from its own share of the sample; ``batches`` (>= the local count) is the
    number of forward passes to run, padding with passes that count nothing (FSDP ranks must
    step in lockstep). The moments hold ``full`` (exact) or ``row``/``col`` means (factored)."""
    reduce = reduce or (lambda t: t)
    local = [list(seqs[i:i + batch_size]) for i in range(0, len(seqs), batch_size)]
    total_batches = max(batches or 0, len(local))
    collector = MomentCollector(featurizer, factored)
    n_local = 0
    filler = local[0] if local else None
    with featurizer._frozen_weights(), collector, torch.enable_grad():
        for j in range(total_batches):
            part = local[j] if j < len(local) else None
            collector.active = part is not None
            part = part or filler or [TokenSequence((0, 0), 1)]
            batch = collate(part, featurizer.pad_id).to(featurizer.device)
            collector.start(batch.attention_mask)
            logits = featurizer.model(**batch.model_inputs()).logits
            collector.backward(per_example_loss(logits, batch.labels).sum())
            collector.finish()
            n_local += len(part) if collector.active else 0
    n = int(reduce(torch.tensor([float(n_local)], dtype=torch.float64,
                                 device=featurizer.device)).item())
    if n == 0:
        raise CorpusError("cannot estimate second moments from zero examples")
    moments = {}
    for w in featurizer.weights:
        sums = collector.sums.get(w.param_name)
        if sums is None:                       # no example reached it on this rank
            sums = _zeros_like_sums(w, factored, featurizer.device)
        sums = {k: reduce(v) for k, v in sorted(sums.items())}
        rows, cols = (w.in_features, w.out_features) if w.stored_transposed else \
            (w.out_features, w.in_features)
        if factored:
            moments[w.param_name] = Moment(row=(sums["row"] / (n * cols)).cpu(),
                                           col=(sums["col"] / (n * rows)).cpu())
        else:
            moments[w.param_name] = Moment(full=(sums["full"] / n).cpu())
    what = description or f"{n} examples"
    return SecondMoments(moments, source=f"estimated: mean squared per-example gradient over "
                                         f"{what}", optimizer="estimated",
                         extra={"n_examples": n, "estimate": {"examples": n,
                                                              "form": "factored" if factored
                                                              else "full"}})


def _zeros_like_sums(w, factored: bool, device) -> dict[str, torch.Tensor]:
    lead = (w.experts,) if w.experts else ()
    rows, cols = (w.in_features, w.out_features) if w.stored_transposed else \
        (w.out_features, w.in_features)
    z = lambda *s: torch.zeros(lead + s, dtype=torch.float64, device=device)  # noqa: E731
    return {"row": z(rows), "col": z(cols)} if factored else {"full": z(rows, cols)}


def estimate_from_texts(model: torch.nn.Module, tokenizer, texts: Seq[str],
                        config: TrackStarConfig | None = None) -> SecondMoments:
    """Second moments when no optimizer state exists: the mean squared per-example gradient of
    the tracked parameters over ``texts`` (a sample of the corpus), full V (the exact
    correction's; the factored one reduces it)."""
    config = config or TrackStarConfig()
    f = moment_featurizer(model, tokenizer, config)
    seqs = f.example_sequences(texts)
    if not seqs:
        raise CorpusError("cannot estimate second moments from zero examples")
    return estimate_moments(f, seqs, factored=False, batch_size=config.batch_size)


def moment_featurizer(model: torch.nn.Module, tokenizer, config: TrackStarConfig,
                      tracking=None) -> Featurizer:
    """The featurizer whose hooks estimate V for ``config``'s tracked parameters: like Adam's,
    V is of a parameter's whole gradient, so a tied head's parameter is tracked with both of
    its uses (the embedding lookup too)."""
    cfg = config.replace(correction="none")
    base = Featurizer(model, tokenizer, cfg, tracking=tracking)
    emb = getattr(model.get_input_embeddings(), "weight", None)
    tied_head = any(len(w.sites) == 1 and w.sites[0].kind == "linear"
                    and w.sites[0].module.weight is emb for w in base.weights)
    if not tied_head:
        return base
    wanted = {w.param_name for w in base.weights}
    full = Featurizer(model, tokenizer, cfg.replace(include_embeddings=True))
    keep = [w for w in full.weights if w.param_name in wanted]
    from dataclasses import replace
    return Featurizer(model, tokenizer, cfg.replace(include_embeddings=True),
                      tracking=replace(full.tracking, weights=keep))
