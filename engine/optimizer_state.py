"""Optimizer state files: finding, reading (``torch.load``) and naming their parameters.

The one place that opens an optimizer state: the second moments (engine/second_moments.py)
and tail-patch (evaluation/tailpatch.py) both read through it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from tda.errors import OptimizerStateError, OptimizerStateMissing

OWN_FILE = "tda_second_moments.pt"
TRAINER_FILE = "optimizer.pt"
DCP_METADATA = ".metadata"              # a torch.distributed.checkpoint directory's index
ACCELERATE_DCP_DIR = "optimizer_0"      # accelerate's sharded (DCP) optimizer state


def find_state_file(path: str | Path, names: tuple[str, ...] = (OWN_FILE, TRAINER_FILE),
                    dcp: bool = False) -> Path:
    """``path`` itself when it is a file, else the first of ``names`` in directory ``path``;
    with ``dcp``, also a torch.distributed.checkpoint directory (``path`` itself, or the HF
    Trainer's ``optimizer_0/`` under FSDP), returned as the directory. OptimizerStateMissing
    (a FileNotFoundError) when there is none."""
    path = Path(path)
    if path.is_dir():
        if dcp and (path / DCP_METADATA).is_file():
            return path
        for name in names:
            if (path / name).is_file():
                return path / name
        if dcp and (path / ACCELERATE_DCP_DIR / DCP_METADATA).is_file():
            return path / ACCELERATE_DCP_DIR
        also = f", or a torch.distributed.checkpoint directory with {DCP_METADATA}" if dcp \
            else ""
        raise OptimizerStateMissing(f"{path}: no optimizer state ({' or '.join(names)}{also})")
    if not path.is_file():
        raise OptimizerStateMissing(f"{path}: optimizer state file not found")
    return path


def has_state_file(directory: str | Path) -> bool:
    """Whether a model directory holds an optimizer state tda reads (a file, or the HF
    Trainer's sharded ``optimizer_0/`` checkpoint)."""
    d = Path(directory)
    return any((d / name).is_file() for name in (OWN_FILE, TRAINER_FILE)) or \
        (d / ACCELERATE_DCP_DIR / DCP_METADATA).is_file()


def read_state(file: str | Path, device: str | torch.device = "cpu"):
    """``torch.load`` of an optimizer state (weights only), memory-mapped when the file is a
    zip archive (any torch >= 1.6 save), so a large state is read one tensor at a time.
    OptimizerStateError naming the file when it cannot be read."""
    file = Path(file)
    try:
        return torch.load(file, map_location=device, weights_only=True,
                          mmap=zipfile.is_zipfile(file))
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise OptimizerStateError(f"{file}: cannot read optimizer state: "
                                  f"{' '.join(str(e).split())[:300]}") from e


def is_state_dict(blob) -> bool:
    """An ``optimizer.state_dict()``: a dict with 'state' and 'param_groups'."""
    return isinstance(blob, dict) and "state" in blob and "param_groups" in blob


def param_names(blob: dict, model: nn.Module, file: str | Path) -> dict:
    """Map an optimizer state_dict's parameter ids to canonical parameter names: the groups'
    own ``param_names`` when recorded (an optimizer built from named parameters), else the
    model's parameter order (one group) or the HF Trainer's decay/no-decay grouping (two
    groups), whichever matches every shape. OptimizerStateError naming ``file`` otherwise."""
    groups = blob["param_groups"]
    if all("param_names" in g for g in groups):
        return {pid: name for g in groups for pid, name in zip(g["params"], g["param_names"])}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids = [pid for g in groups for pid in g["params"]]
    candidates = []
    if len(groups) == 1:
        candidates.append(("model parameter order", [n for n, _ in params]))
    if len(groups) == 2:
        for rule, decay in _trainer_decay_rules(model):
            if len(groups[0]["params"]) == sum(n in decay for n, _ in params):
                candidates.append((f"HF Trainer decay/no-decay groups ({rule})",
                                   [n for n, _ in params if n in decay] +
                                   [n for n, _ in params if n not in decay]))
    shapes = {n: tuple(p.shape) for n, p in params}
    problems = []
    for how, order in candidates:
        if len(order) != len(ids):
            problems.append(f"{how}: the model has {len(order)} trainable parameters, "
                            f"the state {len(ids)}")
            continue
        mapping = dict(zip(ids, order))
        # expert banks first: a different expert count also changes the routers' shapes, and
        # the banks say it plainly
        bad = next(((n, s) for pid, n in sorted(mapping.items(),
                                                key=lambda kv: len(shapes[kv[1]]) != 3)
                    for s in [_state_shape(blob["state"].get(pid))]
                    if s is not None and s != shapes[n]), None)
        if bad is None:
            return mapping
        want, got = list(shapes[bad[0]]), list(bad[1])
        if len(want) == len(got) == 3 and want[1:] == got[1:]:
            problems.append(f"{how}: parameter {bad[0]!r} has {want[0]} experts, the state's "
                            f"entry {got[0]}")
        else:
            problems.append(f"{how}: parameter {bad[0]!r} has shape {want}, the state's "
                            f"entry {got}")
    detail = "; ".join(problems) or f"{len(groups)} parameter groups and no 'param_names'"
    raise OptimizerStateError(f"{file}: optimizer state does not match the model ({detail})")


def _state_shape(st: dict | None) -> tuple | None:
    if not st:
        return None
    if "exp_avg_sq" in st:
        return tuple(st["exp_avg_sq"].shape)
    if "exp_avg_sq_row" in st:
        return tuple(st["exp_avg_sq_row"].shape) + tuple(st["exp_avg_sq_col"].shape[-1:])
    if st.get("row_var") is not None and st["row_var"].dim() >= 2:
        return tuple(st["row_var"].shape[:-1]) + tuple(st["col_var"].shape[-1:])
    return None


def _trainer_decay_rules(model: nn.Module) -> list[tuple[str, set[str]]]:
    """Candidate sets of the parameter names the HF Trainer put in its weight-decay group
    (the rule changed across transformers versions); the caller keeps the one whose group
    sizes and shapes match the state."""
    from transformers.trainer_pt_utils import get_parameter_names

    rules = [("biases and norms excluded", get_parameter_names(
        model, [nn.LayerNorm],
        [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"])),
        ("biases, LayerNorm/RMSNorm names excluded", get_parameter_names(
            model, [nn.LayerNorm], ["bias", "layernorm", "rmsnorm"])),
        ("matrices only", [n for n, p in model.named_parameters() if p.dim() >= 2])]
    return [(name, set(names)) for name, names in rules]
