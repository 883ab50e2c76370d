"""Names in an index directory (Zarr v3). The format, in one picture::

    zarr.json                 group attributes: {"tda": manifest, "bm25": {...} once built}
    shards/<NNNNNN>/          one per block of ``shard_size`` consecutive examples of the corpus
                              (schema 1: of ``shard_size`` consecutive documents)
        vectors  [rows, d]    float16 (or bfloat16 stored as uint16), unit rows
        ids      [rows]       example ids: DOCID, or DOCID#N for chunk N of a long document
        doc_ids  [rows]       the document each row came from
        text     [rows]       the example's text
        n_tokens [rows] int32, loss [rows] float32 (nats), norm [rows] float32 (before normalizing)
        attributes "complete": {"rows", "checksum", "checksums", "seconds"} written last: a
        shard without it does not exist ("seconds": the build's wall time for it, absent in
        schema 1; "checksums": one per array in new builds, so a reader of only the vectors
        checks them as it reads them). Vectors are raw little-endian chunks of ROW_CHUNK rows
        (manifest layout.vector_codec "raw": a row is one small read) or Blosc (tda 0.1.0);
        string arrays in chunks of about TEXT_CHUNK_BYTES of text.
    rows/                     the id -> (shard, row) table (store/rowtable.py): key [n] uint64
                              (sorted BLAKE2b-64 of the ids), loc [n] int64 (shard << 32 | row);
        attributes "complete": {"rows", "source"} written last (source: digest of the shard
        markers it was built from; a table older than its shards is never used)
    ann/<key>/                a compressed ANN index of a shard group (searcher/ann.py):
        index.faiss, then marker.json {"format", "source", ...} written last
    second_moments/           the optimizer second moments V the vectors were corrected with:
        <IIIII>_<part>        part full [rows, cols], or row [rows] and col [cols], float64;
                              IIIII indexes the sorted parameter names
        attributes "complete": {"names", "source", "optimizer", "extra"} written last
    scan/                     the corpus scan (indexer/scan.py), so a resume does not rescan:
        source, position, line, chunk, tokens  [shards] int64: where each shard's first
                              example is (file index, byte offset or row, 1-based line, chunk of
                              that document) and the shard's tokens
        attributes "complete": {"files": [{name, size, mtime_ns, fingerprint}], "key": {...},
                              "documents", "examples", "tokens", "empty", "bad", ...} last
    bm25/                     Lucene index over the same ids (local indexes only)
    profiles/<name>/          a correction profile (store/profiles.py)
        attributes "settings" (first), "transform" (once the blocks are stored), "complete"
        transform/<IIIII>     R^-1/2 of tracked weight IIIII, [d_b, d_b] float32
        shards/<NNNNNN>/vectors   every example's vector transformed, with its own marker
    .<name>.tda-lock          beside the index: the writer lock (store/lock.py)

The manifest (schemas/index.py) is written once, in the same write that creates the group.
"""
from __future__ import annotations

MANIFEST_KEY = "tda"
BM25_KEY = "bm25"
COMPLETE_KEY = "complete"
SETTINGS_KEY = "settings"
TRANSFORM_KEY = "transform"
SHARDS = "shards"
BM25_DIR = "bm25"
PROFILES = "profiles"
MOMENTS = "second_moments"
SCAN = "scan"
TRANSFORM = "transform"
ROW_ARRAYS = ("vectors", "ids", "doc_ids", "text", "n_tokens", "loss", "norm")
ROW_CHUNK = 1024
TEXT_CHUNK_BYTES = 1 << 16   # string arrays: about this many bytes of text per chunk, so a
                             # row read decodes ~64 KB, however long the examples are
ROWS = "rows"
ANN_DIR = "ann"
VECTOR_CODECS = ("raw", "blosc-zstd")


def text_chunk_rows(values: list[str]) -> int:
    """Rows per chunk of a string array: a power of two in [16, ROW_CHUNK] holding about
    TEXT_CHUNK_BYTES of UTF-8 (the mean over ``values``)."""
    mean = max(1.0, sum(len(v) for v in values) / max(1, len(values)))
    rows = 16
    while rows < ROW_CHUNK and rows * 2 * mean <= TEXT_CHUNK_BYTES:
        rows *= 2
    return rows


def shard_name(index: int) -> str:
    """Shard ``index``'s group name: six digits."""
    return f"{index:06d}"


def block_name(index: int) -> str:
    """The array name of a numbered part (moments, profile blocks): five digits."""
    return f"{index:05d}"
