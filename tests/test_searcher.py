"""Search over a real index of LAMA sentences: FAISS equals brute force, fan-out is invisible,
the server and the Python client agree."""
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tda.tests.indexing import fact_index, env, free_port, read_index, tda
from tda.engine import Featurizer, TrackStarConfig, load_model
from tda.errors import ModelMismatch
from tda.errors import QueryError as SearchError
from tda.schemas.options import AnnOptions
from tda.searcher.searcher import Searcher
from tda.tests.tolerances import FLOAT32_SAME_ATOL, SCORE_ATOL, SCORE_RTOL

QUERIES = [("Allan Peiper was born in", " Alexandra"),
           ("The official language of Austria is", " German"),
           ("Fiat Multipla is produced by", " Fiat")]


@pytest.fixture(scope="module")
def index(tmp_path_factory, gpt2_dir):
    return fact_index(tmp_path_factory, gpt2_dir, facts=150, shard_size=20, projection_dim=6)


@pytest.fixture(scope="module")
def searcher(index):
    with Searcher(index, workers=2) as s:
        yield s


def brute_force(index, queries: np.ndarray, k: int):
    data = read_index(index)
    scores = queries @ data["vectors"].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(data["ids"][j], scores[i, j]) for j in row] for i, row in enumerate(order)]


def test_query_vectors_match_the_engine(searcher, gpt2_dir):
    model, tok = load_model(gpt2_dir)
    f = Featurizer(model, tok, TrackStarConfig(projection_dim=6, max_len=128),
                   optimizer_state=gpt2_dir)
    np.testing.assert_allclose(searcher.encoder.encode(QUERIES), f.encode_queries(QUERIES),
                               atol=FLOAT32_SAME_ATOL)


def test_faiss_equals_brute_force(searcher, index):
    q = searcher.encoder.encode(QUERIES)
    expect = brute_force(index, q, 10)
    for i, (prompt, target) in enumerate(QUERIES):
        resp = searcher.search(prompt, target, k=10, mode="trackstar")
        assert [h.id for h in resp.trackstar] == [e[0] for e in expect[i]]
        np.testing.assert_allclose([h.score for h in resp.trackstar], [e[1] for e in expect[i]],
                                   atol=SCORE_ATOL)
        assert [h.ranks["trackstar"] for h in resp.trackstar] == list(range(1, 11))


def test_every_placement_and_kind_gives_the_same_answer(searcher, index):
    """In process or 1 or 2 dask workers, loaded, streamed, or compressed with every row
    re-scored: the same ids and scores."""
    want = [searcher.search(p, t, k=10, mode="trackstar").trackstar for p, t in QUERIES]
    for kwargs in ({}, {"workers": 1}, {"workers": 2, "faiss_index": "stream"},
                   {"faiss_index": "ann", "ann": AnnOptions(candidates=10**6)}):
        with Searcher(index, **kwargs) as other:
            assert other.dense.plan.where == ("process" if "workers" not in kwargs
                                              else "local-cluster")
            assert other.dense.kind == kwargs.get("faiss_index", "exact")
            got = [other.search(p, t, k=10, mode="trackstar").trackstar for p, t in QUERIES]
        for a, b in zip(got, want):
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=SCORE_ATOL)


