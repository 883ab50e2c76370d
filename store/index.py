"""``IndexStore``: the one reader and writer of an index on disk (layout: store/layout.py).

Ranks write disjoint shards without locks; every part is written with its completion marker
last, and readers trust only marked parts. The manifest is read (and its version checked) when
the index is opened, so a reader meets a wrong index at ``open``, with the path in the error.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from zarr.core.sync import sync

from tda.errors import CorruptShard, IndexCorrupt, IndexIncomplete, IndexMissing, NotAnIndex
from tda.schemas.index import Manifest
from tda.store import chunks
from tda.store.codec import (array_checksums, checksum, compressor, from_storage, stored_dtype,
                             to_storage)
from tda.store.faults import crash_point
from tda.store.layout import (BM25_DIR, BM25_KEY, COMPLETE_KEY, MANIFEST_KEY, MOMENTS, PROFILES,
                              ROW_ARRAYS, ROW_CHUNK, SCAN, SHARDS, block_name, shard_name,
                              text_chunk_rows)
from tda.store.location import local_path

warnings.filterwarnings("ignore", message=".*vlen-utf8.*")
warnings.filterwarnings("ignore", message=".*VariableLengthUTF8.*")


@dataclass
class ShardRows:
    """One shard's rows, in corpus order: ``vectors`` [rows, d] float32, ``ids``, ``doc_ids``
    and ``texts`` [rows], ``n_tokens`` [rows] int32, ``loss`` [rows] float32 (summed NLL,
    nats), ``norm`` [rows] float32 (L2 norm of phi before normalizing)."""

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
        """Rows for ``examples`` (objects with ``id``, ``doc_id``, ``text``, ``sequence``) with
        numbers to fill in by ``fill``."""
        n = len(examples)
        return cls(np.zeros((n, dim), np.float32), [e.id for e in examples],
                   [e.doc_id for e in examples], [e.text for e in examples],
                   np.zeros(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32),
                   [e.sequence for e in examples])

    def fill(self, rows, vectors, norm, loss, n_tokens) -> None:
        """Write one batch's results into ``rows`` (positions in the shard)."""
        self.vectors[rows] = vectors
        self.norm[rows], self.loss[rows], self.n_tokens[rows] = norm, loss, n_tokens


