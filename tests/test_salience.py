"""Token salience on real LAMA sentences: per-token contributions sum to the hit's score
(1e-4 relative) for GPT-2, Llama, an MoE, a Grad-Dot index, the exact correction and a
profile; the recomputed score is the indexed one to float16 storage; each token's term is the
float64 brute force's (autograd on a per-position copy of every tracked weight); word spans
cover the text; the API, the client over a real `tda serve` and `tda search --explain` expose
it."""
import copy
import itertools
import json
import random
import re

import numpy as np
import pytest
import torch

from tda.engine import Featurizer, TrackStarConfig, collate, load_model
from tda.engine.salience import example_tokens, length_groups, token_contributions
from tda.errors import ServerError
from tda.evaluation.architectures import tiny_model
from tda.schemas.search import SearchRequest
from tda.searcher.client import SearchClient
from tda.searcher.profiles import Profile
from tda.searcher.searcher import Searcher
from tda.store.index import IndexStore
from tda.tests import reference
from tda.tests.indexing import fact_index, free_port, stop, tda, wait_healthy
from tda.tests.test_server_security import start
from tda.tests.tolerances import FLOAT16_ATOL

SUM_RTOL = 1e-4
QUERIES = [("Allan Peiper was born in", " Alexandra"),
           ("The official language of Austria is", " German")]


@pytest.fixture(scope="module")
def index(tmp_path_factory, gpt2_dir):
    out = fact_index(tmp_path_factory, gpt2_dir, facts=60, shard_size=20, projection_dim=4)
    tda("precondition", str(out), "--name", "train", "--mode", "train")
    return out


@pytest.fixture(scope="module")
def searcher(index):
    with Searcher(index) as s:
        yield s


@pytest.fixture(scope="module")
def tok_and_texts():
    from tda.tests import helpers
    return helpers.bpe_and_short_texts(1000, 12, 4)


def _rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ------------------------------------------------------------------ engine, every path
def _check_sums(f: Featurizer, texts, queries):
    """token_contributions for two queries over ``texts`` sum to <q, phi> (/ ||phi||)."""
    seqs = f.example_sequences(texts)
    q = f.encode_queries(queries).astype(np.float64)
    which = [i % len(queries) for i in range(len(seqs))]
    tc = token_contributions(f, seqs, q, which)
    phi = f.projected_gradients(seqs).double().numpy()
    norms = np.linalg.norm(phi, axis=1) if f.config.unit_normalize else np.ones(len(seqs))
    for i, seq in enumerate(seqs):
        assert tc.raw[i].shape == (len(seq.ids),)
        want = float(q[which[i]] @ phi[i]) / norms[i]
        got = float(tc.raw[i].sum()) / norms[i]
        assert _rel(got, want) < SUM_RTOL, (i, got, want)
        assert np.count_nonzero(tc.raw[i]) > len(seq.ids) // 2      # spread over tokens
    return tc


@pytest.mark.parametrize("arch,cfg", [
    ("llama", dict()),
    ("llama", dict(correction="exact")),
    ("gpt2", dict(unit_normalize=False)),
    ("gpt2", dict(correction="exact", include_embeddings=True)),
    ("mixtral", dict()),
    ("mixtral", dict(correction="exact")),
])
def test_contributions_sum_to_the_score(arch, cfg, tok_and_texts, tmp_path):
    tok, train, held = tok_and_texts
    tiny = tiny_model(arch, tok, train, steps=2, batch_size=6)
    torch.save(tiny.optimizer_state, tmp_path / "optimizer.pt")
    # float64: a near-zero score's relative error is float32 rounding of phi, not the split
    f = Featurizer(copy.deepcopy(tiny.model).double(), tok,
                   TrackStarConfig(projection_dim=4, **cfg),
                   optimizer_state=tmp_path / "optimizer.pt")
    if arch == "mixtral":
        assert any(w.experts for w in f.weights)
    _check_sums(f, held, QUERIES)


def _partitions(items):
    """Every set partition of ``items`` (lists of lists)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def test_length_groups_are_the_cheapest_batches():
    """Over all set partitions of up to 7 lengths, none has fewer padded tokens plus the
    per-batch overhead than length_groups' cut; every position is in one group."""
    rng = random.Random(0)
    for _ in range(60):
        lens = [rng.randint(1, 130) for _ in range(rng.randint(1, 7))]
        overhead = rng.choice([0, 16, 48, 500])

        def cost(groups):
            return sum(len(g) * max(lens[i] for i in g) + overhead for g in groups)

        got = length_groups(lens, overhead)
        assert sorted(itertools.chain(*got)) == list(range(len(lens)))
        assert cost(got) == min(cost(p) for p in _partitions(list(range(len(lens)))))
    assert length_groups([]) == []
    assert len(length_groups([20, 20, 21, 110, 118])) == 2


