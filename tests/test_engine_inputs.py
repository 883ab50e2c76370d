"""Bad input gets a clear error; optimizer states in every supported layout load to the same
second moments."""
import re

import pytest
import torch

from tda.engine import (Featurizer, Moment, SecondMoments, TrackStarConfig, estimate_from_texts,
                        load_model, load_second_moments)
from tda.tests.tolerances import FLOAT32_SAME_ATOL


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_empty_text_names_the_example(loaded, tiny_model_dir):
    model, tok = loaded
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4), optimizer_state=tiny_model_dir)
    with pytest.raises(ValueError, match=r"example 1: text is empty"):
        f.encode_examples(["Paris is in France.", ""])


def test_long_text_is_cut_to_max_len_with_a_warning(loaded, tiny_model_dir, lama_texts):
    model, tok = loaded
    cfg = TrackStarConfig(projection_dim=4, max_len=12)
    f = Featurizer(model, tok, cfg, optimizer_state=tiny_model_dir)
    text = " ".join(lama_texts[:3])
    with pytest.warns(UserWarning, match="longer than max_len=12"):
        cut = f.encode_examples([text])
    ids = tok(text)["input_ids"][:12]
    same = f.encode_examples([tok.decode(ids)])
    torch.testing.assert_close(torch.from_numpy(cut), torch.from_numpy(same),
                               atol=FLOAT32_SAME_ATOL, rtol=0)


def test_empty_target_and_too_long_target(loaded, tiny_model_dir):
    model, tok = loaded
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4, max_len=16),
                   optimizer_state=tiny_model_dir)
    with pytest.raises(ValueError, match=r"query 1 .*target is empty"):
        f.encode_queries([("Paris is in", " France"), ("Allan Peiper was born in", " ")])
    with pytest.raises(ValueError, match=r"query 0 .*target is \d+ tokens: with max_len=16"):
        f.encode_queries([("Paris is in", " France" * 20)])


def test_max_len_beyond_model_positions(loaded):
    model, tok = loaded
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        Featurizer(model, tok, TrackStarConfig(max_len=4096, correction="none"))


def test_correction_without_state_explains_options(loaded):
    model, tok = loaded
    with pytest.raises(ValueError, match="needs the optimizer's second moments"):
        Featurizer(model, tok, TrackStarConfig())


def test_state_for_another_model_names_the_parameter(loaded, tmp_path, tiny_model_dir):
    model, tok = loaded
    other = {n: Moment(full=torch.ones(p.shape[0], p.shape[1] + 1))
             for n, p in model.named_parameters() if p.dim() == 2}
    SecondMoments(other, "test").save(tmp_path / "tda_second_moments.pt")
    with pytest.raises(ValueError, match=r"parameter '[\w.]+' has shape \[\d+, \d+\], its "
                                         r"second moment \[\d+, \d+\]"):
        Featurizer(model, tok, TrackStarConfig(), optimizer_state=tmp_path)
    right = {n: Moment(full=torch.ones(p.shape)) for n, p in model.named_parameters()
             if p.dim() == 2}
    first = Featurizer(model, tok, TrackStarConfig(), optimizer_state=SecondMoments(
        right, "test")).weights[0].param_name
    del right[first]
    SecondMoments(right, "test").save(tmp_path / "tda_second_moments.pt")
    with pytest.raises(ValueError, match=re.escape(f"no second moment for parameter {first!r}")):
        Featurizer(model, tok, TrackStarConfig(), optimizer_state=tmp_path)


