"""Where a model comes from: a local directory, a PEFT adapter directory on a base model, or a
Hugging Face Hub id already in the local cache (resolved offline, ``local_files_only``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tda.errors import ConfigError, ModelMissing

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ModelSource:
    """``path``: the model (or adapter) directory; ``base``: the base model's directory when
    ``path`` holds a PEFT adapter; ``given``: what the user wrote (a path or a Hub id)."""

    path: Path
    given: str
    base: Path | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None

    def describe(self) -> dict:
        """What a manifest records of the source."""
        out = {"path": str(self.path.resolve()), "given": self.given}
        if self.base is not None:
            out["base_model"] = str(self.base.resolve())
        return out


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of a Hub id, or None when it is not cached."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/")) or not repo_id.strip():
        return None
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, invalid id, no hub library: not found
        return None


def _cache_dir() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")


def _directory(given: str, what: str) -> Path:
    path = Path(given).expanduser()
    if path.is_dir():
        return path
    snapshot = _hub_snapshot(given)
    if snapshot is not None:
        return snapshot
    raise ModelMissing(f"{what} {given!r} is neither a directory nor a Hugging Face Hub id in "
                        f"the local cache ({_cache_dir()}); download it first (hf download "
                        f"{given}) or pass a local directory")


def resolve_model(given: str | Path, base_model: str | Path | None = None) -> ModelSource:
    """The directories behind ``--model`` (and ``--base-model``). An adapter directory
    (``adapter_config.json``) needs its base: ``base_model``, else the one its config names
    (``base_model_name_or_path``), itself a directory or a cached Hub id."""
    path = _directory(str(given), "model")
    adapter = path / ADAPTER_CONFIG
    if not adapter.is_file():
        if not (path / "config.json").is_file():
            raise ModelMissing(f"{path}: not a model directory (no config.json or "
                                f"{ADAPTER_CONFIG})")
        if base_model is not None:
            raise ConfigError(f"{path}: --base-model is only for a PEFT adapter directory "
                             f"(this one has no {ADAPTER_CONFIG})")
        return ModelSource(path, str(given))
    named = base_model or json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not named:
        raise ModelMissing(f"{adapter}: a PEFT adapter that names no base model; pass "
                            f"--base-model DIR")
    try:
        base = _directory(str(named), "base model")
    except ModelMissing as e:
        raise ModelMissing(f"{path}: PEFT adapter without its base model: {e}; pass "
                            f"--base-model DIR") from None
    if not (base / "config.json").is_file():
        raise ModelMissing(f"{base}: the adapter's base model directory has no config.json")
    return ModelSource(path, str(given), base)
