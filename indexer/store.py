"""The Zarr index: manifest, shards with completion markers, BM25 status (layout in
schemas/index.py). Ranks write disjoint shards without locks; readers trust only marked shards.
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from tda.indexer.faults import crash_point
from tda.schemas.index import (BM25_DIR, BM25_KEY, COMPLETE_KEY, MANIFEST_KEY, MOMENTS,
                               PROFILES, ROW_ARRAYS, SHARDS, Manifest, shard_name)

ROW_CHUNK = 1024
warnings.filterwarnings("ignore", message=".*vlen-utf8.*")
warnings.filterwarnings("ignore", message=".*VariableLengthUTF8.*")


class IndexError_(ValueError):
    """The index cannot be used as asked; the message names it and the problem."""


class CorruptShard(IndexError_):
    """A shard that is marked complete but does not read back as written."""


class IndexMissing(IndexError_):
    """Nothing (or an empty directory) at the index path."""


@dataclass
class ShardRows:
    """One shard's rows, in corpus order. ``vectors`` [rows, d] float32."""

    vectors: np.ndarray
    ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    n_tokens: np.ndarray
    loss: np.ndarray
    norm: np.ndarray

    sequences: list | None = None      # token sequences while the rows are being computed

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, examples, dim: int) -> "ShardRows":
        """Rows for ``examples`` (indexer Examples) with numbers to fill in by ``fill``."""
        n = len(examples)
        return cls(np.zeros((n, dim), np.float32), [e.id for e in examples],
                   [e.doc_id for e in examples], [e.text for e in examples],
                   np.zeros(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32),
                   [e.sequence for e in examples])

    def fill(self, rows, vectors, norm, loss, n_tokens) -> None:
        """Write one batch's results into ``rows`` (positions in the shard)."""
        self.vectors[rows] = vectors
        self.norm[rows], self.loss[rows], self.n_tokens[rows] = norm, loss, n_tokens


def _compressor():
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]


def checksum(arrays: dict[str, np.ndarray | list]) -> str:
    """sha256 (hex) over a shard's stored arrays, in name order: raw bytes of numeric arrays,
    newline-joined UTF-8 of string arrays."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        values = arrays[name]
        h.update(name.encode() + b"\0")
        if isinstance(values, np.ndarray) and values.dtype != object and \
                values.dtype.kind not in "UT":
            h.update(np.ascontiguousarray(values).tobytes())
        else:
            h.update("\n".join(str(v) for v in values).encode())
    return h.hexdigest()


def to_storage(vectors: np.ndarray, storage_dtype: str) -> np.ndarray:
    """float32 [n, d] -> stored array: float16, or bfloat16 bits as uint16."""
    if storage_dtype == "float16":
        return vectors.astype(np.float16)
    import torch
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)) \
        .to(torch.bfloat16).view(torch.uint16).numpy()


def from_storage(stored: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Stored array -> float32."""
    if storage_dtype == "float16":
        return stored.astype(np.float32)
    import torch
    return torch.from_numpy(np.ascontiguousarray(stored)).view(torch.bfloat16).float().numpy()


