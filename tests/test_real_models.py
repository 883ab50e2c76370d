"""What users bring besides the architecture: LoRA adapters from a Trainer run, bfloat16
checkpoints, optimizer states in other layouts (eps per group, torch's Adafactor, a
torch.distributed checkpoint), expert counts that do not match, unused weights, Hub ids in the
local cache, and models whose positions set max_len."""
import json
import shutil

import pytest
import torch

from tda.engine import Featurizer, TrackStarConfig, collate
from tda.engine import load_model, load_second_moments
from tda.engine.sources import resolve_model
from tda.engine.tracking import share_warning
from tda.errors import ModelMissing, OptimizerStateError
from tda.evaluation.architectures import save_tiny_model, tiny_config, tiny_model

from tda.tests import reference


@pytest.fixture(scope="module")
def tok_and_texts():
    from tda.tests import helpers
    return helpers.bpe_and_short_texts(600, 16, 3)


@pytest.fixture(scope="module")
def llama(tok_and_texts):
    tok, train, _ = tok_and_texts
    return tiny_model("llama", tok, train, steps=2)


@pytest.fixture(scope="module")
def llama_dir(llama, tmp_path_factory):
    return save_tiny_model(llama, tmp_path_factory.mktemp("llama"))


def _rel_err(x, ref):
    return float(((x - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _phi(f, seqs):
    return f.raw_features(collate(seqs, f.pad_id))[0]


# ---------------------------------------------------------------------------- LoRA / PEFT
@pytest.fixture(scope="module")
def lora_checkpoint(llama_dir, tok_and_texts, tmp_path_factory):
    """A real HF Trainer run of a PEFT LoRA adapter on the tiny base: its checkpoint holds
    adapter_config.json, the adapter weights and optimizer.pt of the adapter parameters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    tok, train, _ = tok_and_texts
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    rows = [tok(t)["input_ids"] for t in train[:8]]

    def batch(items):
        n = max(map(len, items))
        return {"input_ids": torch.tensor([r + [0] * (n - len(r)) for r in items]),
                "labels": torch.tensor([r + [-100] * (n - len(r)) for r in items])}

    run = tmp_path_factory.mktemp("lora")
    args = TrainingArguments(str(run), max_steps=2, per_device_train_batch_size=4,
                             save_steps=2, report_to=[], use_cpu=True, learning_rate=5e-2,
                             weight_decay=0.1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=batch)
    trainer.train()
    ckpt = run / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "optimizer.pt").is_file()
    name, p = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    st = trainer.optimizer.state[p]
    truth = (name, st["exp_avg_sq"].double() / (1 - 0.999 ** float(st["step"])))
    return ckpt, truth


def test_lora_adapter_matches_reference(lora_checkpoint, tok_and_texts):
    ckpt, (name, v) = lora_checkpoint
    _, _, texts = tok_and_texts
    model, tok = load_model(ckpt, dtype="float64")      # base from adapter_config.json
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=3, correction="exact",
                                               unit_normalize=False), optimizer_state=ckpt)
    kinds = {w.name.split(".")[-2] for w in f.weights}
    assert kinds == {"lora_A", "lora_B"} and len(f.weights) == 2 * 3 * 2
    assert f.tracking.share == 1.0                      # of the adapter's matrices
    torch.testing.assert_close(f.second_moments[name].full, v)   # Trainer's groups mapped
    assert any(float(f.second_moments[w.param_name].full.abs().max()) > 0 for w in f.weights)
    seqs = f.example_sequences(texts)
    assert _rel_err(_phi(f, seqs), reference.reference_vectors(f, seqs)) < 1e-6


def test_adapter_without_its_base_is_a_clear_error(lora_checkpoint, tmp_path, llama_dir):
    ckpt, _ = lora_checkpoint
    moved = shutil.copytree(ckpt, tmp_path / "adapter")
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMissing, match=r"^[^\n]*PEFT adapter without its base model: "
                                            r"[^\n]*gone[^\n]* pass --base-model DIR$"):
        resolve_model(moved)
    assert resolve_model(moved, llama_dir).base == llama_dir       # --base-model


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_bfloat16_model_is_within_cosine_of_float32(arch, tok_and_texts, llama, tmp_path):
    tok, train, texts = tok_and_texts
    tiny = llama if arch == "llama" else tiny_model(arch, tok, train, steps=2)
    torch.save(tiny.optimizer_state, tmp_path / "optimizer.pt")
    sm = load_second_moments(tmp_path, tiny.model)
    cfg = TrackStarConfig(projection_dim=8)
    f32 = Featurizer(tiny.model, tok, cfg, sm).encode_examples(texts)
    bf16 = tiny.model.to(torch.bfloat16)
    try:
        fb = Featurizer(bf16, tok, cfg, sm)
        assert fb.compute_dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):   # hooks turn autocast off
            got = fb.encode_examples(texts)
    finally:
        tiny.model.float()
    cos = (torch.from_numpy(got) * torch.from_numpy(f32)).sum(1)
    assert got.dtype == f32.dtype and cos.min() >= 0.99, cos


# ---------------------------------------------------------------------------- optimizer state
def test_epsilon_comes_from_the_param_group(llama, tok_and_texts, tmp_path):
    tok, _, texts = tok_and_texts
    sd = {"state": llama.optimizer_state["state"],
          "param_groups": [dict(g, eps=1e-3) for g in llama.optimizer_state["param_groups"]]}
    torch.save(sd, tmp_path / "optimizer.pt")
    base = TrackStarConfig(projection_dim=4)
    f = Featurizer(llama.model, tok, base, optimizer_state=tmp_path)
    assert {f.epsilon(w) for w in f.weights} == {1e-3}
    assert {t.epsilon for t in f.record().tracked} == {1e-3}
    same = Featurizer(llama.model, tok, base.replace(epsilon=1e-3), optimizer_state=tmp_path)
    other = Featurizer(llama.model, tok, base.replace(epsilon=1e-8), optimizer_state=tmp_path)
    a, b, c = (x.encode_examples(texts) for x in (f, same, other))
    assert (a == b).all() and not torch.allclose(torch.from_numpy(a), torch.from_numpy(c))


def test_torch_adafactor_state(llama_dir, tok_and_texts, tmp_path):
    tok, train, texts = tok_and_texts
    model, _ = load_model(llama_dir)
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-3)
    ids = torch.tensor([tok(train[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    sm = load_second_moments(tmp_path, model)
    assert sm.optimizer == "adafactor"
    name, p = next((n, p) for n, p in model.named_parameters() if p.dim() == 2)
    st = opt.state[p]
    expect = (st["row_var"] @ st["col_var"]).double() / st["row_var"].double().mean()
    torch.testing.assert_close(sm[name].dense(), expect)
    assert sm.epsilon[name] == torch.finfo(torch.float32).eps
    model.zero_grad()
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=4), optimizer_state=tmp_path)
    assert torch.isfinite(torch.from_numpy(f.encode_examples(texts))).all()


def test_distributed_checkpoint_of_the_optimizer(llama_dir, tok_and_texts, tmp_path):
    """torch.distributed.checkpoint (what FSDP saves), written without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)
    tok, train, _ = tok_and_texts
    model, _ = load_model(llama_dir)
    opt = torch.optim.AdamW(model.parameters(), eps=1e-6)
    ids = torch.tensor([tok(train[0])["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    with pytest.warns(UserWarning):
        dcp.save({"model": get_model_state_dict(model),
                  "optim": get_optimizer_state_dict(model, opt)},
                  checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    sm = load_second_moments(tmp_path / "ckpt", model, factors_only=True)
    for n, p in model.named_parameters():
        if p.dim() == 2:
            v = opt.state[p]["exp_avg_sq"].double() / (1 - 0.999)
            torch.testing.assert_close(sm[n].row, v.mean(1))
            assert sm.epsilon[n] == 1e-6
    with pytest.warns(UserWarning):
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(tmp_path / "m"),
                 no_dist=True)
    with pytest.raises(OptimizerStateError, match="without optimizer state .*get_optimizer_state_dict"):
        load_second_moments(tmp_path / "m", model)


def test_expert_count_mismatch_is_one_line(tok_and_texts, tmp_path):
    from transformers import AutoModelForCausalLM
    tok, train, _ = tok_and_texts
    four = tiny_model("mixtral", tok, train, steps=1)
    torch.save(four.optimizer_state, tmp_path / "optimizer.pt")
    cfg = tiny_config("mixtral", tok)
    cfg.num_local_experts = 3
    three = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(OptimizerStateError, match=r"^[^\n]*'model\.layers\.0\.mlp\.experts\.gate_up_proj' "
                                         r"has 3 experts, its second moment 4$"):
        Featurizer(three, tok, TrackStarConfig(), load_second_moments(tmp_path, four.model))
    sd = dict(four.optimizer_state)
    sd["param_groups"] = [{k: v for k, v in g.items() if k != "param_names"}
                          for g in sd["param_groups"]]
    torch.save(sd, tmp_path / "optimizer.pt")
    with pytest.raises(OptimizerStateError, match=r"^[^\n]*has 3 experts, the state's entry 4\)$"):
        load_second_moments(tmp_path, three)


# ---------------------------------------------------------------------------- tracking
def test_unused_weights_are_left_out_with_a_note(llama, tok_and_texts):
    tok, _, texts = tok_and_texts
    model = llama.model
    model.value_head = torch.nn.Linear(32, 4000)          # never called by the forward
    try:
        with pytest.warns(UserWarning, match="value_head: left out: it receives no gradient"):
            f = Featurizer(model, tok, TrackStarConfig(correction="none", projection_dim=2))
        assert "value_head" not in {w.name for w in f.weights}
        assert f.tracking.share < 0.9 and "value_head" in share_warning(f.tracking)
        narrowed = Featurizer(model, tok, TrackStarConfig(correction="none", projection_dim=2,
                                                          exclude="value_head"))
        assert share_warning(narrowed.tracking) is None and not narrowed.tracking.notes
        assert f.encode_examples(texts).shape == (3, f.dim)
    finally:
        del model.value_head


def test_token_terms_add_up_to_phi(tok_and_texts):
    """The per-position terms (u_t v_t^T, per routed token for experts) sum to phi."""
    tok, train, texts = tok_and_texts
    model = tiny_model("mixtral", tok, train, steps=1).model.double()
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=3, correction="none"))
    terms = []
    batch = collate(f.example_sequences(texts), f.pad_id)
    phi = f.raw_features(batch, token_sink=lambda *t: terms.append(t))[0]
    rebuilt = torch.zeros_like(phi)
    offsets = dict(zip([w.name for w in f.weights],
                       torch.tensor([0] + [p.dim for p in f.projectors]).cumsum(0).tolist()))
    k = f.config.projection_dim
    B, T = batch.input_ids.shape
    for name, b, t, u, v in terms:
        if b is None:                                     # a dense use: every token in order
            b, t = torch.arange(B).repeat_interleave(T), torch.arange(T).repeat(B)
        pad = ~batch.attention_mask[b, t]                 # pad positions contribute nothing
        assert ((u.flatten(1).abs().sum(1) == 0) | (v.flatten(1).abs().sum(1) == 0))[pad].all()
        o = offsets[name]
        rebuilt[:, o:o + k * k].index_add_(0, b, (u[:, 0, :, None] * v[:, 0, None, :])
                                           .flatten(1))
    assert any(w.experts for w in f.weights)
    torch.testing.assert_close(rebuilt, phi)


# ---------------------------------------------------------------------------- CLI
def test_hub_id_from_the_cache_and_max_len_from_the_model(llama, tmp_path):
    """A 128-position model named by a Hub id in a local cache: `tda index` resolves it
    offline, chooses max_len 128 and says so; an id not in the cache is one line."""
    from tda.tests import helpers
    from tda.tests.indexing import env, write_corpus
    import subprocess
    import sys
    snap = tmp_path / "hub" / "models--tda-test--tiny-llama" / "snapshots" / "0123abcd"
    save_tiny_model(llama, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd")
    corpus = write_corpus(tmp_path / "c.jsonl", helpers.sentences(6))
    e = dict(env(), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tda.cli", *args], capture_output=True,
                              text=True, env=e, timeout=600)

    ok = run("index", "--model", "tda-test/tiny-llama", "--corpus", str(corpus), "--out",
             str(tmp_path / "i"), "--projection-dim", "2", "--no-bm25", "--no-progress")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "note: max_len 128 (the model's positions" in ok.stderr
    assert "tracked: 100.0% of the model's matrix parameters; max_len 128" in ok.stdout
    info = json.loads(run("info", str(tmp_path / "i"), "--json").stdout)
    assert info["config"]["max_len"] == 128 and info["tracked_share"]["share"] == 1.0
    assert info["model"]["given"] == "tda-test/tiny-llama"
    bad = run("index", "--model", "nobody/not-cached", "--corpus", str(corpus), "--out",
              str(tmp_path / "j"), "--no-progress")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "'nobody/not-cached' is neither a directory nor a Hugging Face Hub id in the " \
           "local cache" in bad.stderr
