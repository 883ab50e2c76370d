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
from tda.engine.collector import ExactSink, GradientCollector, TokenSink, WeightProjector
from tda.engine.projection import projection_digest, projection_matrix
from tda.engine.second_moments import Moment, SecondMoments, load_second_moments
from tda.engine.tracking import (TrackedWeight, Tracking, candidate_weights, probe,
                                 probe_batch)
from tda.errors import ConfigError, CorpusError, OptimizerStateError, QueryError
from tda.schemas.config import DEFAULT_EPSILON, MAX_LEN_CAP, TrackStarConfig
from tda.schemas.index import (EngineRecord, EstimateRecord, SecondMomentSource,
                               TrackedShare, TrackedWeightRecord)


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
    ``config.correction == "none"``. ``tracking``: the blocks to track (default: found from
    the config and checked on a probe batch, see engine.tracking); weights left out are
    reported as warnings and in ``tracking.notes``.
    """

    def __init__(self, model: nn.Module, tokenizer, config: TrackStarConfig | None = None,
                 optimizer_state: str | Path | SecondMoments | None = None,
                 tracking: Tracking | None = None):
        self.model = model
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.device = first.device
        self.model_dtype = first.dtype
        self.compute_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        self.config = config = resolve_config(config or TrackStarConfig(), model)
        self.tracking = tracking if tracking is not None else find_tracking(model, tokenizer,
                                                                            config)
        for note in self.tracking.notes:
            warnings.warn(note, stacklevel=2)
        self.weights: list[TrackedWeight] = self.tracking.weights
        self.second_moments = self._second_moments(optimizer_state)
        self.projectors = [self._projector(w) for w in self.weights]
        self.layout: list[tuple[str, int]] = [(p.weight.name, p.dim) for p in self.projectors]
        self.dim = sum(p.dim for p in self.projectors)
        self.projection_digest = projection_digest(self._raw_projections())
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
        """(prompt, target) pairs -> token sequences: ``prompt + target`` tokenized once and
        split at the character boundary (engine.batching.query_sequence); only the target
        tokens carry loss. A query over ``max_len`` keeps its end (a warning says how many).
        QueryError names the first query with an empty prompt or target."""
        seqs, n_cut = [], 0
        for i, (prompt, target) in enumerate(queries):
            try:
                seq, cut = query_sequence(self.tokenizer, prompt, target, self.config.max_len)
            except QueryError as e:
                raise QueryError(f"query {i} ({prompt!r} -> {target!r}): {e}") from None
            seqs.append(seq)
            n_cut += cut
        if n_cut:
            warnings.warn(f"{n_cut} of {len(seqs)} queries were longer than max_len="
                          f"{self.config.max_len} tokens: their prompts keep the end",
                          stacklevel=3)
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

    def featurize_batch(self, batch: TokenBatch,
                        token_sink: TokenSink | None = None) -> Features:
        """One forward and one backward (through activations only) for a padded batch
        [batch, tokens]: Features with float32 vectors [batch, d]."""
        batch = batch.to(self.device)
        phi, loss = self.raw_features(batch, token_sink)
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
        return self.raw_features(collate(list(seqs), self.pad_id, pad_side))[0]

    def raw_features(self, batch: TokenBatch, token_sink: TokenSink | None = None,
                     exact_sink: ExactSink | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi [batch, d] un-normalized in the compute dtype, summed loss per row [batch]) for
        a padded batch: one forward, one backward through the activations only, with every
        weight frozen (no ``.grad`` is ever written). ``token_sink`` receives every token's
        projected terms (engine.collector.TokenSink), ``exact_sink`` the exact correction's raw
        per-token terms (engine.collector.ExactTerms)."""
        batch = batch.to(self.device)
        with self._frozen_weights(), GradientCollector(
                self.projectors, self.model.get_input_embeddings(), token_sink,
                exact_sink) as collector, \
                torch.enable_grad():
            collector.start(batch.attention_mask)
            logits = self.model(**batch.model_inputs()).logits
            loss = per_example_loss(logits, batch.labels)
            collector.backward(loss.sum())
            return collector.features(batch.input_ids.shape[0]), loss.detach()

    def epsilon(self, w: TrackedWeight) -> float:
        """The eps of ``w``'s correction: the config's when set, else its optimizer param
        group's, else 1e-8."""
        if self.config.epsilon is not None:
            return self.config.epsilon
        sm = self.second_moments
        return float(sm.epsilon.get(w.param_name, DEFAULT_EPSILON)) if sm else DEFAULT_EPSILON

    def record(self) -> EngineRecord:
        """What an index must record to reproduce these vectors (the manifest's engine)."""
        t, moments = self.tracking, self.second_moments
        estimate = None if moments is None else moments.extra.get("estimate")
        return EngineRecord(
            config=self.config, dim=self.dim,
            tracked=tuple(TrackedWeightRecord(
                name=p.weight.name, param=p.weight.param_name,
                shape_out_in=(p.weight.out_features, p.weight.in_features), k=p.k,
                blocks=p.blocks, dim=p.dim, experts=p.weight.experts,
                sites=tuple(s.kind for s in p.weight.sites),
                epsilon=None if moments is None else self.epsilon(p.weight))
                for p in self.projectors),
            second_moments=None if moments is None else SecondMomentSource(
                source=moments.source, optimizer=moments.optimizer,
                estimate=None if estimate is None else EstimateRecord(**estimate)),
            model_dtype=str(self.model_dtype).replace("torch.", ""),
            tracked_share=TrackedShare(share=round(t.share, 6), tracked=t.tracked_numel,
                                       matrix_parameters=t.universe, narrowed=t.narrowed,
                                       left_out=tuple(t.notes)),
            projection_digest=self.projection_digest, torch=torch.__version__)

    # ----------------------------------------------------------------- internals
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

    def _raw_projections(self) -> Iterable[torch.Tensor]:
        cfg = self.config
        for w in self.weights:
            for side, n in (("out", w.out_features), ("in", w.in_features)):
                yield raw_projection(cfg, w, side, n, torch.float64)

    def _projector(self, w: TrackedWeight) -> WeightProjector:
        cfg, dt = self.config, self.compute_dtype
        p_out = raw_projection(cfg, w, "out", w.out_features, torch.float64)
        p_in = raw_projection(cfg, w, "in", w.in_features, torch.float64)
        denominator = None
        if self.config.correction == "factored":
            d_out, d_in = factored_scales(self.second_moments[w.param_name],
                                          w.stored_transposed, self.epsilon(w))
            p_out, p_in = p_out * d_out.unsqueeze(-1), p_in * d_in.unsqueeze(-1)
        elif self.config.correction == "exact":
            v = self.second_moments[w.param_name].dense()
            v = v.transpose(-2, -1) if w.stored_transposed else v
            denominator = (v.sqrt() + self.epsilon(w)).to(dt).to(self.device)
        return WeightProjector(w, p_out.to(dt).to(self.device), p_in.to(dt).to(self.device),
                               self.config.projection_blocks, denominator)

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