class IndexStore:
    """One index group at a local path or any fsspec URL Zarr supports."""

    def __init__(self, url: str | Path, root: zarr.Group):
        self.url = str(url)
        self.root = root

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> "IndexStore":
        """Open an existing index; IndexError_ when there is none or it is not a tda index."""
        if _is_local(url) and (not Path(url).exists() or (
                Path(url).is_dir() and not any(Path(url).iterdir()))):
            raise IndexMissing(f"{url}: no such index")
        if _is_local(url) and not (Path(url) / "zarr.json").is_file():
            raise IndexError_(f"{url}: exists but is not a tda index (no zarr.json)")
        try:
            root = zarr.open_group(str(url), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise IndexMissing(f"{url}: no such index ({e})") from None
        except (ValueError, NotADirectoryError) as e:
            raise IndexError_(f"{url}: not a Zarr index ({e})") from None
        if MANIFEST_KEY not in root.attrs:
            raise IndexError_(f"{url}: a Zarr group but not a tda index (no manifest)")
        return cls(url, root)

    @classmethod
    def create(cls, url: str | Path, manifest: Manifest) -> "IndexStore":
        """Create a new index with ``manifest``; refuses a path that holds anything."""
        if _is_local(url) and Path(url).exists() and any(Path(url).iterdir()):
            raise IndexError_(f"{url}: exists and is not empty")
        crash_point("manifest")
        # one write of zarr.json carries the manifest: no crash leaves a group without it
        root = zarr.open_group(str(url), mode="w",
                               attributes={MANIFEST_KEY: manifest.to_dict()})
        root.require_group(SHARDS)
        return cls(url, root)

    @functools.cached_property
    def manifest(self) -> Manifest:
        return Manifest.from_dict(self.root.attrs[MANIFEST_KEY])

    @property
    def local_path(self) -> Path | None:
        return Path(self.url) if _is_local(self.url) else None

    # ---------------------------------------------------------------- shards
    def _shards(self, profile: str | None = None) -> zarr.Group:
        """The group holding the base shards, or a profile's transformed shards."""
        path = SHARDS if profile is None else f"{PROFILES}/{profile}/{SHARDS}"
        return self.root[path] if self.root.read_only else self.root.require_group(path)

    def _has(self, profile: str | None) -> bool:
        path = SHARDS if profile is None else f"{PROFILES}/{profile}/{SHARDS}"
        try:
            self.root[path]
            return True
        except KeyError:
            return False

    def shard_names(self, profile: str | None = None) -> list[str]:
        return sorted(self._shards(profile).group_keys()) if self._has(profile) else []

    def shard_status(self, profile: str | None = None) -> dict[int, dict | None]:
        """Every shard present: its completion marker, or None when incomplete or unreadable."""
        out: dict[int, dict | None] = {}
        names = self.shard_names(profile)
        shards = self._shards(profile) if names else None
        for name in names:
            try:
                out[int(name)] = shards[name].attrs.get(COMPLETE_KEY)
            except Exception:  # noqa: BLE001 - a half-written zarr.json reads as incomplete
                out[int(name)] = None
        return out

    def complete_shards(self, profile: str | None = None) -> dict[int, int]:
        """{shard index: rows} of the shards with a completion marker."""
        return {i: m["rows"] for i, m in self.shard_status(profile).items() if m}

    def write_profile_shard(self, profile: str, index: int, vectors: np.ndarray,
                            storage_dtype: str) -> None:
        """A profile's transformed vectors [rows, d] for one base shard, marker last."""
        shards = self._shards(profile)
        name = shard_name(index)
        if name in shards:
            del shards[name]
        g = shards.create_group(name)
        stored = to_storage(vectors, storage_dtype)
        chunk = max(1, min(ROW_CHUNK, stored.shape[0]))
        arr = g.create_array("vectors", shape=stored.shape, dtype=stored.dtype,
                             chunks=(chunk, stored.shape[1]), compressors=_compressor())
        arr[:] = stored
        crash_point("profile-shard")
        g.attrs[COMPLETE_KEY] = {"rows": int(stored.shape[0]),
                                 "checksum": checksum({"vectors": stored})}

    def write_shard(self, index: int, rows: ShardRows, storage_dtype: str) -> None:
        """Write one shard; any earlier incomplete copy is removed first. The marker (with the
        checksum) goes last, so a crash at any point leaves no shard that reads as complete."""
        shards = self._shards()
        name = shard_name(index)
        if name in shards:
            del shards[name]
        g = shards.create_group(name)
        n = len(rows)
        chunk = max(1, min(ROW_CHUNK, n))
        arrays = {"vectors": to_storage(rows.vectors, storage_dtype),
                  "ids": list(rows.ids), "doc_ids": list(rows.doc_ids), "text": list(rows.texts),
                  "n_tokens": np.asarray(rows.n_tokens, np.int32),
                  "loss": np.asarray(rows.loss, np.float32),
                  "norm": np.asarray(rows.norm, np.float32)}
        for key, values in arrays.items():
            if isinstance(values, list):
                a = g.create_array(key, shape=(n,), dtype=str, chunks=(chunk,))
                a[:] = np.asarray(values, dtype=object)
            else:
                a = g.create_array(key, shape=values.shape, dtype=values.dtype,
                                   chunks=(chunk,) + values.shape[1:],
                                   compressors=_compressor() if values.ndim == 2 else "auto")
                a[:] = values
            if key == "vectors":
                crash_point("shard-arrays")          # mid-write: vectors there, the rest not
        crash_point("shard-marker")
        g.attrs[COMPLETE_KEY] = {"rows": n, "checksum": checksum(arrays)}

    def drop_shard(self, index: int, profile: str | None = None) -> None:
        """Remove a shard (it will be rebuilt)."""
        shards = self._shards(profile)
        if shard_name(index) in shards:
            del shards[shard_name(index)]

    def read_shard(self, index: int, fields: tuple[str, ...] = ("vectors", "ids"),
                   profile: str | None = None, verify: bool = False) -> dict:
        """The named arrays of a complete shard (vectors as float32); with ``profile``, that
        profile's transformed vectors. ``verify`` reads every array and checks the shard's
        checksum first: CorruptShard names the shard and the problem."""
        name = shard_name(index)
        where = f"{self.url}: {'profile ' + profile + ' ' if profile else ''}shard {name}"
        try:
            g = self._shards(profile)[name]
            marker = g.attrs.get(COMPLETE_KEY)
        except Exception as e:  # noqa: BLE001 - missing or unreadable metadata
            raise CorruptShard(f"{where}: missing or unreadable ({e})") from None
        if not marker:
            raise IndexError_(f"{where} is incomplete")
        names = ROW_ARRAYS if profile is None else ("vectors",)
        try:
            raw = {f: g[f][:] for f in (names if verify else fields)}
        except Exception as e:  # noqa: BLE001 - codec/decompression/shape errors
            raise CorruptShard(f"{where}: unreadable ({type(e).__name__}: {e})") from None
        if verify:
            for f in names:
                if len(raw[f]) != marker["rows"]:
                    raise CorruptShard(f"{where}: {f} has {len(raw[f])} rows, the marker says "
                                       f"{marker['rows']}")
            if checksum(raw) != marker["checksum"]:
                raise CorruptShard(f"{where}: checksum mismatch (the data changed after it "
                                   f"was written)")
        dtype = self.manifest.layout["storage_dtype"]
        return {f: from_storage(raw[f], dtype) if f == "vectors" else raw[f] for f in fields}

    def verify_shard(self, index: int, profile: str | None = None) -> str | None:
        """None when the shard reads back whole and matches its checksum, else the problem."""
        try:
            self.read_shard(index, ("vectors",), profile, verify=True)
        except IndexError_ as e:
            return str(e)
        return None

    def shard_array(self, index: int, field: str, profile: str | None = None):
        """The lazy Zarr array ``field`` of a complete shard (for block-wise reads)."""
        g = self._shards(profile)[shard_name(index)]
        if not g.attrs.get(COMPLETE_KEY):
            raise IndexError_(f"{self.url}: shard {shard_name(index)} is incomplete")
        return g[field]

    def decode_vectors(self, stored: np.ndarray) -> np.ndarray:
        """Stored vector rows -> float32."""
        return from_storage(stored, self.manifest.layout["storage_dtype"])

    # ---------------------------------------------------------------- second moments
    def write_moments(self, moments) -> None:
        """Store the second moments the vectors were corrected with (all a query needs), so
        the index is self-contained. Marked complete last."""
        if MOMENTS in self.root:
            del self.root[MOMENTS]
        g = self.root.create_group(MOMENTS)
        names = sorted(moments.moments)
        for i, name in enumerate(names):
            for part, t in vars(moments.moments[name]).items():
                if t is not None:
                    arr = g.create_array(f"{i:05d}_{part}", shape=tuple(t.shape),
                                         dtype="float64", compressors=_compressor())
                    arr[:] = t.double().numpy()
            crash_point("moments")
        g.attrs[COMPLETE_KEY] = {"names": names, "source": moments.source,
                                 "optimizer": moments.optimizer, "extra": moments.extra}

    def read_moments(self):
        """The stored SecondMoments, or None when the index has none (correction 'none')."""
        import torch

        from tda.engine.second_moments import Moment, SecondMoments
        if MOMENTS not in self.root or not self.root[MOMENTS].attrs.get(COMPLETE_KEY):
            return None
        g = self.root[MOMENTS]
        meta = g.attrs[COMPLETE_KEY]
        moments = {}
        for i, name in enumerate(meta["names"]):
            parts = {part: torch.from_numpy(g[f"{i:05d}_{part}"][:])
                     for part in ("full", "row", "col") if f"{i:05d}_{part}" in g}
            moments[name] = Moment(**parts)
        return SecondMoments(moments, source=meta["source"], optimizer=meta["optimizer"],
                             extra=meta.get("extra", {}))

    # ---------------------------------------------------------------- BM25
    @property
    def bm25_path(self) -> Path | None:
        return self.local_path / BM25_DIR if self.local_path else None

    @property
    def bm25_status(self) -> dict | None:
        return self.root.attrs.get(BM25_KEY)

    def set_bm25_status(self, status: dict) -> None:
        self.root.attrs[BM25_KEY] = status


def _is_local(url: str | Path) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")
