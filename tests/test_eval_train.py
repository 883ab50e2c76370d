"""Length-bucketed training batches: every text once per epoch, similar lengths together,
seeded; the random batching is the earlier one, step for step."""
import random

import pytest
import torch

from tda.evaluation.train import LMTrainer, epoch_batches, train_lm

_DRAW = random.Random(7)
LENGTHS = [_DRAW.randint(2, 120) for _ in range(203)]


@pytest.mark.parametrize("batching", ["length", "random"])
def test_every_text_once_per_epoch(batching):
    rng = random.Random(0)
    for _ in range(3):
        batches = epoch_batches(LENGTHS, 16, rng, batching)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(LENGTHS)))
        sizes = sorted(len(b) for b in batches)
        assert sizes[1:] == [16] * (len(batches) - 1) and sizes[0] == len(LENGTHS) % 16


def test_length_batches_hold_neighbouring_lengths_and_are_shuffled():
    batches = epoch_batches(LENGTHS, 16, random.Random(0), "length")
    spans = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in batches)
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2                        # the batches cut one sorted order
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)
    rand = epoch_batches(LENGTHS, 16, random.Random(0), "random")
    assert padded < sum(len(b) * max(LENGTHS[i] for i in b) for b in rand)
    order = [min(LENGTHS[i] for i in b) for b in batches]
    assert order != sorted(order)                # the batch order is shuffled
    # seeded: the same seed gives the same epoch, another seed another one (ties too)
    assert epoch_batches(LENGTHS, 16, random.Random(0), "length") == batches
    assert epoch_batches(LENGTHS, 16, random.Random(1), "length") != batches
    with pytest.raises(ValueError, match="batching"):
        epoch_batches(LENGTHS, 16, random.Random(0), "sorted")


def test_random_batching_is_the_earlier_shuffle():
    """The earlier trainer shuffled range(n) once per epoch and cut it into batches."""
    rng, ref = random.Random(3), random.Random(3)
    for _ in range(2):
        order = list(range(len(LENGTHS)))
        ref.shuffle(order)
        assert epoch_batches(LENGTHS, 16, rng, "random") == \
            [order[i:i + 16] for i in range(0, len(order), 16)]


def test_training_counts_tokens_and_is_deterministic(lama_texts):
    from tda.evaluation.models import new_model
    from tda.evaluation.tokenizer import train_bpe_tokenizer

    texts = lama_texts[:32]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    runs = {}
    for batching in ("length", "random", "length"):
        model = new_model("gpt2", "test", tok, 0)
        r = train_lm(model, tok, texts, epochs=2, batch_size=8, seed=0, batching=batching)
        runs.setdefault(batching, []).append((r, model))
    (a, ma), (b, mb) = runs["length"]
    assert a.losses == b.losses and all(torch.equal(x, y) for x, y in
                                        zip(ma.parameters(), mb.parameters()))
    n_tokens = sum(min(len(tok(t)["input_ids"]), 128) for t in texts)
    rnd = runs["random"][0][0]
    assert a.tokens == rnd.tokens == 2 * n_tokens
    assert a.tokens <= a.padded_tokens < rnd.padded_tokens
    assert len(a.losses) == 2 * 4 and all(map(torch.isfinite, torch.tensor(a.losses)))
    assert a.seconds > 0 and a.cpu_seconds > 0 and a.final_lr > 0
    trainer = LMTrainer(new_model("gpt2", "test", tok, 0), tok, texts, epochs=2, batch_size=8)
    assert trainer.total_steps == 8 and sum(1 for _ in trainer.batches()) == 8
