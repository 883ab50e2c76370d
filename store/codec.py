"""How values are stored: vector dtypes, compression, and the checksum of a shard."""
from __future__ import annotations

import hashlib

import numpy as np
import zarr


def compressor() -> list:
    """The codec of vector and moment arrays: Blosc zstd level 3 with bit shuffling."""
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


def array_checksums(arrays: dict[str, np.ndarray | list]) -> dict[str, str]:
    """Per-array checksums ({name: checksum({name: values})}), stored in a shard's marker
    beside the shard's: what a reader that loads only some arrays (the searcher: vectors)
    checks as it reads them."""
    return {name: checksum({name: values}) for name, values in arrays.items()}


def stored_dtype(storage_dtype: str) -> np.dtype:
    """numpy dtype of stored vectors: float16, float32, or uint16 holding bfloat16 bits."""
    return np.dtype({"bfloat16": np.uint16, "float32": np.float32}.get(storage_dtype,
                                                                          np.float16))


def to_storage(vectors: np.ndarray, storage_dtype: str) -> np.ndarray:
    """float32 [n, d] -> stored array: float16, float32, or bfloat16 bits as uint16."""
    if storage_dtype == "float32":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if storage_dtype == "float16":
        return vectors.astype(np.float16)
    import torch
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)) \
        .to(torch.bfloat16).view(torch.uint16).numpy()


def from_storage(stored: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Stored array [n, d] -> float32."""
    if storage_dtype in ("float16", "float32"):
        return stored.astype(np.float32)
    import torch
    return torch.from_numpy(np.ascontiguousarray(stored)).view(torch.bfloat16).float().numpy()