def raw_projection(config: TrackStarConfig, w: TrackedWeight, side: str, n: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """``w``'s projection on ``side`` before any correction: [n, blocks*k], or for an expert
    bank [experts, n, blocks*k] (expert e seeded by the name ``{w.name}[e]``)."""
    k, m = config.projection_dim, config.projection_blocks
    if not w.experts:
        return projection_matrix(config.seed, w.name, side, n, k, m, dtype)
    return torch.stack([projection_matrix(config.seed, f"{w.name}[{e}]", side, n, k, m, dtype)
                        for e in range(w.experts)])


def find_tracking(model: nn.Module, tokenizer, config: TrackStarConfig) -> Tracking:
    """The config's candidate blocks, checked on a probe batch (engine.tracking.probe)."""
    candidates = candidate_weights(model, config)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids, mask = probe_batch(tokenizer, vocab, next(model.parameters()).device)
    return probe(model, candidates, ids, mask)


def resolve_config(config: TrackStarConfig, model: nn.Module) -> TrackStarConfig:
    """The config with ``max_len`` chosen: the model's positions capped at MAX_LEN_CAP when not
    given; a given value beyond the model's positions is an error."""
    positions = _max_positions(model)
    if config.max_len is None:
        return config.replace(max_len=min(positions or MAX_LEN_CAP, MAX_LEN_CAP))
    if positions is not None and config.max_len > positions:
        raise ConfigError(f"max_len={config.max_len} exceeds the model's "
                          f"{positions} positions")
    return config


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    for attr in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    return None


def factored_scales(moment: Moment, stored_transposed: bool,
                    epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonals (d_out [..., out], d_in [..., in]) with D_out G D_in ~= G / sqrt(V), from
    V ~= r c^T / m: d = (factor / sqrt(m) + eps)^(-1/2) on each side, per expert for a bank.
    float64."""
    row, col, mean = moment.factors()
    out_f, in_f = (col, row) if stored_transposed else (row, col)
    root = mean.clamp_min(1e-300).sqrt().unsqueeze(-1)
    return (out_f / root + epsilon).rsqrt(), (in_f / root + epsilon).rsqrt()
