"""Where an index is: a local path, or an fsspec URL Zarr supports."""
from __future__ import annotations

import shutil
from pathlib import Path


def is_local(url: str | Path) -> bool:
    """True for a plain path or a file:// URL; False for any other fsspec URL (s3://, ...)."""
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str | Path) -> Path | None:
    """The local directory of a local index, else None."""
    if not is_local(url):
        return None
    return Path(str(url).removeprefix("file://"))


def remove(url: str | Path) -> None:
    """Delete whatever is at ``url`` (a directory tree, local or remote)."""
    path = local_path(url)
    if path is None:
        import fsspec
        fs, remote = fsspec.core.url_to_fs(str(url))
        if fs.exists(remote):
            fs.rm(remote, recursive=True)
    elif path.exists():
        shutil.rmtree(path)
