"""The architecture matrix: for every architecture tda claims (dense, tied, soft-capped,
sliding-window, mixture-of-experts with and without shared experts), tiny models trained a few
AdamW steps give vectors equal to the float64 brute-force reference, exact path and factored
path (rank-one V), with at least 90% of the matrix parameters tracked."""
import copy

import pytest
import torch

from tda.engine import Featurizer, Moment, SecondMoments, TrackStarConfig, collate
from tda.engine import experts as X
from tda.engine import load_second_moments
from tda.evaluation.architectures import ARCHITECTURES, MOE, tiny_model

from tda.tests import reference


@pytest.fixture(scope="module")
def tok_and_texts():
    from tda.tests import helpers
    return helpers.bpe_and_short_texts(1000, 12, 2)


_MODELS: dict = {}


def _trained(arch, tok_and_texts):
    """The arch's tiny model trained 2 AdamW steps of 6 sentences (cached for this module)."""
    if arch not in _MODELS:
        tok, train, _ = tok_and_texts
        _MODELS[arch] = tiny_model(arch, tok, train, steps=2, batch_size=6)
    return _MODELS[arch]


def _rel_err(x, ref):
    return float(((x - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _rank_one(model, seed=0) -> SecondMoments:
    gen = torch.Generator().manual_seed(seed)
    moments = {}
    for name, p in model.named_parameters():
        if p.dim() in (2, 3):
            lead = tuple(p.shape[:-2])
            u = torch.rand(*lead, p.shape[-2], generator=gen, dtype=torch.float64) + 0.1
            v = torch.rand(*lead, p.shape[-1], generator=gen, dtype=torch.float64) + 0.1
            moments[name] = Moment(full=u.unsqueeze(-1) * v.unsqueeze(-2) * 1e-4)
    return SecondMoments(moments, source="rank one")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_matches_float64_reference(arch, tok_and_texts, tmp_path):
    tok, train, texts = tok_and_texts
    tiny = _trained(arch, tok_and_texts)
    model = copy.deepcopy(tiny.model).double()
    torch.save(tiny.optimizer_state, tmp_path / "optimizer.pt")
    moments = load_second_moments(tmp_path / "optimizer.pt", model)      # 3-D for experts
    cfg = TrackStarConfig(projection_dim=3, correction="exact", unit_normalize=False)
    f = Featurizer(model, tok, cfg, optimizer_state=moments)
    assert not f.tracking.notes and f.tracking.share >= 0.9, (f.tracking.share, f.tracking.notes)
    if arch in MOE:
        assert any(w.experts for w in f.weights) and any("gate" in w.name or "router" in w.name
                                                        for w in f.weights if not w.experts)
    seqs = f.example_sequences(texts)
    got = f.raw_features(collate(seqs, f.pad_id))[0]
    assert _rel_err(got, reference.reference_vectors(f, seqs)) < 1e-6

    rank1, base = _rank_one(model), cfg.replace(epsilon=0.0)
    fac = Featurizer(model, tok, base.replace(correction="factored"), rank1, tracking=f.tracking)
    exact = Featurizer(model, tok, base, rank1, tracking=f.tracking)
    phi = fac.raw_features(collate(seqs, fac.pad_id))[0]
    assert _rel_err(phi, reference.reference_vectors(exact, seqs)) < 1e-6


@pytest.mark.parametrize("arch", MOE)
def test_instrumented_experts_equal_transformers_forward(arch, tok_and_texts):
    """float32, each bank's configured kernel (grouped_mm): the model's logits are the same with
    the instrumented expert loop as without it."""
    tok, train, texts = tok_and_texts
    model = _trained(arch, tok_and_texts).model
    batch = collate([Featurizer(model, tok, TrackStarConfig(correction="none"))
                     .example_sequences(texts)[i] for i in range(2)], 0)
    with torch.no_grad():
        own = model(**batch.model_inputs()).logits
        banks = [m for m in model.modules() if X.is_expert_bank(m)]
        assert banks and all(m.config._experts_implementation != "eager" for m in banks)
        restores = [X.instrument(m, lambda attr, e, idx, x, y: y) for m in banks]
        try:
            mine = model(**batch.model_inputs()).logits
        finally:
            for r in restores:
                r()
    assert X.relative_error(mine, own) < 1e-5
