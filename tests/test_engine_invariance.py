"""Featurization does not depend on how examples are batched, padded or ordered, and float32
agrees with float64."""
import numpy as np
import pytest
import torch

from tda.engine import Featurizer, TrackStarConfig, collate, load_model
from tda.tests.tolerances import BATCH_ATOL, DTYPE_ATOL, FLOAT32_SAME_ATOL


@pytest.fixture(scope="module")
def featurizer(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    return Featurizer(model, tok, TrackStarConfig(projection_dim=8),
                      optimizer_state=tiny_model_dir)


def _encode(f, seqs, batch_size, pad_side="right"):
    return torch.cat([f.featurize_batch(collate(seqs[i:i + batch_size], f.pad_id, pad_side))
                      .vectors for i in range(0, len(seqs), batch_size)])


def test_batch_size(featurizer, lama_texts):
    seqs = featurizer.example_sequences(lama_texts[:12])
    one = _encode(featurizer, seqs, 1)
    for bs in (3, 5, 12):
        torch.testing.assert_close(_encode(featurizer, seqs, bs), one, atol=BATCH_ATOL, rtol=0)


def test_padding_side_and_amount(featurizer, lama_texts):
    seqs = featurizer.example_sequences(lama_texts[:6])
    alone = _encode(featurizer, seqs, 1)
    right = _encode(featurizer, seqs, 6, "right")
    left = _encode(featurizer, seqs, 6, "left")
    torch.testing.assert_close(right, alone, atol=BATCH_ATOL, rtol=0)
    torch.testing.assert_close(left, alone, atol=BATCH_ATOL, rtol=0)
    # much more padding: batch the short texts with a long one
    long = max(featurizer.example_sequences(lama_texts[:160]), key=lambda s: len(s.ids))
    padded = _encode(featurizer, seqs + [long], 7, "left")[:6]
    torch.testing.assert_close(padded, alone, atol=BATCH_ATOL, rtol=0)


def test_order_within_batch(featurizer, lama_texts):
    seqs = featurizer.example_sequences(lama_texts[:8])
    perm = np.random.default_rng(0).permutation(8)
    base = _encode(featurizer, seqs, 8)
    shuffled = _encode(featurizer, [seqs[i] for i in perm], 8)
    torch.testing.assert_close(shuffled, base[perm], atol=BATCH_ATOL, rtol=0)


def test_queries_padding(featurizer):
    queries = [("Allan Peiper was born in", " Alexandra"),
               ("The official language of the Republic of Austria is", " German"),
               ("X", " Y")]
    seqs = featurizer.query_sequences(queries)
    torch.testing.assert_close(_encode(featurizer, seqs, 3, "left"),
                               _encode(featurizer, seqs, 1), atol=BATCH_ATOL, rtol=0)


def test_float32_vs_float64(tiny_model_dir, lama_texts):
    vecs = {}
    for dtype in ("float32", "float64"):
        model, tok = load_model(tiny_model_dir, dtype=dtype)
        f = Featurizer(model, tok, TrackStarConfig(projection_dim=8, dtype=dtype),
                       optimizer_state=tiny_model_dir)
        vecs[dtype] = f.encode_examples(lama_texts[:6])
    cos = (vecs["float32"] * vecs["float64"]).sum(1)
    assert cos.min() > 1 - 1e-5
    np.testing.assert_allclose(vecs["float32"], vecs["float64"], atol=DTYPE_ATOL)


def test_outputs_are_unit_rows_and_deterministic(featurizer, lama_texts):
    a = featurizer.encode_examples(lama_texts[:5])
    b = featurizer.encode_examples(lama_texts[:5])
    assert a.dtype == np.float32 and a.shape == (5, featurizer.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=FLOAT32_SAME_ATOL)
    np.testing.assert_array_equal(a, b)
