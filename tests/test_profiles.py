"""Correction profiles against an explicit float64 computation, lambda by its definition, and
interrupted builds that resume and are never half-used."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.linalg
import torch

from tda.tests.indexing import fact_index, env, read_index, tda
from tda.engine import Featurizer, TrackStarConfig, load_model
from tda.engine.preconditioner import mixing_lambda
from tda.searcher.profiles import Profile
from tda.store.profiles import complete_profiles
from tda.store.index import IndexStore
from tda.errors import QueryError as SearchError
from tda.searcher.searcher import Searcher
from tda.tests.tolerances import FLOAT16_ATOL, PROFILE_ATOL

QUERIES = [("Allan Peiper was born in", " Alexandra"), ("Anthony Barber was born in", " Doncaster"),
           ("Iginio Ugo Tarchetti was a native speaker of", " Italian"),
           ("Gautama Buddha is affiliated with the", " Buddhism")]


@pytest.fixture(scope="module")
def index(tmp_path_factory, gpt2_dir):
    return fact_index(tmp_path_factory, gpt2_dir, facts=120, shard_size=10, projection_dim=3)


@pytest.fixture(scope="module")
def queries_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "queries.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in QUERIES))
    return path


def _explicit_transform(blocks_R, damping, slices):
    """R^-1/2 per block by scipy's matrix square root and inverse (float64)."""
    out = []
    for r, s in zip(blocks_R, slices):
        shift = damping * np.trace(r) / r.shape[0]          # mean eigenvalue = trace / n
        root = scipy.linalg.sqrtm(r + shift * np.eye(r.shape[0])).real
        out.append(np.linalg.inv(root))
    return out


def test_mixed_profile_equals_explicit_float64(index, queries_file, gpt2_dir):
    K, damping = 20, 0.05
    tda("precondition", str(index), "--name", "mixed", "--queries", str(queries_file),
        "--components", str(K), "--damping", str(damping), "--train-sample", "100000")
    store = IndexStore.open(index)
    data = read_index(index)
    phi = data["vectors"].astype(np.float64) * data["norm"][:, None].astype(np.float64)
    model, tok = load_model(gpt2_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=3, max_len=128),
                   optimizer_state=store.read_moments())
    feats = f.featurize(f.query_sequences(QUERIES))
    q_phi = (feats.vectors * feats.norm[:, None]).double().numpy()
    dims = store.manifest.engine.block_dims
    slices = [slice(a, a + d) for a, d in zip(np.cumsum([0] + dims[:-1]), dims)]
    r_train = [phi[:, s].T @ phi[:, s] / len(phi) for s in slices]
    r_eval = [q_phi[:, s].T @ q_phi[:, s] / len(q_phi) for s in slices]
    mu_t = np.sort(np.concatenate([np.linalg.eigvalsh(b) for b in r_train]))[::-1][K - 1]
    mu_e = np.sort(np.concatenate([np.linalg.eigvalsh(b) for b in r_eval]))[::-1][K - 1]
    lam = mu_t / (mu_t + mu_e)                    # lam * mu_e == (1 - lam) * mu_t
    info = json.loads(tda("info", str(index), "--json").stdout)["profiles"]["mixed"]
    assert info["complete"] and info["lambda"] == pytest.approx(lam, rel=1e-6)
    transforms = _explicit_transform([lam * e + (1 - lam) * t for e, t in zip(r_eval, r_train)],
                                     damping, slices)

    def gbar(x):
        y = np.concatenate([x[:, s] @ t for s, t in zip(slices, transforms)], axis=1)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    index_vectors = gbar(phi)
    query_vectors = gbar(q_phi)
    with Searcher(index, workers=1) as searcher:
        for i, (p, t) in enumerate(QUERIES):
            resp = searcher.search(p, t, k=10, mode="trackstar", profile="mixed")
            scores = index_vectors @ query_vectors[i]
            want = np.argsort(-scores)[:10]
            assert [h.id for h in resp.trackstar][:5] == data["ids"][want].tolist()[:5]
            np.testing.assert_allclose([h.score for h in resp.trackstar], scores[want],
                                       atol=PROFILE_ATOL)
    stored = np.concatenate([store.read_shard(s, ("vectors",), "mixed")["vectors"]
                             for s in sorted(store.complete_shards())])
    np.testing.assert_allclose(stored, index_vectors, atol=FLOAT16_ATOL)


def test_lambda_on_a_constructed_spectrum():
    # train blocks: eigenvalues {8, 4} and {6, 1}; eval: {3, 2} and {10, 0.5}
    q = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))[0]
    rot = lambda ev: q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ q.T  # noqa: E731
    train = [rot([8.0, 4.0]), rot([6.0, 1.0])]
    evals = [rot([3.0, 2.0]), rot([10.0, 0.5])]
    # pooled, sorted: train 8, 6, 4, 1; eval 10, 3, 2, 0.5. K=2: mu_t=6, mu_e=3 -> lam=2/3
    assert mixing_lambda(train, evals, 2) == pytest.approx(6 / 9)
    assert mixing_lambda(train, evals, 3) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="between 1 and d=4"):
        mixing_lambda(train, evals, 5)


