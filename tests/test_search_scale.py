"""Search paths built for scale, on indexes written through the real store: every exact path
(FAISS, batched blocks, streaming, compressed ANN covering the index) equals a float64 brute
force to the bit, ties included; row reads equal shard reads (this layout and the previous
one); the id table; integrity at load; threads sharing the row cache; a killed dask worker;
where a search runs."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import zarr

from tda.errors import ConfigError, CorruptShard, QueryError, SearchFailed
from tda.schemas.config import TrackStarConfig
from tda.schemas.corpus import CorpusOptions
from tda.schemas.index import CorpusRecord, EngineRecord, Layout, Manifest, ModelRecord
from tda.schemas.options import AnnOptions
from tda.searcher.dense import BLOCK_MIN_QUERIES, ShardGroup
from tda.searcher.fanout import DenseSearch, plan
from tda.searcher.rows import RowReader
from tda.searcher.searcher import Searcher
from tda.store.codec import checksum, to_storage
from tda.store.index import IndexStore, ShardRows
from tda.store.layout import COMPLETE_KEY, shard_name
from tda.store.rowtable import RowTable, write_row_table
from tda.tests import helpers

D = 48
SHARD = 300
N = 2100                  # 7 shards


def _manifest(n: int, d: int) -> Manifest:
    return Manifest(model=ModelRecord(path="none", fingerprint="none", architecture="none",
                                      tokenizer="none"),
                    engine=EngineRecord(config=TrackStarConfig(correction="none"), dim=d,
                                        tracked=(), second_moments=None),
                    corpus=CorpusRecord(files=(), options=CorpusOptions(), documents=n),
                    layout=Layout(shard_size=SHARD, storage_dtype="float16",
                                  vector_codec="raw"))


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit rows, with exact duplicates (tied scores) in different shards."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, d))
    x = centers[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, d))
    x[SHARD + 5] = x[5]                     # duplicates across shards: exact ties
    x[4 * SHARD + 7] = x[5]
    x[2 * SHARD + 1] = x[2 * SHARD + 2]     # and within one
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_index(path, x: np.ndarray, old_layout: set[int] = frozenset()) -> IndexStore:
    """An index of rows ``x`` with real sentences as texts; shards in ``old_layout`` are
    written as the previous release did (compressed vectors, one checksum over every array,
    1024-row string chunks)."""
    n = len(x)
    texts = helpers.sentences(n)
    store = IndexStore.create(path, _manifest(n, x.shape[1]))
    for s in range(-(-n // SHARD)):
        a, b = s * SHARD, min(n, (s + 1) * SHARD)
        rows = ShardRows(vectors=x[a:b], ids=[f"e{i}" for i in range(a, b)],
                         doc_ids=[f"d{i // 3}" for i in range(a, b)], texts=texts[a:b],
                         n_tokens=np.arange(a, b, dtype=np.int32),
                         loss=np.linspace(0, 1, b - a, dtype=np.float32),
                         norm=np.ones(b - a, np.float32))
        if s in old_layout:
            _write_old_shard(store, s, rows)
        else:
            store.write_shard(s, rows)
    return IndexStore.open(path)


def _write_old_shard(store: IndexStore, index: int, rows: ShardRows) -> None:
    g = store.root.require_group("shards").create_group(shard_name(index))
    n = len(rows)
    arrays = {"vectors": to_storage(rows.vectors, "float16"), "ids": list(rows.ids),
              "doc_ids": list(rows.doc_ids), "text": list(rows.texts),
              "n_tokens": rows.n_tokens, "loss": rows.loss, "norm": rows.norm}
    for key, values in arrays.items():
        if isinstance(values, list):
            a = g.create_array(key, shape=(n,), dtype=str, chunks=(min(1024, n),))
            a[:] = np.asarray(values, dtype=object)
        else:
            comp = [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")] \
                if values.ndim == 2 else "auto"
            a = g.create_array(key, shape=values.shape, dtype=values.dtype,
                               chunks=(min(1024, n),) + values.shape[1:], compressors=comp)
            a[:] = values
    g.attrs[COMPLETE_KEY] = {"rows": n, "checksum": checksum(arrays)}


def brute_force(store: IndexStore, q: np.ndarray, k: int):
    """(scores, shard, row) [m, k]: float64 dot products of the stored values, rounded to
    float32, ordered by score then shard then row."""
    shards = sorted(store.complete_shards())
    v = np.concatenate([store.read_stored(s, ("vectors",))["vectors"] for s in shards])
    owner = np.concatenate([np.full(n, s) for s, n in sorted(store.complete_shards().items())])
    row = np.concatenate([np.arange(n) for _, n in sorted(store.complete_shards().items())])
    scores = (q.astype(np.float64) @ v.astype(np.float64).T).astype(np.float32)
    order = np.lexsort((np.broadcast_to(row, scores.shape), np.broadcast_to(owner, scores.shape),
                        -scores), axis=1)[:, :k]
    return (np.take_along_axis(scores, order, 1), owner[order], row[order])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "index"
    x = vectors(N, D)
    write_index(path, x, old_layout={3})
    return path, x


def queries(x: np.ndarray, m: int = 6) -> np.ndarray:
    q = x[[5, 2 * SHARD + 2, 17, 900, 1500, 2050][:m]].copy()     # ties at the top
    return q


def assert_same(res, want) -> None:
    np.testing.assert_array_equal(res.shards, want[1])
    np.testing.assert_array_equal(res.rows, want[2])
    np.testing.assert_array_equal(res.scores, want[0])


def test_every_exact_path_equals_brute_force_to_the_bit(synth):
    path, x = synth
    store = IndexStore.open(path)
    q = queries(x)
    shards = sorted(store.complete_shards())
    for k in (1, 10, 40):
        want = brute_force(store, q, k)
        exact = ShardGroup(str(path), shards, "exact")
        per_query = [exact.search(q[i:i + 1], k) for i in range(len(q))]
        for i, r in enumerate(per_query):                      # FAISS scan, one query
            assert_same(r, tuple(w[i:i + 1] for w in want))
        assert_same(exact.search(q, k), want)                  # FAISS, several queries
        assert_same(ShardGroup(str(path), shards, "stream").search(q, k), want)
        many = np.concatenate([q, x[::97]])                    # block products: >= 16
        assert len(many) >= BLOCK_MIN_QUERIES
        assert_same(exact.search(many, k), brute_force(store, many, k))
    covering = AnnOptions(candidates=N, scan=N)
    ann = ShardGroup(str(path), shards, "ann", ann=covering, persist=False)
    for k in (1, 10, 40):                                      # candidates cover the index
        assert_same(ann.search(q, k), brute_force(store, q, k))
    # and over groups, in process, merged
    dense = DenseSearch(str(path), groups=3)
    try:
        assert dense.plan.where == "process" and len(dense.placement) == 3
        assert_same(dense.search(q, 10), brute_force(store, q, 10))
    finally:
        dense.close()


def test_ann_recall_and_storage(synth, tmp_path):
    """With a short candidate list the answer is approximate, its scores still exact; the
    compressed index is stored once and loaded, not rebuilt, by the next searcher."""
    import shutil
    path = tmp_path / "index"
    shutil.copytree(synth[0], path, ignore=shutil.ignore_patterns("ann"))
    x = synth[1]
    store = IndexStore.open(path)
    q = x[::97]
    want = brute_force(store, q, 10)
    settings = AnnOptions(candidates=100, scan=600)
    g = ShardGroup(str(path), sorted(store.complete_shards()), "ann", ann=settings)
    assert not g.ann.loaded_from_disk
    res = g.search(q, 10)
    key = lambda s, r: set(zip(s.tolist(), r.tolist()))  # noqa: E731
    recall = np.mean([len(key(a, b) & key(c, d)) / 10 for a, b, c, d in
                      zip(res.shards, res.rows, want[1], want[2])])
    assert recall >= 0.9
    v = {(s, r): store.read_stored(s, ("vectors",))["vectors"][r]
         for s, r in zip(res.shards.ravel().tolist(), res.rows.ravel().tolist())}
    for i in range(len(q)):                                    # scores are exact
        for j in range(10):
            exact = np.float32(q[i].astype(np.float64) @ v[(res.shards[i, j],
                                                            res.rows[i, j])].astype(np.float64))
            assert res.scores[i, j] == exact
    again = ShardGroup(str(path), sorted(store.complete_shards()), "ann", ann=settings)
    assert again.ann.loaded_from_disk
    assert_same(again.search(q, 10), (res.scores, res.shards, res.rows))


def test_row_reads_equal_shard_reads(synth):
    path, x = synth
    store = IndexStore.open(path)
    reader = RowReader(store, cache_bytes=1 << 16)
    rng = np.random.default_rng(0)
    for s in sorted(store.complete_shards()):                  # shard 3: previous layout
        whole = store.read_shard(s, ("vectors", "ids", "doc_ids", "text", "n_tokens", "loss"))
        rows = rng.choice(len(whole["ids"]), 25, replace=False)
        np.testing.assert_array_equal(store.read_vector_rows(s, rows),
                                      store.read_stored(s, ("vectors",))["vectors"][rows])
        np.testing.assert_array_equal(store.read_rows(s, "text", rows), whole["text"][rows])
        recs = reader.fields([(s, int(r)) for r in rows])
        for r, rec in zip(rows, recs):
            assert rec == {"ids": whole["ids"][r], "doc_ids": whole["doc_ids"][r],
                           "text": whole["text"][r], "n_tokens": int(whole["n_tokens"][r]),
                           "loss": float(whole["loss"][r])}
        np.testing.assert_array_equal(
            reader.vectors(np.stack([np.full(25, s), rows], 1)).astype(np.float32),
            whole["vectors"][rows])
    # many shards at once, raw and Zarr-read ones mixed, in random order, a row twice
    shards = sorted(store.complete_shards())
    whole = {s: store.read_stored(s, ("vectors",))["vectors"] for s in shards}
    locs = np.array([(s, r) for s in shards for r in rng.choice(len(whole[s]), 7, replace=False)])
    locs = np.concatenate([locs, locs[:1]])[rng.permutation(len(locs) + 1)]
    np.testing.assert_array_equal(reader.vectors(locs),
                                  np.stack([whole[s][r] for s, r in locs.tolist()]))
    assert reader.cache.bytes <= 1 << 16                       # bounded
    raw = store._raw_layout(0, None)
    assert raw is not None and store._raw_layout(3, None) is None


def test_chunk_reads_straight_from_files_equal_zarr(synth, monkeypatch):
    """Every chunk of every row array, read from its file (store/chunks.py), equals Zarr's
    read of the same rows, the short last chunk included; an array that module does not read
    goes through Zarr and gives the same."""
    path, _ = synth
    store = IndexStore.open(path)
    fields = ("ids", "doc_ids", "text", "n_tokens", "loss", "norm")
    for s in sorted(store.complete_shards()):
        for field in fields:
            assert store._chunk_layout(s, field, None) is not None
            whole = np.asarray(store.shard_array(s, field)[:])
            size = store.chunk_rows(s, field)
            parts = [store.read_chunk(s, field, c) for c in range(-(-len(whole) // size))]
            assert len(parts[-1]) == len(whole) - size * (len(parts) - 1)
            np.testing.assert_array_equal(np.concatenate(parts), whole)
            got = np.concatenate(parts)
            if whole.dtype.kind in "OT":                       # strings: str values
                assert all(type(v) is str for v in got.tolist())
            else:
                assert got.dtype == whole.dtype
    from tda.store import chunks
    monkeypatch.setattr(chunks, "layout", lambda array_dir: None)
    via_zarr = IndexStore.open(path)
    for field in fields:
        assert via_zarr._chunk_layout(0, field, None) is None
        last = -(-SHARD // store.chunk_rows(0, field)) - 1
        np.testing.assert_array_equal(via_zarr.read_chunk(0, field, last),
                                      store.read_chunk(0, field, last))


def test_a_truncated_vector_chunk_is_refused_when_read(synth, tmp_path):
    """Re-scoring reads single rows straight from the raw chunk files: a row past a truncated
    chunk's end is a CorruptShard naming the shard and the chunk, rows before it still read."""
    import shutil
    from pathlib import Path

    path, x = synth
    own = tmp_path / "index"
    shutil.copytree(path, own)
    store = IndexStore.open(own)
    directory, chunk_rows, dim, dtype = store._raw_layout(1, None)
    chunk = Path(directory) / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10 * dim * dtype.itemsize])    # 10 rows left
    np.testing.assert_array_equal(store.read_vector_rows(1, [3, 9]).astype(np.float32),
                                  x[[SHARD + 3, SHARD + 9]].astype(np.float16))
    with pytest.raises(CorruptShard, match=r"shard 000001.*vectors chunk 0 is truncated"):
        store.read_vector_rows(1, [3, 11])


