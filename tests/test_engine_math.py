"""The fast TrackStar path against brute force in float64, for GPT-2 (Conv1D, tied head) and
Llama (nn.Linear, untied head)."""
import numpy as np
import pytest
import torch

from tda.engine import Featurizer, Moment, SecondMoments, TrackStarConfig, load_model
from tda.tests import reference
from tda.tests.tolerances import (FACTORED_EPS_REL, FLOAT32_REL, FLOAT64_REL, NORM_REL,
                                  RANK1_REL)
def _load64(model_dir):
    model, tok = load_model(model_dir, dtype="float64")
    return model, tok


def _rel_err(x, ref):
    return ((x - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()


@pytest.mark.parametrize("unit_normalize", [True, False])
def test_exact_path_matches_autograd_reference(tiny_model_dir, lama_texts, unit_normalize):
    model, tok = _load64(tiny_model_dir)
    cfg = TrackStarConfig(projection_dim=6, correction="exact", unit_normalize=unit_normalize,
                          batch_size=3, dtype="float64")
    f = Featurizer(model, tok, cfg, optimizer_state=tiny_model_dir)
    texts = lama_texts[:5]
    got = f.featurize_examples(texts)
    ref_model = reference.untied_copy(model, f)
    seqs = f.example_sequences(texts)
    ref = torch.stack([reference.project(f, reference.corrected(f, g, "exact"))
                       for g in reference.full_gradients(f, ref_model, seqs)])
    assert torch.allclose(got.norm.double(), ref.norm(dim=1), rtol=NORM_REL)
    if unit_normalize:
        ref = ref / ref.norm(dim=1, keepdim=True)
    # vectors come back float32: agreement to float32 rounding, well under 1e-6 relative
    assert _rel_err(got.vectors.double(), ref) < FLOAT32_REL


def test_exact_path_matches_reference_queries(tiny_model_dir):
    model, tok = _load64(tiny_model_dir)
    cfg = TrackStarConfig(projection_dim=5, correction="exact", unit_normalize=False,
                          dtype="float64")
    f = Featurizer(model, tok, cfg, optimizer_state=tiny_model_dir)
    queries = [("Allan Peiper was born in", " Alexandra"), ("Paris is the capital of", " France")]
    got = torch.from_numpy(f.encode_queries(queries)).double()
    ref = torch.stack([reference.project(f, reference.corrected(f, g, "exact"))
                       for g in reference.full_gradients(f, reference.untied_copy(model, f),
                                                         f.query_sequences(queries))])
    assert _rel_err(got, ref) < FLOAT32_REL


def test_factored_equals_exact_for_rank_one_v(tiny_model_dir, lama_texts):
    model, tok = _load64(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    moments = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            u = torch.rand(p.shape[0], generator=gen, dtype=torch.float64) + 0.1
            v = torch.rand(p.shape[1], generator=gen, dtype=torch.float64) + 0.1
            moments[name] = Moment(full=torch.outer(u, v) * 1e-4)
    sm = SecondMoments(moments, source="rank-1 test")
    base = TrackStarConfig(projection_dim=6, epsilon=0.0, unit_normalize=False, dtype="float64")
    exact = Featurizer(model, tok, base.replace(correction="exact"), sm)
    factored = Featurizer(model, tok, base.replace(correction="factored"), sm)
    seqs = exact.example_sequences(lama_texts[:4])
    a = _phi64(exact, seqs)
    b = _phi64(factored, seqs)
    assert _rel_err(b, a) < RANK1_REL
    # with the default epsilon the two differ only by O(eps / sqrt(V))
    exact_eps = Featurizer(model, tok, base.replace(correction="exact", epsilon=1e-8), sm)
    fact_eps = Featurizer(model, tok, base.replace(correction="factored", epsilon=1e-8), sm)
    assert _rel_err(_phi64(fact_eps, seqs), _phi64(exact_eps, seqs)) < FACTORED_EPS_REL


def _phi64(f: Featurizer, seqs) -> torch.Tensor:
    """Un-normalized phi in the model's float64, bypassing the float32 output cast."""
    return f.projected_gradients(seqs)


def test_factored_path_matches_reference(tiny_model_dir, lama_texts):
    model, tok = _load64(tiny_model_dir)
    cfg = TrackStarConfig(projection_dim=6, unit_normalize=False, dtype="float64")
    f = Featurizer(model, tok, cfg, optimizer_state=tiny_model_dir)
    seqs = f.example_sequences(lama_texts[:4])
    ref = torch.stack([reference.project(f, reference.corrected(f, g, "factored"))
                       for g in reference.full_gradients(f, reference.untied_copy(model, f), seqs)])
    assert _rel_err(_phi64(f, seqs), ref) < FLOAT64_REL


def test_no_correction_matches_plain_projected_gradient(tiny_model_dir, lama_texts):
    model, tok = _load64(tiny_model_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4, correction="none",
                                               unit_normalize=False, dtype="float64"))
    seqs = f.example_sequences(lama_texts[:3])
    ref = torch.stack([reference.project(f, g)
                       for g in reference.full_gradients(f, reference.untied_copy(model, f), seqs)])
    assert _rel_err(_phi64(f, seqs), ref) < FLOAT64_REL


def test_tied_embeddings_tracked_as_one_block_match_reference(gpt2_dir, lama_texts):
    model, tok = _load64(gpt2_dir)
    cfg = TrackStarConfig(projection_dim=4, correction="exact", include_embeddings=True,
                          unit_normalize=False, dtype="float64")
    f = Featurizer(model, tok, cfg, optimizer_state=gpt2_dir)
    # the tied parameter is ONE block: its lookup and the head's linear use, summed
    assert f.weights[0].is_embedding and f.weights[0].name == "transformer.wte"
    assert [s.kind for s in f.weights[0].sites] == ["lookup", "linear"]
    assert "lm_head" not in {w.name for w in f.weights}
    assert sum(w.param_name == "transformer.wte.weight" for w in f.weights) == 1
    seqs = f.example_sequences(lama_texts[:3])
    ref_model = reference.untied_copy(model, f)
    ref = torch.stack([reference.project(f, reference.corrected(f, g, "exact"))
                       for g in reference.full_gradients(f, ref_model, seqs)])
    assert _rel_err(_phi64(f, seqs), ref) < FLOAT64_REL


def test_weights_never_hold_grad(tiny_model_dir, lama_texts):
    model, tok = load_model(tiny_model_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4), optimizer_state=tiny_model_dir)
    f.encode_examples(lama_texts[:3])
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())   # flags restored