def test_ablation_modes(index, gpt2_dir):
    tda("precondition", str(index), "--name", "none", "--mode", "none")
    tda("precondition", str(index), "--name", "train", "--mode", "train")
    store = IndexStore.open(index)
    base = read_index(index)["vectors"]
    ident = np.concatenate([store.read_shard(s, ("vectors",), "none")["vectors"]
                            for s in sorted(store.complete_shards())])
    np.testing.assert_allclose(ident, base, atol=FLOAT16_ATOL)
    with Searcher(index, workers=1) as searcher:
        a = searcher.search(*QUERIES[0], k=5, mode="trackstar")
        b = searcher.search(*QUERIES[0], k=5, mode="trackstar", profile="none")
        assert [h.id for h in a.trackstar] == [h.id for h in b.trackstar]
        c = searcher.search(*QUERIES[0], k=5, mode="trackstar", profile="train")
        assert c.profile == "train" and len(c.trackstar) == 5


def test_bad_input(index, tmp_path, queries_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a b", "target": " c"}\n{"prompt": "Paris is in", "target": ""}\n')
    res = tda("precondition", str(index), "--name", "x", "--queries", str(bad), check=False)
    assert res.returncode == 1 and "bad.jsonl:2: target is empty" in res.stderr
    res = tda("precondition", str(index), "--name", "x", "--components", "100000", check=False)
    assert res.returncode == 1 and "components K=100000 must be between 1 and d=" in res.stderr
    res = tda("precondition", str(index), "--name", "x", "--mode", "mixed", check=False)
    assert res.returncode == 1 and "needs --queries" in res.stderr
    tda("precondition", str(index), "--name", "dup", "--mode", "train")
    res = tda("precondition", str(index), "--name", "dup", "--mode", "train", check=False)
    assert res.returncode == 1 and "exists; pass --overwrite" in res.stderr
    tda("precondition", str(index), "--name", "dup", "--mode", "none", "--overwrite")
    assert "x" not in complete_profiles(IndexStore.open(index))


@pytest.mark.slow
def test_killed_build_is_never_used_and_resumes(index, queries_file, tmp_path):
    args = [sys.executable, "-m", "tda.cli", "precondition", str(index), "--name", "killed",
            "--queries", str(queries_file), "--components", "20", "--workers", "1"]
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = IndexStore.open(index)
    deadline = time.time() + 300
    while time.time() < deadline and not store.complete_shards("killed"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = store.complete_shards("killed")
    assert 1 <= len(done) and "killed" not in complete_profiles(store)
    with Searcher(index, workers=1) as searcher:
        with pytest.raises(SearchError, match="no profile 'killed'"):
            searcher.search(*QUERIES[0], profile="killed")
    out = tda("precondition", str(index), "--name", "killed", "--queries", str(queries_file),
              "--components", "20", "--workers", "1")
    assert "resuming" in out.stderr
    tda("precondition", str(index), "--name", "fresh", "--queries", str(queries_file),
        "--components", "20", "--workers", "1")
    a, b = Profile.load(store, "killed"), Profile.load(store, "fresh")
    for x, y in zip(a.blocks, b.blocks):
        torch.testing.assert_close(x, y)
    for s in sorted(store.complete_shards()):
        np.testing.assert_array_equal(store.read_shard(s, ("vectors",), "killed")["vectors"],
                                      store.read_shard(s, ("vectors",), "fresh")["vectors"])


def test_grad_dot_index_is_float32_and_its_profile_a_dot(tmp_path, gpt2_dir):
    """Without unit normalization the index stores float32 (values float16 cannot hold stay
    finite) and a profile keeps R^-1/2 phi unnormalized: Grad-Dot + R is not cosine."""
    from tda.tests import helpers
    from tda.tests.indexing import write_corpus
    texts = [s for _, s in helpers.fact_sentences(24)]
    out = tmp_path / "gd"
    tda("index", "--model", str(gpt2_dir), "--corpus",
        str(write_corpus(tmp_path / "c.jsonl", texts)), "--out", str(out), "--shard-size", "12",
        "--max-len", "128", "--projection-dim", "3", "--no-unit-normalize", "--no-bm25",
        "--no-progress")
    store = IndexStore.open(out)
    assert store.manifest.layout.storage_dtype == "float32"
    data = read_index(out)
    model, tok = load_model(gpt2_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=3, max_len=128,
                                               unit_normalize=False),
                   optimizer_state=store.read_moments())
    whole = [i for i, x in enumerate(data["ids"].tolist()) if "#" not in x]   # not chunked
    phi = f.encode_examples([texts[int(data["ids"][i][1:])] for i in whole])
    np.testing.assert_allclose(data["vectors"][whole], phi, rtol=1e-4,
                               atol=1e-6 * np.abs(phi).max())
    # what float16 cannot hold (|x| > 65,504) round-trips through the layout's dtype
    from tda.store.codec import from_storage, to_storage
    big = phi * (1e6 / np.abs(phi).max())
    assert np.isinf(from_storage(to_storage(big, "float16"), "float16")).any()
    np.testing.assert_array_equal(from_storage(to_storage(big, "float32"), "float32"), big)
    tda("precondition", str(out), "--name", "train", "--mode", "train", "--workers", "1")
    profile = Profile.load(store, "train")
    got = np.concatenate([store.read_shard(s, ("vectors",), profile="train")["vectors"]
                          for s in sorted(store.complete_shards("train"))])
    expect = profile.transform(data["vectors"])
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6 * np.abs(expect).max())
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-2)