@pytest.mark.slow
def test_external_dask_scheduler_and_workers(searcher, index):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                               "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)
        procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                    f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                    "--dashboard-address", ":0"], env=env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(2)]
        from dask.distributed import Client
        with Client(f"tcp://127.0.0.1:{port}", timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        with Searcher(index, scheduler=f"tcp://127.0.0.1:{port}") as remote:
            assert len(remote.dense.placement) == 2
            for p, t in QUERIES:
                a = remote.search(p, t, k=10)
                b = searcher.search(p, t, k=10)
                assert [h.id for h in a.trackstar] == [h.id for h in b.trackstar]
                assert [h.id for h in a.fused] == [h.id for h in b.fused]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def test_lists_ranks_and_fusion(searcher):
    resp = searcher.search("Allan Peiper was born in", " Alexandra", k=5, mode="both")
    assert len(resp.trackstar) == len(resp.bm25) == len(resp.fused) == 5
    assert resp.bm25[0].doc_id == "s0" and "Peiper" in resp.bm25[0].snippet
    for h in resp.fused:                   # fused score is the RRF of the ranks shown
        expect = sum(1 / (60 + r) for name, r in h.ranks.items() if name != "fused" and r)
        assert h.score == pytest.approx(expect)
    assert [h.ranks["fused"] for h in resp.fused] == [1, 2, 3, 4, 5]
    only = searcher.search("Allan Peiper was born in", " Alexandra", k=3, mode="fused")
    assert not only.trackstar and not only.bm25 and len(only.fused) == 3
    bm = searcher.search("Allan Peiper was born in", " Alexandra", k=3, mode="bm25")
    assert not bm.trackstar and [h.id for h in bm.bm25] == [h.id for h in resp.bm25[:3]]


def test_generated_target_and_errors(searcher):
    resp = searcher.search("Allan Peiper was born in", k=3, mode="trackstar")
    assert resp.target_generated and resp.target.strip()
    with pytest.raises(SearchError, match="target is empty"):
        searcher.search("Allan Peiper was born in", " ", k=3)
    with pytest.raises(SearchError, match="no profile 'nope'"):
        searcher.search("Allan Peiper was born in", " Alexandra", profile="nope")
    with pytest.warns(UserWarning, match="longer than max_len=.*prompts keep the end"):
        assert len(searcher.search("word " * 200, " Alexandra", k=3,
                                   mode="trackstar").trackstar) == 3
    doc = searcher.document("s0")
    assert doc.doc_id == "s0" and "Peiper" in doc.text and doc.n_tokens > 0
    with pytest.raises(KeyError):
        searcher.document("../../etc/passwd")


def test_approximate_search_recall(index, searcher):
    q = [(p, t) for p, t in QUERIES]
    with Searcher(index, workers=1, faiss_index="hnsw") as approx:
        recall = []
        for p, t in q:
            a = {h.id for h in approx.search(p, t, k=10, mode="trackstar").trackstar}
            b = {h.id for h in searcher.search(p, t, k=10, mode="trackstar").trackstar}
            recall.append(len(a & b) / 10)
    assert np.mean(recall) >= 0.9


def test_model_must_match(index, tmp_path, gpt2_dir):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(gpt2_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 1e-3
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatch, match="does not match the index's"):
        Searcher(index, model_dir=other, workers=1)


def test_other_normals_are_refused(index, monkeypatch):
    """A torch that draws other numbers from the same seeds (simulated: the generator seeded
    one off) gives other projections: the query side refuses instead of scoring garbage."""
    from tda.engine import projection
    from tda.searcher.encoder import QueryEncoder
    from tda.store import IndexStore
    store = IndexStore.open(index)
    assert QueryEncoder(store).featurizer.projection_digest == \
        store.manifest.engine.projection_digest
    seed = projection.projection_seed
    monkeypatch.setattr(projection, "projection_seed", lambda *a: seed(*a) + 1)
    with pytest.raises(ModelMismatch, match=r"projection matrices differ from the index's "
                                            r"\(digest \w+ vs \w+\): this torch"):
        QueryEncoder(store)


def test_model_loads_after_open_and_its_failure_reaches_every_query(index, monkeypatch):
    """The query model loads in the background once its fingerprint is checked: a model that
    then fails to load does not stop the open, BM25 answers, and every query that needs the
    model (and ready()) raises the loading error, each time; collections are back on."""
    import gc

    from tda.errors import ModelError
    from tda.searcher.encoder import QueryEncoder
    loading = threading.Event()

    def broken(self, *a, **kw):
        loading.wait(30)                    # still loading when open returns
        raise ModelError("weights unreadable (simulated)")
    monkeypatch.setattr(QueryEncoder, "__init__", broken)
    was = gc.isenabled()
    s = Searcher(index, workers=None)
    try:
        assert s.search(*QUERIES[0], k=3, mode="bm25").bm25
        loading.set()
        for _ in range(2):
            with pytest.raises(ModelError, match="simulated"):
                s.search(*QUERIES[0], k=3, mode="trackstar")
        with pytest.raises(ModelError, match="simulated"):
            s.ready()
    finally:
        loading.set()
        s.close()
    assert gc.isenabled() == was


def test_collections_pause_while_loading_and_nest():
    """heap.pause/resume: off from the first pause to the last resume, then as before."""
    import gc

    from tda.searcher import heap
    for before in (True, False):
        (gc.enable if before else gc.disable)()
        heap.pause()
        heap.pause()
        assert not gc.isenabled()
        heap.resume()
        assert not gc.isenabled()
        heap.resume()
        assert gc.isenabled() == before
        heap.resume()                        # unmatched: no effect
        assert gc.isenabled() == before
    gc.enable()


def test_cli_search(index, tmp_path):
    out = tda("search", "Allan Peiper was born in", "--target", " Alexandra", "--index",
              str(index), "-k", "3", "--json")               # in process: no cluster
    resp = json.loads(out.stdout)
    assert resp["target"] == " Alexandra" and len(resp["trackstar"]) == 3
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in QUERIES))
    out = tda("search", "--queries", str(queries), "--index", str(index), "--json",
              "--mode", "bm25")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["prompt"] for x in lines] == [p for p, _ in QUERIES]
    table = tda("search", "Allan Peiper was born in", "--target", " Alexandra", "--index",
                str(index), "-k", "2", "--workers", "1")      # and on a dask worker
    assert "TrackStar" in table.stdout and "BM25" in table.stdout
    queries.write_text('{"prompt": "a", "target": " b"}\n{"prompt": ""}\n')
    bad = tda("search", "--queries", str(queries), "--index", str(index), check=False)
    assert bad.returncode == 1 and "q.jsonl:2" in bad.stderr and "Traceback" not in bad.stderr
    missing = tda("search", "x", "--index", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1 and "no such index" in missing.stderr


def test_opponents_are_the_lowest_scores(searcher, index):
    from tda.schemas.search import SearchRequest
    q = searcher.encoder.encode(QUERIES)
    data = read_index(index)
    scores = q @ data["vectors"].T
    reqs = [SearchRequest(prompt=p, target=t, mode="trackstar") for p, t in QUERIES]
    for i, hits in enumerate(searcher.opponents(reqs, 7)):
        low = np.argsort(scores[i], kind="stable")[:7]
        assert [h.id for h in hits] == [data["ids"][j] for j in low]
        np.testing.assert_allclose([h.score for h in hits], scores[i][low], atol=SCORE_ATOL)
    assert searcher.opponents([SearchRequest(prompt="a", target=" b", mode="bm25")]) == [[]]


def test_cli_search_pair_format(searcher, index, tmp_path):
    """`tda search --queries FILE --format pair`: the release's fields (and tda's), the same
    lists as the Searcher's, full texts, ground-truth flags, opponents; read back by the
    reader."""
    from tda.errors import PairFormatError
    from tda.schemas.search import SearchRequest
    from tda.evaluation.pair_format import (RELEASE_FIELDS, REQUIRED_FIELDS, TDA_FIELDS,
                                            pair_metrics, read_pair_jsonl)
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"id": "peiper", "prompt": QUERIES[0][0], "target": QUERIES[0][1],
                    "proponents": ["s0"], "relation": "P19"}) + "\n"
        + json.dumps({"prompt": QUERIES[1][0], "target": QUERIES[1][1], "mode": "trackstar"})
        + "\n")
    args = ("search", "--queries", str(queries), "--index", str(index), "-k", "4",
            "--workers", "1")
    out = tda(*args, "--format", "pair", "--opponents", "3")
    reqs = [SearchRequest(prompt=QUERIES[0][0], target=QUERIES[0][1], k=4),
            SearchRequest(prompt=QUERIES[1][0], target=QUERIES[1][1], k=4, mode="trackstar")]
    responses = [r.model_dump() for r in searcher.search_many(reqs)]
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(x["example_id"], x["method"]) for x in lines] == [
        ("peiper", "trackstar"), ("peiper", "bm25"), ("peiper", "fused"),
        (f"{queries}:2", "trackstar")]
    for x in lines:
        assert set(REQUIRED_FIELDS) <= set(x) <= set(RELEASE_FIELDS) | set(TDA_FIELDS)
        resp = responses[0 if x["example_id"] == "peiper" else 1]
        assert x["inputs_plaintext"] == resp["prompt"] and x["targets_plaintext"] == resp["target"]
        hits = resp[x["method"]]
        assert x["proponent_ids"] == [h["id"] for h in hits]
        assert x["proponent_scores"] == pytest.approx([h["score"] for h in hits])
        assert x["proponents"] == [searcher.document(h["id"]).text for h in hits]
        assert ("opponents" in x) == (x["method"] == "trackstar")
    first = lines[0]
    assert first["relation"] == "P19" and first["ground_truth_ids"] == ["s0"]
    assert first["proponent_correct"] == [i == "s0" for i in first["proponent_ids"]]
    assert len(first["opponents"]) == 3 and max(first["opponent_scores"]) < min(
        first["proponent_scores"])
    assert first["opponent_scores"] == sorted(first["opponent_scores"])
    assert "proponent_correct" not in lines[3]       # no ground truth given
    path = tmp_path / "pairs.jsonl"
    path.write_text(out.stdout)
    records = read_pair_jsonl(path)
    assert [r.proponent_ids for r in records] == [x["proponent_ids"] for x in lines]
    bm25 = pair_metrics([records[1]])                # s0 states the fact: BM25's first hit
    assert bm25["mrr_first"] == 1.0 and bm25["recall@10"] == 1.0
    with pytest.raises(PairFormatError, match="cannot be scored"):
        pair_metrics(records)