def test_random_projection_preserves_cosine(gpt2_dir):
    """Cosine of projected vectors ~ cosine of full corrected gradients: mean abs error over
    276 pairs of real sentences <= 0.05 at d >= 4096, shrinking about like 1/sqrt(d).

    d grows by independent k x k sketches per weight (projection_blocks). Growing k alone
    shrinks the error more slowly (~ d^-1/4 for these short texts: a Kronecker-structured
    sketch of a low-rank gradient; see README, "Projection accuracy")."""
    from tda.tests import helpers
    texts = helpers.sentences(400)[200:224]      # sentences the model was not trained on
    model, tok = _load64(gpt2_dir)
    base = TrackStarConfig(dtype="float64", unit_normalize=False, projection_dim=4)
    f0 = Featurizer(model, tok, base, optimizer_state=gpt2_dir)
    seqs = f0.example_sequences(texts)
    full = torch.stack([reference.flat(reference.corrected(f0, g, "factored"))
                        for g in reference.full_gradients(f0, reference.untied_copy(model, f0), seqs)])
    full = full / full.norm(dim=1, keepdim=True)
    iu = torch.triu_indices(len(texts), len(texts), 1)
    true_cos = (full @ full.t())[iu[0], iu[1]]
    assert len(true_cos) >= 100
    dims, errors = [], []
    for blocks in (16, 32, 64):
        errs = []
        for seed in range(3):
            f = Featurizer(model, tok, base.replace(projection_blocks=blocks, seed=seed),
                           optimizer_state=gpt2_dir)
            phi = _phi64(f, seqs)
            phi = phi / phi.norm(dim=1, keepdim=True)
            errs.append(((phi @ phi.t())[iu[0], iu[1]] - true_cos).abs().mean().item())
        dims.append(f.dim)
        errors.append(float(np.mean(errs)))
    print("d:", dims, "mean |cos error|:", errors)
    assert dims[-1] >= 4096 and errors[-1] <= 0.05
    slope = np.polyfit(np.log(dims), np.log(errors), 1)[0]
    assert -0.7 < slope < -0.3, (dims, errors, slope)


@pytest.mark.parametrize("blocks", [1, 3])
def test_blocks_match_reference(gpt2_dir, lama_texts, blocks):
    model, tok = _load64(gpt2_dir)
    for correction in ("factored", "exact"):
        cfg = TrackStarConfig(projection_dim=3, projection_blocks=blocks, correction=correction,
                              unit_normalize=False, dtype="float64")
        f = Featurizer(model, tok, cfg, optimizer_state=gpt2_dir)
        seqs = f.example_sequences(lama_texts[:3])
        ref = torch.stack([reference.project(f, reference.corrected(f, g, correction))
                           for g in reference.full_gradients(f, reference.untied_copy(model, f),
                                                             seqs)])
        assert f.dim == 9 * blocks * len(f.weights)
        assert _rel_err(_phi64(f, seqs), ref) < FLOAT64_REL
