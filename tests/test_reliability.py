"""Crash safety, integrity and the writer lock, proven by killing and corrupting real builds.

Figures (faults injected and survived) are printed; run with -s to see them."""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from tda.tests import helpers
from tda.tests.indexing import assert_same_index, env, read_index, tda, write_corpus
from tda.searcher.profiles import Profile
from tda.store.profiles import complete_profiles
from tda.store.index import IndexStore

SETTINGS = ("--shard-size", "6", "--max-len", "96", "--projection-dim", "3", "--no-progress")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    facts = helpers.fact_sentences(72, skip=300)
    return write_corpus(tmp_path_factory.mktemp("c") / "c.jsonl", [s for _, s in facts])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, gpt2_dir, corpus):
    out = tmp_path_factory.mktemp("ref") / "index"
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out), *SETTINGS)
    tda("precondition", str(out), "--name", "p", "--mode", "train", "--workers", "1")
    return out


def _index_cmd(gpt2_dir, corpus, out):
    return [sys.executable, "-m", "tda.cli", "index", "--model", str(gpt2_dir), "--corpus",
            str(corpus), "--out", str(out), *SETTINGS]


def _run(cmd, crash_at=None, kill_after=None):
    """Run cmd; with crash_at it SIGKILLs itself at that point; with kill_after we SIGKILL its
    process group after that many seconds. Returns the exit code (-9 when killed)."""
    e = env()
    if crash_at:
        e["TDA_CRASH_AT"] = crash_at
    with tempfile.TemporaryFile() as err:
        # its own process group: a kill takes the command and its dask workers, like a job kill
        proc = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            err.seek(0)
            raise AssertionError(f"{' '.join(map(str, cmd[2:5]))} failed ({proc.returncode}): "
                                 f"{err.read().decode()[-2000:]}")
    return proc.returncode


def _assert_complete_and_equal(out, reference):
    assert_same_index(out, reference)
    ids = read_index(out)["ids"].tolist()
    assert len(ids) == len(set(ids)), "duplicate examples"
    assert json.loads(tda("verify", str(out), "--json").stdout)["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["manifest", "moments", "shard-arrays:3", "shard-marker:5",
                                   "bm25"])
def test_crash_at_each_write_point_then_resume(tmp_path, gpt2_dir, corpus, reference, point):
    out = tmp_path / "index"
    assert _run(_index_cmd(gpt2_dir, corpus, out), crash_at=point) == -signal.SIGKILL
    if out.exists() and (out / "zarr.json").exists():
        info = json.loads(tda("info", str(out), "--json", check=False).stdout or "{}")
        assert not info or info["bm25"] is None or point != "bm25"
    tda(*_index_cmd(gpt2_dir, corpus, out)[3:])
    _assert_complete_and_equal(out, reference)


@pytest.mark.slow
def test_many_random_kills_then_resume(tmp_path, gpt2_dir, corpus, reference):
    """At least 20 SIGKILLs at random moments (start-up, scan, shard writes, BM25): fresh
    builds, each killed and resumed until it finishes, then compared with the reference."""
    import shutil
    out = tmp_path / "index"
    start = time.time()
    assert _run(_index_cmd(gpt2_dir, corpus, out)) == 0
    full = time.time() - start                         # one uninterrupted build, seconds
    rng = random.Random(0)
    kills = builds = 0
    while kills < 20:
        # a fresh build killed up to 4 times at random moments, then resumed to the end
        # (a resume redoes start-up and BM25, so it may not fit in `full` seconds)
        shutil.rmtree(out)
        builds += 1
        for _ in range(4):
            code = _run(_index_cmd(gpt2_dir, corpus, out), kill_after=rng.uniform(0.3, full))
            if code == 0:
                break
            assert code == -signal.SIGKILL, code
            kills += 1
        else:
            assert _run(_index_cmd(gpt2_dir, corpus, out)) == 0
        _assert_complete_and_equal(out, reference)
    print(f"\nindex: {kills} SIGKILLs at random moments over {builds} builds, all resumed to "
          f"the reference index; {time.time() - start:.0f} s")