@pytest.fixture(scope="module")
def server(index):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tda.cli", "serve", str(index), "--port",
                             str(port), "--token", "s3cret", "--max-k", "20"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError(proc.stderr.read())
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_client_equals_searcher(server, searcher):
    from tda import SearchClient
    with SearchClient(server, token="s3cret") as client:
        for p, t in QUERIES:
            a = client.search(p, t, k=5)
            b = searcher.search(p, t, k=5)
            for name in ("trackstar", "bm25", "fused"):
                assert [h.id for h in getattr(a, name)] == [h.id for h in getattr(b, name)]
                np.testing.assert_allclose([h.score for h in getattr(a, name)],
                                           [h.score for h in getattr(b, name)], rtol=SCORE_RTOL)
        assert client.document("s0") == searcher.document("s0")
        assert client.info()["examples"] == searcher.info()["examples"]


def _same(a, b) -> None:
    for name in ("trackstar", "bm25", "fused"):
        x, y = getattr(a, name), getattr(b, name)
        assert [(h.id, h.snippet, h.ranks) for h in x] == [(h.id, h.snippet, h.ranks) for h in y]
        assert [h.score for h in x] == [h.score for h in y]


def test_batch_equals_per_query(server, searcher):
    """search_many, POST /search/batch and the client's search_many: each response is the one
    its request gets alone (one pass for all, mixed modes, k and a profile-less default)."""
    from tda import SearchClient
    from tda.schemas.search import SearchRequest
    reqs = [SearchRequest(prompt=p, target=t, k=k, mode=m) for (p, t), k, m in
            zip(QUERIES * 3, (3, 10, 1, 7, 5, 12, 2, 9, 4),
                ("trackstar", "both", "fused", "bm25", None, "trackstar", "both", None,
                 "trackstar"))]
    alone = [searcher.search_many([r])[0] for r in reqs]
    batch = searcher.search_many(reqs)
    with SearchClient(server, token="s3cret") as client:
        remote = client.search_many(reqs)
    for a, b, c in zip(alone, batch, remote):
        _same(a, b)
        _same(a, c)
    assert batch[4].mode == "both"                   # the index has BM25: both by default


