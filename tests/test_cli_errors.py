"""Every command meets a broken index with one line that names the path and the problem, a
non-zero exit status and no traceback: `tda info`, `tda search`, `tda index` and `tda verify`
on an index of an unknown schema version, a missing index, an index another process is
writing, a shard whose metadata is damaged, and a model that is not the index's.

Two cells are not errors by design, and are tested as what they are: `tda index` on a missing
index creates it, and on a damaged shard rebuilds it (one warning line naming the shard).
Damaged shard *data* (a flipped byte, found by checksums) is tests/test_reliability.py's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tda.store.lock import IndexLock
from tda.tests import helpers
from tda.tests.indexing import env, tda, write_corpus

SETTINGS = ("--shard-size", "2", "--projection-dim", "2", "--max-len", "64", "--no-bm25",
            "--no-progress")
COMMANDS = ("info", "search", "index", "verify")
CONDITIONS = ("unknown-schema", "missing", "busy", "corrupt-shard", "other-model")


@pytest.fixture(scope="module")
def base(tmp_path_factory, gpt2_dir):
    """A tiny index (6 documents, 3 shards), its corpus, and a model that is not its own
    (the same weights, another config.json byte: another fingerprint)."""
    root = tmp_path_factory.mktemp("cli-errors")
    corpus = write_corpus(root / "c.jsonl", helpers.sentences(6))
    index = root / "index"
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(index),
        *SETTINGS)
    other = root / "other-model"
    shutil.copytree(gpt2_dir, other)
    with (other / "config.json").open("a") as f:
        f.write("\n")
    return {"index": index, "corpus": corpus, "model": gpt2_dir, "other": other}


def _prepare(base, tmp_path, condition):
    """(index path, model for the command, a context holding the condition)."""
    index = tmp_path / "index"
    model = base["model"]
    if condition != "missing":
        shutil.copytree(base["index"], index)
    if condition == "unknown-schema":
        meta = json.loads((index / "zarr.json").read_text())
        meta["attributes"]["tda"]["schema_version"] = 99
        (index / "zarr.json").write_text(json.dumps(meta))
    elif condition == "corrupt-shard":
        (index / "shards" / "000001" / "zarr.json").write_text('{"zarr_format": 3, "node_')
    elif condition == "other-model":
        model = base["other"]
    return index, model, IndexLock(index, "tda index") if condition == "busy" else None


def _args(command, index, model, base):
    return {"info": ("info", str(index), "--model", str(model)),
            "verify": ("verify", str(index), "--model", str(model)),
            "search": ("search", "Alan Turing was born in", "--target", " London", "--index",
                       str(index), "--model", str(model), "--workers", "1"),
            "index": ("index", "--model", str(model), "--corpus", str(base["corpus"]),
                      "--out", str(index), *SETTINGS)}[command]


NEEDLES = {"unknown-schema": "schema version 99", "missing": "no such index",
           "busy": "is being written by another process", "corrupt-shard":
           "shard 000001: metadata unreadable", "other-model": "fingerprint"}


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("command", COMMANDS)
def test_one_line_naming_path_and_problem(base, tmp_path, command, condition):
    index, model, hold = _prepare(base, tmp_path, condition)
    if hold is not None:
        hold.__enter__()
    try:
        res = tda(*_args(command, index, model, base), check=False, timeout=300)
    finally:
        if hold is not None:
            hold.__exit__()
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    if command == "index" and condition == "missing":        # creates the index
        assert res.returncode == 0 and lines == [], res.stderr
        assert json.loads(tda("verify", str(index), "--json").stdout)["ok"]
        return
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert str(index) in line and NEEDLES[condition] in line, line
    if command == "index" and condition == "corrupt-shard":  # rebuilds the damaged shard
        assert res.returncode == 0 and line.startswith("warning: rebuilding "), line
        assert json.loads(tda("verify", str(index), "--json").stdout)["ok"]
        return
    assert res.returncode == 1
    found = (command == "verify" and condition in ("unknown-schema", "corrupt-shard",
                                                   "other-model")
             or (command, condition) == ("info", "corrupt-shard"))   # problems of a report
    assert line.startswith("problem: " if found else "error: "), line
    if condition == "other-model":
        assert str(model) in line


def test_every_rank_raises_rank_zeros_error(base, tmp_path):
    """Under torchrun, what rank 0 finds alone (here: another writer holds the index) reaches
    API callers on every rank as the same error type, not a generic one."""
    index = tmp_path / "index"
    shutil.copytree(base["index"], index)
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from tda.indexer.build import build_index
        from tda.schemas.options import IndexOptions
        try:
            build_index({str(base['model'])!r}, [{str(base['corpus'])!r}], {str(index)!r},
                        options=IndexOptions(shard_size=2, bm25=False), progress=False)
        except Exception as e:   # one file per rank: two ranks' prints can interleave on a pipe
            with open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["RANK"] + ".txt"), "w") as f:
                f.write(f"rank {{os.environ['RANK']}}: {{type(e).__name__}}: {{e}}")
    """))
    with IndexLock(index, "a test"):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                              "--nproc-per-node=2", "--standalone", str(script)],
                             capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)
             if (tmp_path / f"rank{rank}.txt").exists()]
    assert [line.split(":")[0] for line in lines] == ["rank 0", "rank 1"], out.stdout + out.stderr
    for line in lines:
        assert ": IndexBusy: " in line and "pid" in line and "a test" in line, line


def test_profile_build_closes_its_dask_cluster_when_a_task_raises(base, tmp_path):
    """A transform task that meets a corrupt shard fails the build with the shard's error,
    and the LocalCluster the build started is gone (no worker process left behind)."""
    import psutil

    from tda.errors import CorruptShard
    from tda.indexer.precondition import build_profile
    from tda.schemas.options import PreconditionOptions
    index = tmp_path / "index"
    shutil.copytree(base["index"], index)
    chunk = index / "shards" / "000002" / "vectors" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(CorruptShard, match="shard 000002: checksum mismatch"):
        build_profile(index, "p", options=PreconditionOptions(mode="train", workers=1))
    # multiprocessing's resource tracker lives as long as this process, by design
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before
            and "resource_tracker" not in " ".join(p.cmdline())]
    gone, alive = psutil.wait_procs(left, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
