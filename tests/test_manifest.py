"""The typed manifest against a real index of the previous release (tests/fixtures/index-v1,
written by tda 0.1.0): it reads, unchanged; other versions and fields a reader does not know
are refused with a message that says how to rebuild."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tda.errors import SchemaVersionMismatch
from tda.schemas.index import SCHEMA_VERSION, Manifest
from tda.schemas.options import IndexOptions
from tda.searcher.profiles import Profile
from tda.store.index import IndexStore
from tda.store.verify import verify_index
from tda.tests.indexing import tda
from tda.tests.tolerances import FLOAT16_ATOL

V1 = Path(__file__).parent / "fixtures" / "index-v1"


@pytest.fixture
def v1(tmp_path):
    out = tmp_path / "index-v1"
    shutil.copytree(V1, out)
    return out


def _raw(index: Path) -> dict:
    return json.loads((index / "zarr.json").read_text())["attributes"]["tda"]


def test_previous_release_index_reads(v1):
    store = IndexStore.open(v1)
    m = store.manifest
    assert m.schema_version == 1 and m.tool_version == "0.1.0" and m.build is None
    assert m.model.fingerprint == "7dfff2d138bad542"
    assert m.engine.config.projection_dim == 4 and m.engine.config.correction == "factored"
    assert [t.name for t in m.engine.tracked] == ["transformer.h.0.mlp.c_fc"]
    assert m.engine.tracked[0].shape_out_in == (128, 32) and m.dim == 16
    assert m.engine.second_moments.optimizer == "adam"
    assert (m.layout.shard_size, m.layout.storage_dtype, m.corpus.documents) == (3, "float16", 5)
    assert m.n_shards == 2 and store.unfinished_shards() == []
    rows = [store.read_shard(s, ("vectors", "ids"), verify=True) for s in range(2)]
    vectors = np.concatenate([r["vectors"] for r in rows])
    assert vectors.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=FLOAT16_ATOL)
    profile = Profile.load(store, "train")
    assert [b.shape for b in profile.blocks] == [(16, 16)]
    stored = np.concatenate([store.read_shard(s, ("vectors",), "train")["vectors"]
                             for s in range(2)])
    np.testing.assert_allclose(profile.transform(vectors), stored, atol=FLOAT16_ATOL)
    report = verify_index(str(v1))
    assert report["ok"], report["problems"]
    assert json.loads(tda("info", str(v1), "--json").stdout)["examples"] == 6


def test_typed_manifest_writes_the_layout_it_read(v1):
    """Reading a 0.1.0 manifest and writing it back gives the same JSON: the typed records
    changed the code, not the format."""
    raw = _raw(v1)
    assert Manifest.from_dict(raw).to_dict() == raw
    m = Manifest.from_dict(raw)
    assert Manifest.from_dict(m.to_dict()) == m


def test_unknown_schema_version_is_refused_with_how_to_rebuild(v1):
    meta = json.loads((v1 / "zarr.json").read_text())
    meta["attributes"]["tda"]["schema_version"] = SCHEMA_VERSION + 1
    (v1 / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionMismatch,
                       match=rf"{v1}: index schema version {SCHEMA_VERSION + 1}, but this tda "
                             r"reads versions 1, 2; rebuild the index"):
        IndexStore.open(v1)


def test_fields_a_reader_does_not_know_are_refused_and_optional_ones_default(v1):
    raw = _raw(v1)
    newer = {**raw, "featurizer": {**raw["featurizer"], "from_a_newer_tda": 0.5}}
    with pytest.raises(SchemaVersionMismatch, match=r"unknown fields \['from_a_newer_tda'\].*"
                                                    r"Rebuild the index"):
        Manifest.from_dict(newer, where=str(v1))
    broken = {k: v for k, v in raw.items() if k != "layout"}
    with pytest.raises(SchemaVersionMismatch, match="missing field 'layout'"):
        Manifest.from_dict(broken)
    with_build = {**raw, "build": {"index": {"shard_size": 3}}}
    build = Manifest.from_dict(with_build).build
    assert build.index == IndexOptions(shard_size=3) and build.ranks == 1