def test_id_keyed_state_of_a_different_model_is_refused(tmp_path, loaded):
    model, _ = loaded
    small = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(small.parameters())
    small(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(ValueError, match="optimizer state does not match the model"):
        load_second_moments(tmp_path, model)


def test_missing_or_garbage_state_file(tmp_path, loaded):
    model, _ = loaded
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        load_second_moments(tmp_path, model)
    (tmp_path / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read optimizer state"):
        load_second_moments(tmp_path, model)


def _one_adam_step(model, groups, lama_texts, tok):
    opt = torch.optim.AdamW(groups, lr=1e-3)
    ids = torch.tensor([tok(lama_texts[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return opt


def test_layouts_agree(tiny_model_dir, tmp_path, lama_texts):
    """Named param_groups, a plain single group, the HF Trainer's decay/no-decay groups and the
    tda file all map to the same (bias-corrected) second moments."""
    model, tok = load_model(tiny_model_dir)
    named = _one_adam_step(model, list(model.named_parameters()), lama_texts, tok)
    truth = {n: named.state[p]["exp_avg_sq"] / (1 - 0.999) for n, p in model.named_parameters()
             if p.dim() == 2}
    sd = named.state_dict()
    torch.save(sd, tmp_path / "named.pt")
    for g in sd["param_groups"]:
        g.pop("param_names")
    torch.save(sd, tmp_path / "plain.pt")
    for file in ("named.pt", "plain.pt"):
        sm = load_second_moments(tmp_path / file, model)
        assert set(truth) <= set(sm.moments), file
        for n, v in truth.items():
            torch.testing.assert_close(sm[n].full, v.double(), msg=f"{file}: {n}")
    sm.save(tmp_path / "tda_second_moments.pt")
    again = load_second_moments(tmp_path / "tda_second_moments.pt", model)
    for n, v in truth.items():
        torch.testing.assert_close(again[n].full, v.double())


def test_hf_trainer_checkpoint(tiny_model_dir, tmp_path, lama_texts):
    """A real HF Trainer checkpoint: optimizer.pt with integer ids in decay/no-decay groups."""
    from transformers import Trainer, TrainingArguments
    model, tok = load_model(tiny_model_dir)
    rows = [tok(t)["input_ids"][:48] for t in lama_texts[:16]]

    def collate(batch):
        n = max(map(len, batch))
        return {"input_ids": torch.tensor([r + [0] * (n - len(r)) for r in batch]),
                "labels": torch.tensor([r + [-100] * (n - len(r)) for r in batch])}

    args = TrainingArguments(str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                             save_steps=2, report_to=[], use_cpu=True, weight_decay=0.1,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    trainer.train()
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert [len(g["params"]) > 0 for g in torch.load(ckpt / "optimizer.pt")["param_groups"]] \
        == [True, True]
    sm = load_second_moments(ckpt, model)
    for n, p in model.named_parameters():
        if p.dim() == 2:
            st = trainer.optimizer.state[p]
            expect = st["exp_avg_sq"].double() / (1 - 0.999 ** float(st["step"]))
            torch.testing.assert_close(sm[n].full, expect, msg=n)


def test_adam_factors_are_row_and_column_means():
    v = torch.rand(5, 7, dtype=torch.float64)
    row, col, mean = Moment(full=v).factors()
    torch.testing.assert_close(row, v.mean(1))
    torch.testing.assert_close(col, v.mean(0))
    assert mean == pytest.approx(v.mean().item())


def test_adafactor_state(tiny_model_dir, tmp_path, lama_texts):
    from transformers.optimization import Adafactor
    model, tok = load_model(tiny_model_dir)
    opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=False)
    ids = torch.tensor([tok(lama_texts[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    sm = load_second_moments(tmp_path, model)
    assert sm.optimizer == "adafactor"
    name, p = next((n, p) for n, p in model.named_parameters() if p.dim() == 2)
    st = opt.state[p]
    torch.testing.assert_close(sm[name].row, st["exp_avg_sq_row"].double())
    dense = sm[name].dense()
    expect = torch.outer(st["exp_avg_sq_row"], st["exp_avg_sq_col"]).double() / \
        st["exp_avg_sq_row"].double().mean()
    torch.testing.assert_close(dense, expect)
    model.zero_grad()
    for correction in ("factored", "exact"):
        f = Featurizer(model, tok, TrackStarConfig(projection_dim=4, correction=correction),
                       optimizer_state=tmp_path)
        assert torch.isfinite(torch.from_numpy(f.encode_examples(lama_texts[:2]))).all()


def test_estimated_moments_are_mean_squared_gradients(tiny_model_dir, lama_texts):
    from tda.tests import reference
    model, tok = load_model(tiny_model_dir, dtype="float64")
    cfg = TrackStarConfig(projection_dim=4, dtype="float64")
    sm = estimate_from_texts(model, tok, lama_texts[:4], cfg)
    assert "estimated" in sm.source and "4 examples" in sm.source
    f = Featurizer(model, tok, cfg, optimizer_state=sm)
    params = dict(model.named_parameters())
    grads = []
    for text in lama_texts[:4]:
        ids = torch.tensor([tok(text)["input_ids"]])
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1],
                                                 ids[0, 1:], reduction="sum")
        grads.append(torch.autograd.grad(loss, [params[w.param_name] for w in f.weights]))
    for j, w in enumerate(f.weights):
        expect = torch.stack([g[j] ** 2 for g in grads]).mean(0)
        torch.testing.assert_close(sm[w.param_name].full, expect)
    assert all(p.grad is None for p in model.parameters())
    del reference