@pytest.mark.slow
def test_precondition_killed_many_times(tmp_path, reference):
    index = tmp_path / "index"
    import shutil
    shutil.copytree(reference, index)
    shutil.rmtree(index / "profiles")
    cmd = [sys.executable, "-m", "tda.cli", "precondition", str(index), "--name", "p",
           "--mode", "train", "--workers", "1"]
    for point in ("profile-transform", "profile-shard:4"):
        assert _run(cmd, crash_at=point) == -signal.SIGKILL
        assert "p" not in complete_profiles(IndexStore.open(index))
    start = time.time()
    assert _run(cmd) == 0
    full = time.time() - start
    rng = random.Random(1)
    kills, builds = 2, 0
    while kills < 22:
        shutil.rmtree(index / "profiles")
        builds += 1
        for _ in range(4):
            code = _run(cmd, kill_after=rng.uniform(0.3, full))
            if code == 0:
                break
            assert code == -signal.SIGKILL, code
            kills += 1
            # killed after its completion marker (while shutting down): complete, and checked
            # against the reference below; otherwise it must not be listed
            if "p" in complete_profiles(IndexStore.open(index)):
                break
        else:
            assert _run(cmd) == 0
    a, b = IndexStore.open(index), IndexStore.open(reference)
    for x, y in zip(Profile.load(a, "p").blocks, Profile.load(b, "p").blocks):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    for s in sorted(b.complete_shards()):
        np.testing.assert_array_equal(a.read_shard(s, ("vectors",), "p")["vectors"],
                                      b.read_shard(s, ("vectors",), "p")["vectors"])
    print(f"\nprecondition: {kills} SIGKILLs (2 at named points, the rest at random moments "
          f"over {builds} builds), all resumed to the reference profile")


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_corruption_and_index_repairs_it(tmp_path, gpt2_dir, corpus, reference):
    import shutil
    out = tmp_path / "index"
    shutil.copytree(reference, out)
    assert json.loads(tda("verify", str(out), "--json").stdout)["ok"]
    _flip_byte(out / "shards" / "000001" / "vectors" / "c" / "0" / "0")       # a vector byte
    _flip_byte(out / "shards" / "000002" / "norm" / "c" / "0", offset=-3)    # a norm byte
    (out / "shards" / "000003" / "text" / "c" / "0").write_bytes(b"\x00" * 5)  # truncated
    (out / "shards" / "000004" / "ids" / "zarr.json").unlink()              # metadata gone
    _flip_byte(out / "profiles" / "p" / "shards" / "000005" / "vectors" / "c" / "0" / "0")
    res = tda("verify", str(out), "--json", check=False)
    report = json.loads(res.stdout)
    assert res.returncode == 1 and not report["ok"]
    text = "\n".join(report["problems"])
    for needle in ("shard 000001: checksum mismatch", "shard 000002: checksum mismatch",
                   "shard 000003: unreadable", "shard 000004: unreadable",
                   "profile p shard 000005: checksum mismatch"):
        assert needle in text, (needle, text)
    human = tda("verify", str(out), check=False)
    assert "problem:" in human.stderr and "5 problem(s)" in human.stdout
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out), *SETTINGS)
    report = json.loads(tda("verify", str(out), "--json", check=False).stdout)
    assert report["problems"] == [f"{out}: profile p shard 000005: checksum mismatch "
                                  f"(the data changed after it was written)"]
    assert_same_index(out, reference)


def test_bm25_damage_is_found_and_rebuilt(tmp_path, gpt2_dir, corpus, reference):
    import shutil
    out = tmp_path / "index"
    shutil.copytree(reference, out)
    seg = sorted((out / "bm25").glob("*.cfs")) or sorted((out / "bm25").glob("_*"))
    seg[0].write_bytes(b"garbage")
    report = json.loads(tda("verify", str(out), "--json", check=False).stdout)
    assert any(p.startswith("bm25:") for p in report["problems"]), report
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out), *SETTINGS)
    assert json.loads(tda("verify", str(out), "--json").stdout)["ok"]


@pytest.mark.slow
def test_one_writer_at_a_time_and_a_dead_one_holds_nothing(tmp_path, gpt2_dir, corpus):
    out = tmp_path / "index"
    first = subprocess.Popen(_index_cmd(gpt2_dir, corpus, out), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "zarr.json").exists():
        time.sleep(0.05)
    second = tda(*_index_cmd(gpt2_dir, corpus, out)[3:], check=False)
    assert second.returncode == 1
    assert "is being written by another process" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    tda(*_index_cmd(gpt2_dir, corpus, out)[3:])          # the dead holder left no lock behind
    assert json.loads(tda("verify", str(out), "--json").stdout)["ok"]


def test_search_refuses_a_corrupt_shard_or_skips_it(tmp_path, reference):
    import shutil

    from tda.errors import CorruptShard
    from tda.searcher.searcher import Searcher
    out = tmp_path / "index"
    shutil.copytree(reference, out)
    _flip_byte(out / "shards" / "000002" / "vectors" / "c" / "0" / "0")
    with pytest.raises(CorruptShard, match=r"shard 000002: checksum mismatch.*--allow-partial"):
        Searcher(out, workers=1)
    res = tda("search", "Allan Peiper was born in", "--target", " Alexandra", "--index",
              str(out), "--workers", "1", check=False)
    assert res.returncode == 1 and "shard 000002: checksum mismatch" in res.stderr
    with Searcher(out, workers=1, allow_partial=True) as searcher:
        resp = searcher.search("Allan Peiper was born in", " Alexandra", k=100,
                               mode="trackstar")
    assert resp.warnings and "shard 000002" in resp.warnings[0]
    bad = set(IndexStore.open(reference).read_shard(2, ("ids",))["ids"].tolist())
    got = {h.id for h in resp.trackstar}
    assert bad and not bad & got
    assert len(got) == min(100, len(read_index(reference)["ids"]) - len(bad))
