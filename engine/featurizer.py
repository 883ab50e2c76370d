"""Featurizer: texts and (prompt, target) queries -> TrackStar vectors."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from tda.engine.batching import (TokenBatch, TokenSequence, collate, example_sequence, pad_id,
                                 per_example_loss, query_sequence)
from tda.engine.collector import GradientCollector, WeightProjector
from tda.engine.model import TrackedWeight, tracked_weights
from tda.engine.projection import projection_matrix
from tda.engine.second_moments import (Moment, SecondMoments, estimate_second_moments,
                                       load_second_moments)
from tda.errors import ConfigError, CorpusError, OptimizerStateError, QueryError
from tda.schemas.config import TrackStarConfig
from tda.schemas.index import EngineRecord, SecondMomentSource, TrackedWeightRecord


@dataclass
class Features:
    """Featurized rows. ``vectors`` [n, d] float32 (unit rows when unit_normalize);
    ``norm`` [n] the L2 norm of phi before normalization; ``loss`` [n] summed NLL in nats;
    ``n_tokens`` [n] real tokens."""

    vectors: torch.Tensor
    norm: torch.Tensor
    loss: torch.Tensor
    n_tokens: torch.Tensor

    @staticmethod
    def concat(parts: list["Features"]) -> "Features":
        """Rows of several Features, in order."""
        return Features(*(torch.cat([getattr(p, f) for p in parts])
                          for f in ("vectors", "norm", "loss", "n_tokens")))


class Featurizer:
    """Per-example projected, optimizer-corrected, normalized loss gradients of a causal LM.

    ``optimizer_state``: a path (file or model directory, see ``load_second_moments``), a
    ``SecondMoments`` (e.g. from ``estimate_from_texts``), or None when
    ``config.correction == "none"``.
    """

    def __init__(self, model: nn.Module, tokenizer, config: TrackStarConfig | None = None,
                 optimizer_state: str | Path | SecondMoments | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config = config or TrackStarConfig()
        positions = _max_positions(model)
        if positions is not None and config.max_len > positions:
            raise ConfigError(f"max_len={config.max_len} exceeds the model's "
                              f"{positions} positions")
        self.weights: list[TrackedWeight] = tracked_weights(model, config)
        first = next(model.parameters())
        self.device = first.device
        self.compute_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        self.second_moments = self._second_moments(optimizer_state)
        self.projectors = [self._projector(w) for w in self.weights]
        self.layout: list[tuple[str, int]] = [(p.weight.name, p.dim) for p in self.projectors]
        self.dim = sum(p.dim for p in self.projectors)
        self.pad_id = pad_id(tokenizer)

    # ----------------------------------------------------------------- public API
    def encode_examples(self, texts: Sequence[str]) -> np.ndarray:
        """Training texts -> float32 [n, d]. Texts over ``max_len`` tokens keep their first
        ``max_len`` tokens (a warning says how many); empty texts raise CorpusError."""
        return self.featurize_examples(texts).vectors.numpy()

    def encode_queries(self, queries: Sequence[tuple[str, str]]) -> np.ndarray:
        """(prompt, target) pairs -> float32 [m, d]; the loss is over the target tokens only."""
        return self.featurize(self.query_sequences(queries)).vectors.numpy()

    def featurize_examples(self, texts: Sequence[str]) -> Features:
        """Training texts -> Features (vectors [n, d], norm, loss, n_tokens)."""
        return self.featurize(self.example_sequences(texts))

    def example_sequences(self, texts: Iterable[str]) -> list[TokenSequence]:
        """Training texts -> token sequences whose every token but the first carries loss
        (``n_context`` = 1), cut to ``max_len`` tokens (a UserWarning says how many were
        cut). CorpusError names the first text with fewer than 2 tokens."""
        seqs, n_cut = [], 0
        for i, text in enumerate(texts):
            try:
                seq, cut = example_sequence(self.tokenizer, text, self.config.max_len)
            except CorpusError as e:
                raise CorpusError(f"example {i}: {e}") from None
            seqs.append(seq)
            n_cut += cut
        if n_cut:
            warnings.warn(f"{n_cut} of {len(seqs)} texts were longer than max_len="
                          f"{self.config.max_len} tokens and were cut", stacklevel=3)
        return seqs

    def query_sequences(self, queries: Iterable[tuple[str, str]]) -> list[TokenSequence]:
        """(prompt, target) pairs -> token sequences: prompt and target tokenized separately
        (the target without special tokens) and joined; only the target tokens carry loss
        (``n_context`` = the prompt's length). QueryError names the first query with an empty
        prompt or target, or over ``max_len`` tokens in all."""
        seqs = []
        for i, (prompt, target) in enumerate(queries):
            try:
                seqs.append(query_sequence(self.tokenizer, prompt, target, self.config.max_len))
            except QueryError as e:
                raise QueryError(f"query {i} ({prompt!r} -> {target!r}): {e}") from None
        return seqs

    def featurize(self, seqs: Sequence[TokenSequence], pad_side: str = "right") -> Features:
        """Sequences -> Features (vectors [n, d] float32, norm, loss, n_tokens), in order,
        ``config.batch_size`` sequences per forward/backward pass."""
        if not seqs:
            return Features(torch.zeros((0, self.dim)), torch.zeros(0), torch.zeros(0),
                            torch.zeros(0, dtype=torch.long))
        bs = self.config.batch_size
        return Features.concat([self.featurize_batch(collate(list(seqs[i:i + bs]), self.pad_id,
                                                             pad_side))
                                for i in range(0, len(seqs), bs)])

    def featurize_batch(self, batch: TokenBatch) -> Features:
        """One forward and one backward (through activations only) for a padded batch
        [batch, tokens]: Features with float32 vectors [batch, d]."""
        batch = batch.to(self.device)
        phi, loss = self._phi_and_loss(batch)
        phi = phi.float()
        norm = phi.norm(dim=1)
        vectors = phi / norm.clamp_min(1e-30).unsqueeze(1) if self.config.unit_normalize else phi
        return Features(vectors.cpu(), norm.cpu(), loss.detach().float().cpu(),
                        batch.n_tokens.cpu())

    def projected_gradients(self, seqs: Sequence[TokenSequence],
                            pad_side: str = "right") -> torch.Tensor:
        """phi, the projected (and corrected) per-example loss gradients before any
        normalization: [n, d] in the compute dtype (float64 for a float64 model, else
        float32), one batch of all ``seqs``. The float64 path the math tests check against
        brute force; ``featurize`` is this, cast to float32 and normalized, in batches."""
        batch = collate(list(seqs), self.pad_id, pad_side).to(self.device)
        return self._phi_and_loss(batch)[0]

    def record(self) -> EngineRecord:
        """What an index must record to reproduce these vectors (the manifest's engine)."""
        moments = self.second_moments
        return EngineRecord(
            config=self.config, dim=self.dim,
            tracked=tuple(TrackedWeightRecord(
                name=p.weight.name, param=p.weight.param_name,
                shape_out_in=(p.weight.out_features, p.weight.in_features), k=p.k,
                blocks=p.blocks, dim=p.dim) for p in self.projectors),
            second_moments=None if moments is None
            else SecondMomentSource(source=moments.source, optimizer=moments.optimizer))

    # ----------------------------------------------------------------- internals
    def _phi_and_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi [batch, d] in the compute dtype, loss [batch] in nats) for a batch on the
        model's device: one forward, one backward through the activations only, with every
        weight frozen (no ``.grad`` is ever written)."""
        with self._frozen_weights(), GradientCollector(
                self.projectors, self.model.get_input_embeddings()) as collector, \
                torch.enable_grad():
            collector.start(batch.attention_mask)
            logits = self.model(input_ids=batch.input_ids,
                                attention_mask=batch.attention_mask.long(),
                                position_ids=batch.position_ids, use_cache=False).logits
            loss = per_example_loss(logits, batch.labels)
            collector.backward(loss.sum())
            return collector.features(batch.input_ids.shape[0]), loss.detach()

    def _second_moments(self, state) -> SecondMoments | None:
        if self.config.correction == "none":
            return None
        if state is None:
            raise OptimizerStateError(
                f"correction={self.config.correction!r} needs the optimizer's second moments: "
                "pass optimizer_state=<path to optimizer.pt or model dir>, a SecondMoments "
                "(tda.engine.estimate_from_texts), or use correction='none'")
        moments = state if isinstance(state, SecondMoments) else load_second_moments(
            state, self.model, factors_only=self.config.correction == "factored")
        moments.check_against(self.model, [w.param_name for w in self.weights])
        return moments

    def _projector(self, w: TrackedWeight) -> WeightProjector:
        cfg, dt = self.config, self.compute_dtype
        k, m = cfg.projection_dim, cfg.projection_blocks
        p_out = projection_matrix(cfg.seed, w.name, "out", w.out_features, k, m, torch.float64)
        p_in = projection_matrix(cfg.seed, w.name, "in", w.in_features, k, m, torch.float64)
        denominator = None
        if self.config.correction == "factored":
            d_out, d_in = factored_scales(self.second_moments[w.param_name],
                                          w.stored_transposed, self.config.epsilon)
            p_out, p_in = p_out * d_out[:, None], p_in * d_in[:, None]
        elif self.config.correction == "exact":
            v = self.second_moments[w.param_name].dense()
            v = v.t() if w.stored_transposed else v
            denominator = (v.sqrt() + self.config.epsilon).to(dt).to(self.device)
        return WeightProjector(w, p_out.to(dt).to(self.device), p_in.to(dt).to(self.device),
                               m, denominator)

    @contextlib.contextmanager
    def _frozen_weights(self):
        params = list(self.model.parameters())
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, s in zip(params, saved):
                p.requires_grad_(s)


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    return None


def factored_scales(moment: Moment, stored_transposed: bool,
                    epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonals (d_out [out], d_in [in]) with D_out G D_in ~= G / sqrt(V), from
    V ~= r c^T / m: d = (factor / sqrt(m) + eps)^(-1/2) on each side. float64."""
    row, col, mean = moment.factors()
    out_f, in_f = (col, row) if stored_transposed else (row, col)
    root = max(mean, 1e-300) ** 0.5
    return (out_f / root + epsilon).rsqrt(), (in_f / root + epsilon).rsqrt()


def estimate_from_texts(model: nn.Module, tokenizer, texts: Sequence[str],
                        config: TrackStarConfig | None = None) -> SecondMoments:
    """Second moments when no optimizer state exists: the mean squared per-example gradient of
    the tracked parameters over ``texts`` (a sample of the corpus)."""
    config = config or TrackStarConfig()
    weights = tracked_weights(model, config)
    device = next(model.parameters()).device
    seqs = [example_sequence(tokenizer, t, config.max_len)[0] for t in texts]

    def loss_fn(m, ids):
        batch = collate([TokenSequence(ids, 1)], pad_id(tokenizer)).to(device)
        logits = m(input_ids=batch.input_ids, position_ids=batch.position_ids,
                   use_cache=False).logits
        return per_example_loss(logits, batch.labels).sum()

    return estimate_second_moments(model, [s.ids for s in seqs],
                                   [w.param_name for w in weights], loss_fn)
