"""One chunk of a one-dimensional Zarr v3 array read straight from a local directory: a file
read and the codecs' decode, without Zarr's asynchronous machinery.

Through Zarr, opening a shard's array and reading one chunk costs ~2.4 ms of event-loop hops
and metadata objects, and concurrent reads queue on Zarr's one loop thread; a search's snippets
are ~30 such chunks (10 hits x ids, doc ids, texts) in ~30 shards. Here the array's
``zarr.json`` is parsed once and a chunk is one ``open``/``read`` plus Zstandard and
variable-length UTF-8 (or fixed-size little-endian) decoding, on the caller's thread.

Only what ``IndexStore`` writes is read this way (a local directory, the default chunk key
encoding with "/", a regular grid, codecs ``bytes`` or ``vlen-utf8`` then optionally ``zstd``);
``layout`` returns None for anything else and the caller reads through Zarr.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numcodecs import VLenUTF8, Zstd

ARRAY_TO_BYTES = ("bytes", "vlen-utf8")
BYTES_TO_BYTES = ("zstd",)
_ZSTD, _VLEN_UTF8 = Zstd(), VLenUTF8()          # stateless codecs, made once


@dataclass(frozen=True)
class ChunkLayout:
    """Where and how one array's chunks are stored: ``directory`` (holding ``c/0``, ``c/1``,
    ...), ``rows`` (the array's length), ``chunk_rows`` (rows per chunk), ``dtype`` (object for
    strings), ``serializer`` ('bytes' or 'vlen-utf8'), ``zstd`` (compressed), ``fill`` (the
    value of a chunk Zarr left unwritten)."""

    directory: Path
    rows: int
    chunk_rows: int
    dtype: np.dtype
    serializer: str
    zstd: bool
    fill: object


def attributes(node_dir: Path) -> dict:
    """The attributes of the Zarr v3 node stored in ``node_dir`` ({} when unreadable)."""
    try:
        meta = json.loads((node_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def _plain_meta(array_dir: Path, ndim: int) -> dict | None:
    """The zarr.json of the array in ``array_dir`` when it is a Zarr v3 array of ``ndim``
    dimensions on a regular grid with the default "/" chunk keys and no storage transformers
    (the only kind read here), else None."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
        enc = meta["chunk_key_encoding"]
        if (meta.get("zarr_format") != 3 or len(meta["shape"]) != ndim
                or meta["chunk_grid"]["name"] != "regular" or enc["name"] != "default"
                or enc.get("configuration", {}).get("separator", "/") != "/"
                or meta.get("storage_transformers") or not meta["codecs"]):
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def layout(array_dir: Path) -> ChunkLayout | None:
    """The layout of the one-dimensional array stored in ``array_dir``, or None when it is not
    one this module reads (the caller then goes through Zarr)."""
    meta = _plain_meta(array_dir, 1)
    if meta is None:
        return None
    try:
        codecs = meta["codecs"]
        if (codecs[0]["name"] not in ARRAY_TO_BYTES
                or any(c["name"] not in BYTES_TO_BYTES for c in codecs[1:]) or len(codecs) > 2):
            return None
        serializer = codecs[0]["name"]
        if serializer == "vlen-utf8":
            if meta["data_type"] != "string":
                return None
            dtype = np.dtype(object)
        else:
            endian = codecs[0].get("configuration", {}).get("endian", "little")
            dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
        return ChunkLayout(array_dir / "c", int(meta["shape"][0]),
                           int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]), dtype,
                           serializer, len(codecs) == 2, meta.get("fill_value"))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def vector_layout(array_dir: Path) -> tuple[str, int, int, np.dtype] | None:
    """(chunk directory, rows per chunk, d, dtype) of the two-dimensional array stored in
    ``array_dir`` when each row is d raw little-endian values at ``row * d * itemsize`` of
    its chunk file (chunks span whole rows, codec ``bytes`` alone), else None."""
    meta = _plain_meta(array_dir, 2)
    if meta is None:
        return None
    try:
        shape, codecs = meta["shape"], meta["codecs"]
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if (chunk[1] != shape[1] or len(codecs) != 1 or codecs[0]["name"] != "bytes"
                or codecs[0].get("configuration", {}).get("endian", "little") != "little"):
            return None
        return (str(array_dir / "c"), int(chunk[0]), int(shape[1]),
                np.dtype(meta["data_type"]).newbyteorder("<"))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def read(lay: ChunkLayout, c: int) -> np.ndarray:
    """Chunk ``c`` of the array: its rows [min(chunk_rows, rows - c * chunk_rows)], strings as
    an object array. ValueError when the stored bytes do not decode to a whole chunk."""
    n = min(lay.chunk_rows, lay.rows - c * lay.chunk_rows)
    if n <= 0:
        raise ValueError(f"chunk {c} is beyond the array's {lay.rows} rows")
    try:
        data = (lay.directory / str(c)).read_bytes()
    except FileNotFoundError:                  # Zarr leaves out chunks equal to the fill value
        return np.full(n, lay.fill, dtype=lay.dtype)
    if lay.zstd:
        data = _ZSTD.decode(data)
    if lay.serializer == "vlen-utf8":
        values = _VLEN_UTF8.decode(data)
    else:
        values = np.frombuffer(data, dtype=lay.dtype)
    if len(values) != lay.chunk_rows:
        raise ValueError(f"chunk {c} holds {len(values)} values, not {lay.chunk_rows}")
    return values[:n]