def test_row_table_finds_every_id_and_goes_stale(synth, tmp_path):
    path, x = synth
    import shutil
    own = tmp_path / "index"
    shutil.copytree(path, own)
    store = IndexStore.open(own, mode="r+")
    assert RowTable.load(store) is None                        # never built: none
    assert write_row_table(store) == N
    table = RowTable.load(store)
    reader = RowReader(store)
    for i in list(range(0, N, 37)) + [N - 1]:
        assert reader.locate(f"e{i}") == (i // SHARD, i % SHARD)
    assert reader.locate("e-missing") is None and table.locate("nope") == []
    # a rewritten shard makes the stored table stale: it is not used
    rows = store.read_shard(2, ("vectors", "ids", "doc_ids", "text", "n_tokens", "loss",
                                "norm"))
    store.write_shard(2, ShardRows(rows["vectors"][::-1].copy(), list(rows["ids"][::-1]),
                                   list(rows["doc_ids"][::-1]), list(rows["text"][::-1]),
                                   rows["n_tokens"][::-1], rows["loss"][::-1],
                                   rows["norm"][::-1]))
    assert RowTable.load(store) is None
    fresh = RowReader(store)
    assert fresh.locate(f"e{2 * SHARD}") == (2, SHARD - 1)    # built from the shards


def test_corrupt_vectors_are_refused_as_they_load(synth, tmp_path):
    path, x = synth
    import shutil
    own = tmp_path / "index"
    shutil.copytree(path, own)
    chunk = own / "shards" / "000001" / "vectors" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0x10
    chunk.write_bytes(bytes(data))
    text = own / "shards" / "000003" / "text" / "c" / "0"       # previous layout: whole check
    data = bytearray(text.read_bytes())
    data[len(data) // 2] ^= 0xFF
    text.write_bytes(bytes(data))
    shards = sorted(IndexStore.open(own).complete_shards())
    with pytest.raises(CorruptShard, match="shard 000001: checksum mismatch"):
        ShardGroup(str(own), shards, "exact")
    g = ShardGroup(str(own), shards, "exact", allow_partial=True)
    assert len(g.skipped) == 2 and "000001" in g.skipped[0] and "000003" in g.skipped[1]
    assert g.n == N - 2 * SHARD
    res = g.search(queries(x), 50)
    assert not set(res.shards.ravel().tolist()) & {1, 3}
    store = IndexStore.open(own)
    with pytest.raises(CorruptShard, match="shard 000003: text chunk 0 unreadable"):
        RowReader(store).fields([(3, 0)])                      # checked when read
    keep = [s for s in shards if s not in (1, 3)]
    scores = brute_force(store, queries(x), N)
    mask = np.isin(scores[1], keep)
    want = tuple(np.stack([a[i][mask[i]][:50] for i in range(len(a))]) for a in scores)
    assert_same(res, want)


def test_threads_share_the_row_cache_safely(synth):
    """Many threads searching and reading documents at once, through a cache far too small
    for them (constant eviction): no error, and every answer is the single-thread one."""
    path, x = synth
    with Searcher(path, load_model=False) as s:
        s.rows.cache.max_bytes = 20_000
        q = x[::50]
        want = [[(h.id, h.snippet, h.score) for h in hits] for hits in s.search_vectors(q, 8)]
        docs = {f"e{i}": s.document(f"e{i}") for i in range(0, N, 41)}
        errors, done = [], []

        def work(t):
            rng = np.random.default_rng(t)
            try:
                for _ in range(15):
                    i = int(rng.integers(len(q)))
                    hits = s.search_vectors(q[i:i + 1], 8)[0]
                    assert [(h.id, h.snippet, h.score) for h in hits] == want[i]
                    d = str(rng.choice(sorted(docs)))
                    assert s.document(d) == docs[d]
                done.append(t)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(done) == 12
        assert s.rows.cache.bytes <= 20_000


@pytest.mark.slow
def test_a_killed_dask_worker_is_survived(synth):
    path, x = synth
    store = IndexStore.open(path)
    q = queries(x)
    want = brute_force(store, q, 10)
    dense = DenseSearch(str(path), workers=2, timeout_s=60)
    try:
        assert dense.plan.where == "local-cluster" and len(set(dense.placement.values())) == 2
        assert_same(dense.search(q, 10), want)
        pids = dense.client.run(os.getpid)
        victim = dense.placement[next(iter(dense.placement))]
        os.kill(pids[victim], signal.SIGKILL)                 # between two queries
        assert_same(dense.search(q, 10), want)
        assert victim not in dense.placement.values()
        assert_same(dense.search(q[:2], 10), tuple(w[:2] for w in want))
        dense.timeout_s = 1e-4                                # nothing answers that fast
        with pytest.raises(SearchFailed, match=r"not answered within .*group of shards"):
            dense.search(q, 10)
    finally:
        dense.close()


def test_where_a_search_runs():
    gib = 2**30
    p = plan(gib, cpus=2, memory=16 * gib)
    assert (p.where, p.kind, p.groups, p.warnings) == ("process", "exact", 2, [])
    p = plan(gib, workers=3, memory=16 * gib)
    assert (p.where, p.workers, p.groups) == ("local-cluster", 3, 3)
    p = plan(10 * gib, memory_budget=4 * gib, memory=64 * gib)   # room for 3 workers
    assert (p.where, p.workers, p.kind) == ("local-cluster", 3, "exact")
    p = plan(20 * gib, memory_budget=4 * gib, memory=16 * gib)   # no room: compressed
    assert (p.where, p.kind, p.groups) == ("process", "ann", 1)
    assert "over the memory budget" in p.warnings[0] and "--faiss-index stream" in p.warnings[0]
    p = plan(20 * gib, kind="stream", memory_budget=4 * gib, memory=16 * gib)
    assert (p.where, p.kind, p.warnings) == ("process", "stream", [])
    p = plan(gib, gpus=1, memory=16 * gib)                       # one GPU: in process
    assert (p.where, p.groups, p.devices) == ("process", 1, [0])
    p = plan(gib, gpus=4, memory=16 * gib)                       # one worker per GPU
    assert (p.where, p.workers, p.groups, p.devices) == ("local-cluster", 4, 4, [0, 1, 2, 3])
    p = plan(gib, gpus=4, kind="ann", memory=16 * gib)           # GPUs serve exact only
    assert p.devices == []


def test_default_mode_without_bm25_is_trackstar(synth):
    path, _ = synth
    with Searcher(path, load_model=False) as s:
        assert s.bm25 is None and s.default_mode == "trackstar"
        with pytest.raises(QueryError, match="opened without a model"):   # not "no BM25"
            s.search("a prompt", " target")
        with pytest.raises(QueryError, match="no BM25 index"):
            s.search("a prompt", " target", mode="both")


def test_gpu_group_without_faiss_gpu_is_a_clear_error(synth):
    import faiss
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present: the GPU path is exercised for real elsewhere")
    path, _ = synth
    with pytest.raises(ConfigError, match="FAISS GPU"):
        ShardGroup(str(path), [0, 1], "exact", device=0)


def test_searcher_in_process_from_standard_input(synth, tmp_path):
    """No cluster and no __main__ guard needed: a script piped to python works."""
    path, x = synth
    script = (f"import numpy as np\nfrom tda import Searcher\n"
              f"s = Searcher({str(path)!r}, load_model=False)\n"
              f"assert s.dense.plan.where == 'process' and s.dense.client is None\n"
              f"hits = s.search_vectors(np.load({str(tmp_path / 'q.npy')!r}), 3)[0]\n"
              f"print([h.id for h in hits])\n")
    np.save(tmp_path / "q.npy", x[5:6])
    res = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True,
                         timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().replace("'", '"'))[:3] == ["e5", f"e{SHARD + 5}",
                                                                     f"e{4 * SHARD + 7}"]


@pytest.mark.parametrize("block_rows", [64, 1000])
def test_block_scorer_keeps_each_querys_top_c(block_rows):
    """Small blocks (many folds of pending candidates, the early-block top-c cut) and one
    large block: the running top c of every query equals a full sort of its scores."""
    from tda.searcher.scoring import BlockScorer
    rng = np.random.default_rng(3)
    stored = rng.standard_normal((5000, 32)).astype(np.float16)
    q = rng.standard_normal((20, 32)).astype(np.float32)
    scorer = BlockScorer(q, 7, block_rows=block_rows)
    for start in range(0, 5000, 1700):                         # added in uneven parts
        scorer.add(stored[start:start + 1700], start)
    scores, index = scorer.result()
    full = q.astype(np.float64) @ stored.astype(np.float64).T
    want = np.argsort(-full, axis=1)[:, :7]
    np.testing.assert_array_equal(index, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), atol=1e-5)
    assert scorer.seen == 5000