class IndexStore:
    """One index group at a local path or any fsspec URL Zarr supports."""

    def __init__(self, url: str | Path, root: zarr.Group, manifest: Manifest):
        self.url = str(url)
        self.root = root
        self.manifest = manifest

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> "IndexStore":
        """Open an existing index and read its manifest. IndexMissing when nothing is there,
        NotAnIndex for something else, IndexCorrupt for an unreadable root,
        SchemaVersionMismatch for a manifest this tda does not read."""
        path = local_path(url)
        if path is not None and (not path.exists() or (
                path.is_dir() and not any(path.iterdir()))):
            raise IndexMissing(f"{url}: no such index")
        if path is not None and not (path / "zarr.json").is_file():
            raise NotAnIndex(f"{url}: exists but is not a tda index (no zarr.json)")
        try:
            root = zarr.open_group(str(url), mode=mode)
            attrs = root.attrs.asdict()
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise IndexMissing(f"{url}: no such index ({e})") from None
        except NotADirectoryError as e:
            raise NotAnIndex(f"{url}: not a Zarr index ({e})") from None
        except ValueError as e:          # JSON that does not parse, a Zarr array not a group
            raise IndexCorrupt(f"{url}: zarr.json unreadable ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]})") from None
        if MANIFEST_KEY not in attrs:
            raise NotAnIndex(f"{url}: a Zarr group but not a tda index (no manifest)")
        return cls(url, root, Manifest.from_dict(attrs[MANIFEST_KEY], where=str(url)))

    @classmethod
    def create(cls, url: str | Path, manifest: Manifest) -> "IndexStore":
        """Create a new index with ``manifest``; refuses a path that holds anything."""
        path = local_path(url)
        if path is not None and path.exists() and any(path.iterdir()):
            raise NotAnIndex(f"{url}: exists and is not empty")
        crash_point("manifest")
        # one write of zarr.json carries the manifest: no crash leaves a group without it
        root = zarr.open_group(str(url), mode="w",
                               attributes={MANIFEST_KEY: manifest.to_dict()})
        root.require_group(SHARDS)
        return cls(url, root, manifest)

    @property
    def local_path(self) -> Path | None:
        """The index directory of a local index, else None (a remote URL)."""
        return local_path(self.url)

    # ---------------------------------------------------------------- shards
    def _group_path(self, profile: str | None) -> str:
        return SHARDS if profile is None else f"{PROFILES}/{profile}/{SHARDS}"

    def _shards(self, profile: str | None = None) -> zarr.Group:
        """The group holding the base shards, or a profile's transformed shards."""
        path = self._group_path(profile)
        return self.root[path] if self.root.read_only else self.root.require_group(path)

    def _has(self, profile: str | None) -> bool:
        try:
            self.root[self._group_path(profile)]
            return True
        except KeyError:
            return False

    def shard_names(self, profile: str | None = None) -> list[str]:
        """Names of the shard groups present (complete or not, readable or not: the store's
        listing, not the groups' metadata)."""
        if not self._has(profile):
            return []
        group = self._shards(profile)

        async def listing():
            return [key async for key in group.store.list_dir(group.path)]
        return sorted(k for k in sync(listing()) if k.isdigit())

    def _scan(self, profile: str | None) -> tuple[dict[int, dict | None], dict[int, str]]:
        status: dict[int, dict | None] = {}
        unreadable: dict[int, str] = {}
        names = self.shard_names(profile)
        shards = self._shards(profile) if names else None
        for name in names:
            try:
                status[int(name)] = shards[name].attrs.get(COMPLETE_KEY)
            except Exception as e:  # noqa: BLE001 - a half-written or damaged zarr.json
                status[int(name)] = None
                unreadable[int(name)] = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        return status, unreadable

    def shard_status(self, profile: str | None = None) -> dict[int, dict | None]:
        """Every shard present: its completion marker, or None when incomplete or when its
        metadata cannot be read (``unreadable_shards`` says which and why)."""
        return self._scan(profile)[0]

    def unreadable_shards(self, profile: str | None = None) -> dict[int, str]:
        """{shard index: problem} of the shards whose metadata (marker) cannot be read: a
        write cut short, or damage. `tda index` rebuilds them."""
        return self._scan(profile)[1]

    def complete_shards(self, profile: str | None = None) -> dict[int, int]:
        """{shard index: rows} of the shards with a completion marker."""
        return {i: m["rows"] for i, m in self.shard_status(profile).items() if m}

    def unfinished_shards(self) -> list[int]:
        """Base shards the manifest expects that are not complete."""
        return sorted(set(range(self.manifest.n_shards)) - set(self.complete_shards()))

    def write_shard(self, index: int, rows: ShardRows, seconds: float | None = None) -> None:
        """Write one shard; any earlier incomplete copy is removed first. The marker (with the
        checksum of the shard, one per array, and the ``seconds`` the build spent on it) goes
        last, so a crash at any point leaves no shard that reads as complete. Vectors are
        stored raw or compressed as the manifest's ``layout.vector_codec`` says; string arrays
        in chunks of about TEXT_CHUNK_BYTES."""
        shards = self._shards()
        name = shard_name(index)
        _delete(shards, name)
        g = shards.create_group(name)
        n = len(rows)
        chunk = max(1, min(ROW_CHUNK, n))
        arrays = {"vectors": to_storage(rows.vectors, self.manifest.layout.storage_dtype),
                  "ids": list(rows.ids), "doc_ids": list(rows.doc_ids), "text": list(rows.texts),
                  "n_tokens": np.asarray(rows.n_tokens, np.int32),
                  "loss": np.asarray(rows.loss, np.float32),
                  "norm": np.asarray(rows.norm, np.float32)}
        for key, values in arrays.items():
            if isinstance(values, list):
                a = g.create_array(key, shape=(n,), dtype=str,
                                   chunks=(max(1, min(text_chunk_rows(values), n)),))
                a[:] = np.asarray(values, dtype=object)
            else:
                a = g.create_array(key, shape=values.shape, dtype=values.dtype,
                                   chunks=(chunk,) + values.shape[1:],
                                   compressors=self._vector_codec() if values.ndim == 2
                                   else "auto")
                a[:] = values
            if key == "vectors":
                crash_point("shard-arrays")          # mid-write: vectors there, the rest not
        crash_point("shard-marker")
        g.attrs[COMPLETE_KEY] = {"rows": n, "checksum": checksum(arrays),
                                 "checksums": array_checksums(arrays),
                                 **({} if seconds is None else {"seconds": round(seconds, 3)})}

    def _vector_codec(self):
        """Compressors of vector arrays: none for ``raw`` (float16 unit rows compress by ~6%,
        and raw chunks let a searcher read one row with one small read), else Blosc."""
        return None if self.manifest.layout.vector_codec == "raw" else compressor()

    def write_profile_shard(self, profile: str, index: int, vectors: np.ndarray) -> None:
        """A profile's transformed vectors [rows, d] float32 for one base shard, marker last."""
        shards = self._shards(profile)
        name = shard_name(index)
        _delete(shards, name)
        g = shards.create_group(name)
        stored = to_storage(vectors, self.manifest.layout.storage_dtype)
        chunk = max(1, min(ROW_CHUNK, stored.shape[0]))
        arr = g.create_array("vectors", shape=stored.shape, dtype=stored.dtype,
                             chunks=(chunk, stored.shape[1]), compressors=self._vector_codec())
        arr[:] = stored
        crash_point("profile-shard")
        g.attrs[COMPLETE_KEY] = {"rows": int(stored.shape[0]),
                                 "checksum": checksum({"vectors": stored}),
                                 "checksums": array_checksums({"vectors": stored})}

    def drop_shard(self, index: int, profile: str | None = None) -> None:
        """Remove a shard (it will be rebuilt)."""
        _delete(self._shards(profile), shard_name(index))

    def read_shard(self, index: int, fields: tuple[str, ...] = ("vectors", "ids"),
                   profile: str | None = None, verify: bool = False) -> dict:
        """The named arrays of a complete shard (vectors [rows, d] as float32); with
        ``profile``, that profile's transformed vectors. ``verify`` reads every array and
        checks the shard's checksum (and each array's, where the marker has them) first:
        CorruptShard names the shard and the problem."""
        raw = self.read_stored(index, fields, profile, verify)
        return {f: self.decode_vectors(v) if f == "vectors" else v for f, v in raw.items()}

    def read_stored(self, index: int, fields: tuple[str, ...], profile: str | None = None,
                    verify: bool = False) -> dict:
        """As read_shard, but vectors as stored ([rows, d] float16, or bfloat16 bits as
        uint16)."""
        where = self._where(index, profile)
        marker = self.shard_marker(index, profile)
        g = self._shards(profile)[shard_name(index)]
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
            for f, value in marker.get("checksums", {}).items():
                if f in raw and checksum({f: raw[f]}) != value:
                    raise CorruptShard(f"{where}: {f} does not match its checksum in the "
                                       f"marker")
        return {f: raw[f] for f in fields}

    def verify_shard(self, index: int, profile: str | None = None) -> str | None:
        """None when the shard reads back whole and matches its checksum, else the problem."""
        try:
            self.read_shard(index, ("vectors",), profile, verify=True)
        except (CorruptShard, IndexIncomplete) as e:
            return str(e)
        return None

    def shard_marker(self, index: int, profile: str | None = None) -> dict:
        """A complete shard's marker ({"rows", "checksum", "checksums"?}: per-array checksums
        in new builds); CorruptShard when its metadata is unreadable, IndexIncomplete when it
        has no marker."""
        where = self._where(index, profile)
        try:
            marker = self._shards(profile)[shard_name(index)].attrs.get(COMPLETE_KEY)
        except Exception as e:  # noqa: BLE001 - missing or unreadable metadata
            raise CorruptShard(f"{where}: missing or unreadable ({e})") from None
        if not marker:
            raise IndexIncomplete(f"{where} is incomplete")
        return marker

    def _where(self, index: int, profile: str | None) -> str:
        return f"{self.url}: {'profile ' + profile + ' ' if profile else ''}shard " \
               f"{shard_name(index)}"

    def load_vectors(self, index: int, profile: str | None = None,
                     verify: bool = True) -> np.ndarray:
        """A complete shard's vectors as stored ([rows, d] float16, or bfloat16 bits as
        uint16), read once. ``verify``: checked against the marker's checksum of the vectors
        as they are read; a shard written before per-array checksums (tda 0.1.0) is verified
        whole (every array read). CorruptShard names the shard and the problem."""
        where = self._where(index, profile)
        marker = self.shard_marker(index, profile)
        if verify and "vectors" not in marker.get("checksums", {}):
            return self.read_stored(index, ("vectors",), profile, verify=True)["vectors"]
        try:
            stored = self._shards(profile)[shard_name(index)]["vectors"][:]
        except Exception as e:  # noqa: BLE001 - codec/decompression/shape errors
            raise CorruptShard(f"{where}: unreadable ({type(e).__name__}: {e})") from None
        if verify:
            if len(stored) != marker["rows"]:
                raise CorruptShard(f"{where}: vectors has {len(stored)} rows, the marker says "
                                   f"{marker['rows']}")
            if checksum({"vectors": stored}) != marker["checksums"]["vectors"]:
                raise CorruptShard(f"{where}: checksum mismatch (the data changed after it "
                                   f"was written)")
        return stored

    def read_rows(self, index: int, field: str, rows: np.ndarray,
                  profile: str | None = None) -> np.ndarray:
        """``field`` at ``rows`` (positions in the shard) of a complete shard: strings as an
        object array, numbers as stored (vectors: see read_vector_rows). Decodes only the
        chunks holding those rows."""
        rows = np.asarray(rows, dtype=np.int64)
        arr = self.shard_array(index, field, profile)
        try:
            return arr.oindex[rows] if rows.size else arr[:0]
        except Exception as e:  # noqa: BLE001 - codec/decompression/shape errors
            raise CorruptShard(f"{self._where(index, profile)}: {field} unreadable "
                               f"({type(e).__name__}: {e})") from None

    def chunk_rows(self, index: int, field: str, profile: str | None = None) -> int:
        """Rows per chunk of the one-dimensional array ``field`` of a complete shard."""
        lay = self._chunk_layout(index, field, profile)
        return lay.chunk_rows if lay is not None else \
            int(self.shard_array(index, field, profile).chunks[0])

    def read_chunk(self, index: int, field: str, c: int, profile: str | None = None) -> np.ndarray:
        """Chunk ``c`` of the one-dimensional array ``field`` (ids, doc_ids, text, n_tokens,
        loss, norm) of a complete shard: strings as an object array. Local shards are read
        straight from the chunk file (store/chunks.py), others through Zarr. CorruptShard
        when it does not decode."""
        lay = self._chunk_layout(index, field, profile)
        try:
            if lay is not None:
                return chunks.read(lay, c)
            arr = self.shard_array(index, field, profile)
            size = int(arr.chunks[0])
            return np.asarray(arr[c * size:(c + 1) * size])
        except Exception as e:  # noqa: BLE001 - codec/decompression/shape errors
            raise CorruptShard(f"{self._where(index, profile)}: {field} chunk {c} unreadable "
                               f"({type(e).__name__}: {e})") from None

    def _chunk_layout(self, index: int, field: str, profile: str | None):
        """store/chunks.py's layout of a complete local shard's array, or None (Zarr reads)."""
        key = (index, field, profile)
        cache = self.__dict__.setdefault("_chunk_layouts", {})
        if key not in cache:
            group = self._complete_local_shard(index, profile)
            lay = chunks.layout(group / field) if group is not None else None
            if lay is None:
                self.shard_array(index, field, profile)     # an incomplete shard is an error
            cache[key] = lay
        return cache[key]

    def _complete_local_shard(self, index: int, profile: str | None) -> Path | None:
        """The directory of shard ``index`` when the index is local and the shard's own
        zarr.json marks it complete (read once per shard), else None."""
        key = (index, profile)
        cache = self.__dict__.setdefault("_complete_local", {})
        if key not in cache:
            path = local_path(self.url)
            group = None if path is None else \
                path / self._group_path(profile) / shard_name(index)
            cache[key] = group if group is not None and \
                chunks.attributes(group).get(COMPLETE_KEY) else None
        return cache[key]

    def read_vector_rows(self, index: int, rows: np.ndarray,
                         profile: str | None = None) -> np.ndarray:
        """Stored vector rows [len(rows), d] (storage dtype) of a complete shard (see
        ``read_vectors_into``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        locs = np.stack([np.full(rows.size, index, np.int64), rows], axis=1)
        out = np.empty((rows.size, self.manifest.dim),
                       dtype=stored_dtype(self.manifest.layout.storage_dtype))
        self.read_vectors_into(locs, out, profile)
        return out

    def read_vectors_into(self, locs: np.ndarray, out: np.ndarray,
                          profile: str | None = None) -> None:
        """``out[i]`` = the stored vector of ``locs[i]`` = (shard, row); ``locs`` [n, 2] int,
        ``out`` [n, d] in the storage dtype, C-contiguous. Raw local shards (``vector_codec``
        raw) are read with one ``pread`` of d values per row (os.open / os.preadv / os.close,
        no Python file object: about 10-15 us a row from the page cache, the syscalls outside
        the interpreter lock); others through Zarr, shard by shard."""
        locs = np.asarray(locs, dtype=np.int64)
        view = out.view(np.uint8).reshape(len(out), -1)
        row_bytes = view.shape[1]
        through_zarr: dict[int, list[int]] = {}
        for i, (shard, row) in enumerate(locs.tolist()):
            raw = self._raw_layout(shard, profile)
            if raw is None:
                through_zarr.setdefault(shard, []).append(i)
                continue
            c, within = divmod(row, raw[1])
            try:
                fd = os.open(f"{raw[0]}/{c}/0", os.O_RDONLY)
            except FileNotFoundError:        # Zarr leaves out chunks equal to the fill value
                out[i] = 0
                continue
            try:
                got = os.preadv(fd, [view[i]], within * row_bytes)
            finally:
                os.close(fd)
            if got != row_bytes:
                raise CorruptShard(f"{self._where(shard, profile)}: vectors chunk {c} is "
                                   f"truncated")
        for shard, idx in through_zarr.items():
            out[idx] = self.read_rows(shard, "vectors", locs[idx, 1], profile)

    def _raw_layout(self, index: int, profile: str | None):
        """(chunk directory, rows per chunk, d, dtype) when a complete shard's vectors are
        stored as raw little-endian chunks in a local directory (store/chunks.py reads its
        zarr.json, without opening the array through Zarr), else None (read through Zarr);
        IndexIncomplete for an unfinished shard."""
        key = (index, profile)
        cache = self.__dict__.setdefault("_raw_layouts", {})
        if key not in cache:
            group = self._complete_local_shard(index, profile)
            lay = chunks.vector_layout(group / "vectors") if group is not None else None
            if lay is None:
                self.shard_array(index, "vectors", profile)   # an incomplete shard is an error
            cache[key] = lay
        return cache[key]

    def shard_array(self, index: int, field: str, profile: str | None = None):
        """The lazy Zarr array ``field`` of a complete shard (for block-wise reads)."""
        g = self._shards(profile)[shard_name(index)]
        if not g.attrs.get(COMPLETE_KEY):
            raise IndexIncomplete(f"{self.url}: shard {shard_name(index)} is incomplete")
        return g[field]

    def decode_vectors(self, stored: np.ndarray) -> np.ndarray:
        """Stored vector rows [n, d] -> float32."""
        return from_storage(stored, self.manifest.layout.storage_dtype)

    # ---------------------------------------------------------------- corpus scan
    def write_scan(self, arrays: dict[str, np.ndarray], record: dict) -> None:
        """Store the corpus scan: per-shard int64 ``arrays`` and its ``record`` (JSON), the
        record last (store/layout.py)."""
        _delete(self.root, SCAN)
        g = self.root.create_group(SCAN)
        for name, values in arrays.items():
            values = np.asarray(values, np.int64)
            a = g.create_array(name, shape=values.shape, dtype="int64",
                               chunks=(max(1, min(1 << 16, len(values))),))
            a[:] = values
        crash_point("scan")
        g.attrs[COMPLETE_KEY] = record

    def read_scan(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, record) of the stored corpus scan, or None when there is none whole."""
        try:
            g = self.root[SCAN]
            record = g.attrs.get(COMPLETE_KEY)
            if not record:
                return None
            return {name: g[name][:] for name in g.array_keys()}, dict(record)
        except Exception:  # noqa: BLE001 - missing or unreadable: scan again
            return None

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
                    arr = g.create_array(f"{block_name(i)}_{part}", shape=tuple(t.shape),
                                         dtype="float64", compressors=compressor())
                    arr[:] = t.double().numpy()
            crash_point("moments")
        g.attrs[COMPLETE_KEY] = {"names": names, "source": moments.source,
                                 "optimizer": moments.optimizer, "extra": moments.extra,
                                 "epsilon": moments.epsilon}

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
            parts = {part: torch.from_numpy(g[f"{block_name(i)}_{part}"][:])
                     for part in ("full", "row", "col") if f"{block_name(i)}_{part}" in g}
            moments[name] = Moment(**parts)
        return SecondMoments(moments, source=meta["source"], optimizer=meta["optimizer"],
                             extra=meta.get("extra", {}), epsilon=meta.get("epsilon", {}))

    # ---------------------------------------------------------------- profiles
    def profile_names(self) -> list[str]:
        """Every profile present, complete or not."""
        return sorted(self.root[PROFILES].group_keys()) if PROFILES in self.root else []

    def profile(self, name: str):
        """The stored profile ``name`` (a ``store.profiles.StoredProfile``), or None."""
        from tda.store.profiles import StoredProfile
        try:
            return StoredProfile(self, name, self.root[f"{PROFILES}/{name}"])
        except KeyError:
            return None

    def create_profile(self, name: str, settings: dict):
        """A new, empty profile recording ``settings`` (an existing one is replaced)."""
        from tda.store.profiles import StoredProfile
        self.delete_profile(name)
        group = self.root.require_group(PROFILES).create_group(name)
        profile = StoredProfile(self, name, group)
        profile.settings = settings
        return profile

    def delete_profile(self, name: str) -> None:
        """Remove profile ``name`` and its shards, if it exists."""
        if self.profile(name) is not None:
            del self.root[f"{PROFILES}/{name}"]

    # ---------------------------------------------------------------- BM25
    @property
    def bm25_path(self) -> Path | None:
        """Where the Lucene index lives (local indexes), else None."""
        return self.local_path / BM25_DIR if self.local_path else None

    @property
    def bm25_status(self) -> dict | None:
        """{"complete": True, "documents": N} once BM25 is built, else None."""
        return self.root.attrs.get(BM25_KEY)

    def set_bm25_status(self, status: dict) -> None:
        """Record that BM25 is built (``{"complete": True, "documents": N}``)."""
        self.root.attrs[BM25_KEY] = status


def _delete(group: zarr.Group, name: str) -> None:
    """Remove member ``name`` of ``group`` and everything under it, by its keys in the store:
    works for a member whose metadata no longer parses."""
    sync(group.store.delete_dir(f"{group.path}/{name}" if group.path else name))
