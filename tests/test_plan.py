"""`tda plan`: bad input named, model sources (directory, config.json, Hub cache), the memory
trace against known allocations and against a direct measurement, the corpus count against a
real build, and the arithmetic of the 8B worked example (docs/cluster.md)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tda.tests.indexing import tda, write_corpus

from tda.engine.memory import LiveBytes, activation_profile
from tda.errors import ModelError
from tda.indexer.plan import corpus_size, model_shape
from tda.schemas.config import TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.options import PlanOptions

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = REPO / "docs" / "examples" / "llama-3-8b-config.json"


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_config_without_needed_fields_names_them(tmp_path):
    cfg = json.loads(LLAMA3_8B.read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size"):
        cfg.pop(key)
    out = tda("plan", "--model", str(_write(tmp_path / "config.json", cfg)), "--tokens", "1e9",
              check=False)
    assert out.returncode == 1
    line = out.stderr.strip()
    assert line.count("\n") == 0 and str(tmp_path / "config.json") in line
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size"):
        assert key in line
    assert "num_attention_heads" not in line and "vocab_size" not in line


def test_gpt2_aliases_are_named_and_accepted(tmp_path):
    with pytest.raises(ModelError, match=r"hidden_size \(or n_embd\)"):
        model_shape(str(_write(tmp_path / "a.json", {"model_type": "gpt2", "n_layer": 2,
                                                      "n_head": 2, "vocab_size": 100})),
                    TrackStarConfig())
    shape, _ = model_shape(str(_write(tmp_path / "b.json", {
        "model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 100})),
        TrackStarConfig(max_len=64))
    # GPT-2: wte 100x32 + wpe 1024x32 + per block 12*32^2 + 13*32, final norm 64
    assert shape.parameters == 100 * 32 + 1024 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 64
    assert shape.blocks == 2 and shape.tracked_weights == 2 * 4 + 1


@pytest.mark.parametrize("data, message", [
    ({"hidden_size": 8}, "lacks the field model_type"),
    ({"model_type": "no-such-architecture"}, "is not an architecture"),
    ([1, 2], "not a config object"),
])
def test_other_bad_configs(tmp_path, data, message):
    with pytest.raises(ModelError, match=message):
        model_shape(str(_write(tmp_path / "config.json", data)), TrackStarConfig())


def test_hub_id_is_resolved_from_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    cfg = json.loads(LLAMA3_8B.read_text())
    cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=256,
               num_attention_heads=4, num_key_value_heads=2)
    _write(snapshot / "config.json", cfg)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    shape, _ = model_shape("acme/tiny-llama", TrackStarConfig(max_len=64))
    assert shape.source == str(snapshot / "config.json") and shape.blocks == 2
    with pytest.raises(ModelError, match="local Hugging Face cache"):
        model_shape("acme/not-cached", TrackStarConfig())


def test_live_bytes_counts_what_is_alive_at_once():
    weight = torch.ones(1000, 1000)                     # made before: never counted
    with LiveBytes() as live:
        a = torch.zeros(256, 1024)                      # 1 MiB
        b = torch.zeros(512, 1024)                      # 2 MiB
        view = b[:10].t()                               # a view: no new storage
        wt = weight.t()                                 # a view of an older tensor
        b.add_(1.0)                                     # in place: same storage
        del a
        c = torch.zeros(256, 1024)                      # 1 MiB, after a was freed
        d = weight * 2                                  # 3.8 MiB
    assert live.peak == (2 << 20) + (1 << 20) + 4_000_000
    assert view.shape == (1024, 10) and wt.shape == (1000, 1000) and c.numel() and d.numel()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_narrow_traces_extrapolate_to_the_direct_measurement(arch):
    """Traces at widths / 4 and / 2 and rows of 32 and 64 tokens, extrapolated to full width
    and 128 tokens, give what the full-width trace at 128 tokens measures."""
    from transformers import GPT2Config, LlamaConfig
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=352,
                         num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=256) if arch == "llama" else \
        GPT2Config(vocab_size=1024, n_embd=128, n_layer=6, n_head=8, n_positions=256)
    track = TrackStarConfig(max_len=128)
    narrow = activation_profile(config, track, rows=2, tokens=128, scales=[4, 2],
                                lengths=[32, 64])
    direct = activation_profile(config, track, rows=2, tokens=128, scales=[1], lengths=[128])
    assert narrow.base == pytest.approx(direct.base, rel=1e-3)
    assert narrow.block == pytest.approx(direct.block, rel=1e-3)
    assert direct.block > 0 and direct.base > 0


def test_corpus_count_matches_the_build(gpt2_dir, lama_texts, tmp_path):
    from tda.indexer.build import build_index
    from tda.indexer.plan import make_plan
    from tda.schemas.options import IndexOptions
    corpus = write_corpus(tmp_path / "c.jsonl", lama_texts[:60],
                          long_texts=[lama_texts[60:90], lama_texts[90:130]])
    track = TrackStarConfig(max_len=32, projection_dim=4)
    options = IndexOptions(shard_size=16, bm25=False)
    plan = make_plan(str(gpt2_dir), [str(corpus)], PlanOptions(device="cpu"), track, options)
    built = build_index(gpt2_dir, [corpus], tmp_path / "idx", track, options, progress=False)
    for key in ("documents", "examples", "tokens"):
        assert plan.corpus[key] == getattr(built, key), key
    assert plan.shards["count"] == built.shards_total
    assert plan.corpus["how"].startswith("counted")
    assert plan.device["total"] > plan.device["runtime"] + plan.device["activations"]
    # a homogeneous file: 40 of 150 sentences read, the rest extrapolated by bytes
    lines = write_corpus(tmp_path / "s.jsonl", (lama_texts * 2)[:150])
    sampled = corpus_size([str(lines)], PlanOptions(sample_records=40), track,
                          CorpusOptions(), str(gpt2_dir))
    assert sampled.how.startswith("measured on the first 40")
    assert abs(sampled.documents - 150) <= 0.25 * 150


def test_llama3_8b_worked_example_arithmetic():
    """docs/cluster.md's figures: parameters, d, projections, examples, shards, storage."""
    track = TrackStarConfig(max_len=2048, dtype="bfloat16")
    shape, _ = model_shape(str(LLAMA3_8B), track)
    assert shape.parameters == 8_030_261_248
    assert shape.root_parameters == 2 * 525_336_576 + 4096
    assert shape.block_parameters == 218_112_000
    assert shape.tracked_weights == 225 and shape.dim == 57_600
    assert shape.projection_values * 4 == 2_753_792 * 16 * 4          # 176 MB
    corpus = corpus_size([], PlanOptions(tokens=160e9), track, CorpusOptions(), None)
    assert corpus.examples == 78_125_000
    assert math.ceil(corpus.examples / 4096) == 19_074
    assert round(corpus.examples * shape.dim * 2 / 1e12, 1) == 9.0      # TB of raw vectors


@pytest.mark.slow
def test_gpu_check_runs_in_its_cpu_mode(tmp_path):
    """bench/gpu.py --cpu-tiny: every part runs (FSDP on 2 gloo ranks); the FAISS GPU side is
    skipped without a GPU, with its CPU side measured."""
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--cpu-tiny", "--rounds",
                    "1", "--part-timeout", "240", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert parts["single"]["status"] == "ok" and parts["fsdp"]["status"] == "ok"
    assert parts["fsdp"]["world"] == 2 and parts["fsdp"]["backend"] == "gloo"
    for p in ("single", "fsdp"):
        assert parts[p]["featurize_tokens_per_s"] > 0
        assert 0 < parts[p]["ratio_featurize_over_floor"] < 5
    assert parts["faiss"]["status"] in ("ok", "skipped") and parts["faiss"]["cpu_search_s"] > 0
    assert parts["plan"]["status"] == "ok" and parts["plan"]["predicted_activations_bytes"] > 0