def test_length_groups_give_each_example_its_own_terms(tok_and_texts, tmp_path):
    """Examples of very different lengths (several groups), two queries: every example's
    terms, phi and loss are those of the example alone in a batch of one."""
    tok, train, held = tok_and_texts
    tiny = tiny_model("gpt2", tok, train, steps=1)
    torch.save(tiny.optimizer_state, tmp_path / "optimizer.pt")
    f = Featurizer(tiny.model.double(), tok, TrackStarConfig(projection_dim=3),
                   optimizer_state=tmp_path / "optimizer.pt")
    texts = [held[0], " ".join(held[:6]), held[1], " ".join(held[2:5]), held[2]]
    seqs = f.example_sequences(texts)
    assert len(length_groups([len(x.ids) for x in seqs])) > 1
    q = np.random.default_rng(1).standard_normal((2, f.dim))
    which = [0, 1, 1, 0, 1]
    tc = token_contributions(f, seqs, q, which)
    for i, seq in enumerate(seqs):
        alone = token_contributions(f, [seq], q, [which[i]])
        np.testing.assert_allclose(tc.raw[i], alone.raw[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(tc.phi[i], alone.phi[0])
        assert tc.loss[i] == pytest.approx(alone.loss[0], rel=1e-9)


def test_each_token_term_is_the_float64_brute_force(tok_and_texts, tmp_path):
    """c_t = <q, P((G_t) / den)> with G_t the gradient of a per-position copy of each tracked
    weight (autograd on the float64 reference model): exact correction and none."""
    tok, train, held = tok_and_texts
    tiny = tiny_model("gpt2", tok, train, steps=2, batch_size=6)
    torch.save(tiny.optimizer_state, tmp_path / "optimizer.pt")
    model = copy.deepcopy(tiny.model).double()
    for correction in ("exact", "none"):
        f = Featurizer(model, tok, TrackStarConfig(projection_dim=3, correction=correction),
                       optimizer_state=tmp_path / "optimizer.pt")
        assert all(len(w.sites) == 1 and w.sites[0].kind == "linear" for w in f.weights)
        seqs = f.example_sequences(held[:2])
        q = np.random.default_rng(0).standard_normal((1, f.dim))
        got = token_contributions(f, seqs, q, [0, 0]).raw
        ref = reference.untied_copy(model, f)
        modules = dict(ref.named_modules())
        for seq, raw in zip(seqs, got):
            T = len(seq.ids)
            E = {w.name: torch.zeros((T, w.out_features, w.in_features), dtype=torch.float64,
                                     requires_grad=True) for w in f.weights}
            hooks = [modules[name].register_forward_hook(
                lambda m, inp, out, e=e: out + torch.einsum("bti,toi->bto", inp[0], e))
                for name, e in E.items()]
            try:
                batch = collate([seq], f.pad_id)
                logits = ref(input_ids=batch.input_ids, position_ids=batch.position_ids,
                             use_cache=False).logits
                from tda.engine.batching import per_example_loss
                grads = torch.autograd.grad(per_example_loss(logits, batch.labels).sum(),
                                            list(E.values()))
            finally:
                for h in hooks:
                    h.remove()
            per_pos = dict(zip(E, grads))
            want = [float(torch.from_numpy(q[0]) @ reference.project(
                f, reference.corrected(f, {n: g[t] for n, g in per_pos.items()}, correction)))
                for t in range(T)]
            np.testing.assert_allclose(raw, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
            assert raw[-1] == 0.0      # nothing reads the last position


# ------------------------------------------------------------------ the searcher
@pytest.mark.parametrize("profile", [None, "train"])
def test_search_explain_sums_to_the_indexed_score(searcher, index, profile):
    resp = searcher.search(*QUERIES[0], k=5, mode="both", profile=profile, explain=True)
    assert resp.trackstar and "explain" in resp.timings_ms
    assert not resp.warnings, resp.warnings
    assert all(h.salience is None for h in resp.bm25 + resp.fused)
    f = searcher.encoder.featurizer
    q = searcher.encoder.encode([QUERIES[0]])
    texts = [h.salience.text for h in resp.trackstar]
    x = f.featurize_examples(texts).vectors.numpy()
    if profile is not None:
        p = Profile.load(IndexStore.open(index), profile)
        q, x = p.transform(q), p.transform(x)
    for h, xi in zip(resp.trackstar, x):
        s = h.salience
        total = sum(t.value for t in s.tokens)
        assert _rel(total, s.score) < 1e-9
        assert _rel(total, float(q[0].astype(np.float64) @ xi)) < SUM_RTOL
        assert abs(s.score - h.score) < FLOAT16_ATOL              # float16 storage
        assert s.text.startswith(h.snippet.rstrip("…"))
        assert len(s.tokens) == searcher.document(h.id).n_tokens


def test_word_spans_cover_the_text_in_order(searcher):
    resp = searcher.search(*QUERIES[1], k=5, mode="trackstar", explain=True)
    for h in resp.trackstar:
        s = h.salience
        starts = [t.start for t in s.tokens]
        assert starts == sorted(starts) and all(t.start <= t.end for t in s.tokens)
        ends = [t.end for t in s.tokens]
        assert ends == sorted(ends)
        # in order and covering every character (byte-level pieces of one character share it)
        covered = "".join(s.text[max(t.start, prev):t.end]
                          for t, prev in zip(s.tokens, [0] + ends[:-1]))
        assert covered == s.text
        words = [(w.start, w.end) for w in s.words if w.end > w.start]
        assert words == [(m.start(), m.end()) for m in re.finditer(r"\S+", s.text)]
        assert _rel(sum(w.value for w in s.words), s.score) < 1e-9


def test_one_batch_for_all_explaining_requests(searcher):
    reqs = [SearchRequest(prompt=p, target=t, k=3, mode="trackstar", explain=e)
            for (p, t), e in zip(QUERIES + QUERIES[:1], (True, True, False))]
    many = searcher.search_many(reqs)
    assert all(h.salience is not None for r in many[:2] for h in r.trackstar)
    assert all(h.salience is None for h in many[2].trackstar)
    alone = searcher.search(*QUERIES[1], k=3, mode="trackstar", explain=True)
    for a, b in zip(many[1].trackstar, alone.trackstar):
        assert a.id == b.id
        np.testing.assert_allclose([t.value for t in a.salience.tokens],
                                   [t.value for t in b.salience.tokens], rtol=1e-4, atol=1e-7)


def test_retokenization_warning_goes_to_its_own_request(searcher, monkeypatch):
    """An example whose stored token count its text no longer gives (as if the index held
    another count) warns in the response whose hit it is, not in the others of the batch."""
    (pa, ta), (pb, tb) = QUERIES
    ids_b = {h.id for h in searcher.search(pb, tb, k=3, mode="trackstar").trackstar}
    victim = next(h.id for h in searcher.search(pa, ta, k=3, mode="trackstar").trackstar
                  if h.id not in ids_b)
    read = searcher.rows.fields

    def fields(locs, names):
        recs = read(locs, names)
        for rec in recs:
            if rec.get("ids") == victim and "n_tokens" in rec:
                rec["n_tokens"] += 1
        return recs
    monkeypatch.setattr(searcher.rows, "fields", fields)
    a, b = searcher.search_many([
        SearchRequest(prompt=pa, target=ta, k=3, mode="trackstar", explain=True),
        SearchRequest(prompt=pb, target=tb, k=3, mode="trackstar", explain=True)])
    assert [w for w in a.warnings if victim in w and "retokenizes" in w]
    assert not [w for w in b.warnings if victim in w]
    assert all(h.salience is not None for h in a.trackstar + b.trackstar)


def test_chunk_tokens_are_rebuilt_with_the_indexed_length(gpt2_dir):
    """A long document's chunk (DOCID#N) retokenizes to the tokens the indexer stored."""
    from tda.indexer.documents import chunk_document
    from tda.schemas.corpus import Document
    from tda.tests import helpers
    _, tok = load_model(gpt2_dir)
    doc = Document(id="long", text=" ".join(helpers.sentences(12)), source="t", line=1)
    chunks = chunk_document(doc, tok, 40)
    assert len(chunks) > 2
    for ex in chunks:
        t = example_tokens(tok, ex.text, len(ex.sequence.ids), chunk=True, max_len=40)
        assert t.matches and t.sequence == ex.sequence


# ------------------------------------------------------------------ client, server, CLI
def test_client_over_tda_serve(index, searcher, tmp_path):
    port = free_port()
    log = tmp_path / "serve.txt"
    proc = start(index, "--port", str(port), "--max-explain-hits", "6", stderr_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        with SearchClient(url) as client:
            got = client.search(*QUERIES[0], k=4, mode="trackstar", explain=True)
            plain = client.search(*QUERIES[0], k=4, mode="trackstar")
            with pytest.raises(ServerError) as err:
                client.search(*QUERIES[0], k=7, mode="trackstar", explain=True)
            assert err.value.status == 400 and "explain" in str(err.value)
    finally:
        stop(proc)
    want = searcher.search(*QUERIES[0], k=4, mode="trackstar", explain=True)
    assert all(h.salience is None for h in plain.trackstar)
    for a, b in zip(got.trackstar, want.trackstar):
        assert a.id == b.id and a.salience.text == b.salience.text
        assert abs(a.salience.score - b.salience.score) < 1e-5


def test_cli_search_explain(index):
    out = tda("search", QUERIES[0][0], "--target", QUERIES[0][1], "--index", str(index),
              "-k", "3", "--mode", "trackstar", "--explain", "--json")
    resp = json.loads(out.stdout.splitlines()[0])
    assert len(resp["trackstar"]) == 3
    for h in resp["trackstar"]:
        s = h["salience"]
        assert _rel(sum(t["value"] for t in s["tokens"]), s["score"]) < 1e-9
    shown = tda("search", QUERIES[0][0], "--target", QUERIES[0][1], "--index", str(index),
                "-k", "2", "--mode", "trackstar", "--explain")
    assert "Token salience" in shown.stdout and "tokens sum to" in shown.stdout