def test_server_auth_limits_and_concurrency(server):
    import httpx
    from tda import SearchClient
    from tda.errors import ServerError as SearchClientError
    auth = {"Authorization": "Bearer s3cret"}
    body = {"prompt": "Allan Peiper was born in", "target": " Alexandra", "k": 3}
    assert httpx.post(server + "/search", json=body).status_code == 401
    assert httpx.post(server + "/search", json=body,
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(server + "/info").status_code == 401
    assert httpx.get(server + "/health").status_code == 200
    assert httpx.post(server + "/search", json=dict(body, k=50), headers=auth).status_code == 400
    assert httpx.post(server + "/search", json=dict(body, k=0), headers=auth).status_code == 422
    assert httpx.post(server + "/search", content=b"{not json", headers={
        **auth, "content-type": "application/json"}).status_code == 422
    assert httpx.post(server + "/search", content=b"x" * 100_000, headers=auth).status_code == 413
    assert httpx.post(server + "/search", json=dict(body, prompt="w " * 1500),
                      headers=auth).status_code == 400
    assert httpx.get(server + "/documents/nope", headers=auth).status_code == 404
    assert httpx.get(server + "/documents/..%2F..%2Fetc%2Fpasswd",
                     headers=auth).status_code == 404
    spec = httpx.get(server + "/openapi.json").json()
    assert "/search" in spec["paths"] and "/documents/{doc_id}" in spec["paths"]
    with SearchClient(server, token="s3cret") as client:
        with pytest.raises(SearchClientError) as err:
            client.search("x", " ", k=3)
        assert err.value.status == 400
        serial = [client.search(p, t, k=5) for p, t in QUERIES]
    results, errors = {}, []

    def worker(i):
        try:
            with SearchClient(server, token="s3cret") as c:
                results[i] = c.search(*QUERIES[i % 3], k=5)
        except Exception as e:      # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, r in results.items():
        assert [h.id for h in r.fused] == [h.id for h in serial[i % 3].fused]
    assert httpx.get(server + "/health").status_code == 200
