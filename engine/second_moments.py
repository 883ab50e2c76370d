"""Optimizer second moments V per parameter: loading, factoring, estimating.

Every moment is kept in its parameter's own storage shape, keyed by the canonical parameter name
(``model.named_parameters()``). Adam/AdamW ``exp_avg_sq`` is stored in full ([rows, cols]) and
bias-corrected; Adafactor keeps row and column factors only. ``factors()`` gives the row/column
means that the factored correction uses, whichever form is held.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from tda.engine.optimizer_state import find_state_file, is_state_dict, param_names, read_state
from tda.errors import OptimizerStateError
from tda.schemas.config import DEFAULT_EPSILON

OWN_FORMAT = "tda.second_moments/1"


@dataclass
class Moment:
    """V for one matrix parameter in storage shape [rows, cols], or for an expert bank
    [experts, rows, cols] (each expert its own matrix): ``full`` or factors ``row`` [..., rows]
    (mean over columns) and ``col`` [..., cols] (mean over rows)."""

    full: torch.Tensor | None = None
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row means [..., rows], column means [..., cols], overall mean [...]), float64:
        V ~= row col^T / mean, per expert for a bank."""
        if self.full is not None:
            v = self.full.double()
            return v.mean(-1), v.mean(-2), v.mean((-2, -1))
        row, col = self.row.double(), self.col.double()
        return row, col, row.mean(-1)

    def factored(self) -> "Moment":
        """The same moment as row and column means only (what the factored correction uses)."""
        return self if self.full is None else Moment(row=self.full.mean(-1),
                                                     col=self.full.mean(-2))

    def dense(self) -> torch.Tensor:
        """V as [..., rows, cols] (Adafactor's V = row col^T / mean(row)), float64."""
        if self.full is not None:
            return self.full.double()
        row, col, mean = self.factors()
        return row.unsqueeze(-1) * col.unsqueeze(-2) / mean.clamp_min(1e-300)[..., None, None]

    @property
    def shape(self) -> tuple[int, ...]:
        """The parameter's storage shape ([experts,] rows, cols)."""
        if self.full is not None:
            return tuple(self.full.shape)
        return tuple(self.row.shape) + (self.col.shape[-1],)


@dataclass
class SecondMoments:
    """Second moments for a model's parameters, and where they came from."""

    moments: dict[str, Moment]
    source: str
    optimizer: str = "adam"
    extra: dict = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)   # param-group eps per parameter

    def __getitem__(self, param_name: str) -> Moment:
        try:
            return self.moments[param_name]
        except KeyError:
            raise OptimizerStateError(f"optimizer state has no second moment for parameter "
                                      f"{param_name!r} ({self.source})") from None

    def factored(self) -> "SecondMoments":
        """A copy holding only row/column means."""
        return SecondMoments({n: m.factored() for n, m in self.moments.items()}, self.source,
                             self.optimizer, dict(self.extra), dict(self.epsilon))

    def check_against(self, model: nn.Module, param_names: Iterable[str]) -> None:
        """Raise OptimizerStateError naming the first parameter that is missing or has the
        wrong shape."""
        params = dict(model.named_parameters())
        # expert banks first: a different expert count also changes the routers' shapes, and
        # the banks say it plainly
        for name in sorted(param_names, key=lambda n: params[n].dim() != 3):
            if name not in self.moments:
                raise OptimizerStateError(f"optimizer state {self.source} does not match the "
                                          f"model: no second moment for parameter {name!r}")
            want = tuple(params[name].shape)
            got = self.moments[name].shape
            if len(want) == 3 and len(got) == 3 and want[1:] == got[1:] and want[0] != got[0]:
                raise OptimizerStateError(f"optimizer state {self.source} does not match the "
                                          f"model: parameter {name!r} has {want[0]} experts, "
                                          f"its second moment {got[0]}")
            if got != want:
                raise OptimizerStateError(f"optimizer state {self.source} does not match the "
                                          f"model: parameter {name!r} has shape {list(want)}, "
                                          f"its second moment {list(got)}")

    def save(self, path: str | Path) -> None:
        """Write the name-keyed tda format (``tda_second_moments.pt``)."""
        state = {n: {k: v for k, v in vars(m).items() if v is not None}
                 for n, m in self.moments.items()}
        torch.save({"format": OWN_FORMAT, "optimizer": self.optimizer, "source": self.source,
                    "extra": self.extra, "epsilon": self.epsilon, "moments": state}, Path(path))


def load_second_moments(path: str | Path, model: nn.Module,
                        factors_only: bool = False) -> SecondMoments:
    """Read second moments saved next to a model.

    ``factors_only`` keeps only each full moment's row and column means (what the factored
    correction needs): the file is memory-mapped and reduced one parameter at a time, so an
    8B model's optimizer state never sits in memory whole.

    ``path`` is a file or a directory holding one of:
    - ``tda_second_moments.pt``: the name-keyed tda format (``SecondMoments.save``);
    - ``optimizer.pt`` or any ``torch.save(optimizer.state_dict())``: Adam/AdamW (``exp_avg_sq``,
      2-D or an expert bank's 3-D), transformers' Adafactor (``exp_avg_sq_row``/``_col``) or
      torch.optim.Adafactor (``row_var``/``col_var``); integer parameter ids are mapped back to
      names through ``param_names`` when the optimizer was built from named parameters, else
      through the model's parameter order (one group) or the HF Trainer's decay/no-decay
      grouping (two groups);
    - a torch.distributed.checkpoint (DCP) directory (``.metadata`` + ``*.distcp``), as FSDP
      writes with ``dcp.save({"optim": get_optimizer_state_dict(model, optimizer)})``: keyed by
      parameter names, read one tensor at a time.
    Each parameter's epsilon is its param group's ``eps``.
    """
    file = find_state_file(path, dcp=True)
    if file.is_dir():
        return _load_dcp(file, model, factors_only)
    blob = read_state(file)
    if isinstance(blob, dict) and blob.get("format") == OWN_FORMAT:
        moments = {n: _reduce(Moment(**{k: t.double() for k, t in m.items()}), factors_only)
                   for n, m in blob["moments"].items()}
        return SecondMoments(moments, source=blob.get("source") or str(file),
                             optimizer=blob["optimizer"], extra=blob.get("extra", {}),
                             epsilon=blob.get("epsilon", {}))
    if not is_state_dict(blob):
        raise OptimizerStateError(f"{file}: not an optimizer state_dict (no 'state'/"
                                  f"'param_groups') and not the {OWN_FORMAT} format")
    names = param_names(blob, model, file)
    moments: dict[str, Moment] = {}
    epsilon: dict[str, float] = {}
    kinds = set()
    for pid, name in names.items():
        st = blob["state"].get(pid)
        if not st:
            continue
        group = next(g for g in blob["param_groups"] if pid in g["params"])
        found = moment_from_state(st, group, factors_only)
        if found is not None:
            moments[name], kind, epsilon[name] = found
            kinds.add(kind)
    if not moments:
        raise OptimizerStateError(f"{file}: optimizer state holds no matrix second moments "
                                  f"(exp_avg_sq, exp_avg_sq_row/col or row_var/col_var)")
    return SecondMoments(moments, source=str(file), optimizer="+".join(sorted(kinds)),
                         epsilon=epsilon)


def moment_from_state(st: dict, group: dict, factors_only: bool
                      ) -> tuple[Moment, str, float] | None:
    """(moment, optimizer kind, eps) from one parameter's optimizer state and param group, or
    None for a vector parameter. Adam's exp_avg_sq is bias-corrected by 1 - beta2^step."""
    eps = group.get("eps")
    if "exp_avg_sq" in st and st["exp_avg_sq"].dim() in (2, 3):
        v = st["exp_avg_sq"].double()
        beta2 = group.get("betas", (0.9, 0.999))[1]
        step = float(st.get("step", 0))
        if step > 0:
            v = v / (1.0 - beta2 ** step)
        return _reduce(Moment(full=v), factors_only), "adam", \
            float(eps if eps is not None else DEFAULT_EPSILON)
    eps1 = eps[0] if isinstance(eps, (tuple, list)) else eps
    if "exp_avg_sq_row" in st:                       # transformers.optimization.Adafactor
        return Moment(row=st["exp_avg_sq_row"].double(), col=st["exp_avg_sq_col"].double()), \
            "adafactor", float(eps1 if eps1 is not None else 1e-30)
    if "row_var" in st and st["row_var"] is not None and st["row_var"].dim() >= 2:
        # torch.optim.Adafactor: row_var [..., rows, 1], col_var [..., 1, cols]
        return Moment(row=st["row_var"].double().squeeze(-1),
                      col=st["col_var"].double().squeeze(-2)), "adafactor", \
            float(eps1 if eps1 is not None else torch.finfo(torch.float32).eps)
    return None


# FSDP and activation-checkpointing wrappers that may prefix parameter names in a checkpoint
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _load_dcp(directory: Path, model: nn.Module, factors_only: bool) -> SecondMoments:
    """Second moments from a torch.distributed.checkpoint directory, without a process group."""
    # imported here: torch.distributed.checkpoint costs ~0.9 s to import, and only a DCP
    # checkpoint needs it (a query encoder or search never does)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata as BytesMeta

    reader = FileSystemReader(str(directory))
    try:
        meta = reader.read_metadata()
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad checkpoint
        raise OptimizerStateError(f"{directory}: cannot read torch.distributed.checkpoint metadata: "
                         f"{e}") from None
    entries: dict[str, dict[str, str]] = {}
    group_fields: dict[str, dict[str, str]] = {}
    for flat, path in (meta.planner_data or {}).items():
        for i, part in enumerate(path[:-2]):
            if part == "state" and len(path) == i + 3:
                entries.setdefault(str(path[i + 1]), {})[str(path[i + 2])] = flat
                break
            if part == "param_groups" and len(path) == i + 3:
                group_fields.setdefault(str(path[i + 1]), {})[str(path[i + 2])] = flat
                break
    if any("_flat_param" in n for n in entries):
        raise OptimizerStateError(f"{directory}: FSDP1 flat-parameter optimizer state; save it by "
                         f"parameter name instead (get_optimizer_state_dict(model, optimizer) "
                         f"with dcp.save, or torch.save(FSDP.optim_state_dict(model, optim)))")
    if not entries:
        raise OptimizerStateError(f"{directory}: a torch.distributed.checkpoint without optimizer state "
                         f"(no 'state' entries); save one with dcp.save({{'optim': "
                         f"get_optimizer_state_dict(model, optimizer)}}) or pass optimizer.pt")

    def load(keys: dict[str, object]) -> dict:
        dcp.load(keys, storage_reader=FileSystemReader(str(directory)), no_dist=True)
        return keys

    def tensor(flat: str) -> torch.Tensor:
        md = meta.state_dict_metadata[flat]
        return load({flat: torch.empty(md.size, dtype=md.properties.dtype)})[flat]

    group_of: dict[str, dict] = {}           # parameter name -> its group's params/eps/betas
    for fields in group_fields.values():
        wanted = {f: fields[f] for f in ("params", "eps", "betas") if f in fields}
        values = load({flat: None for flat in wanted.values()})
        group = {f: values[flat] for f, flat in wanted.items()}
        group_of.update({str(n): group for n in group.get("params", [])})
    known = {n for n, _ in model.named_parameters()}
    moments: dict[str, Moment] = {}
    epsilon: dict[str, float] = {}
    kinds = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # "assuming a single process"
        for raw, fields in entries.items():
            name = _strip_wrappers(raw)
            if name not in known:
                continue
            want = [k for k in ("exp_avg_sq", "row_var", "col_var", "exp_avg_sq_row",
                                "exp_avg_sq_col", "step") if k in fields]
            st = {k: tensor(fields[k]) for k in want
                  if not isinstance(meta.state_dict_metadata[fields[k]], BytesMeta)}
            found = moment_from_state(st, group_of.get(raw, {}), factors_only)
            if found is not None:
                moments[name], kind, epsilon[name] = found
                kinds.add(kind)
    if not moments:
        raise OptimizerStateError(f"{directory}: the checkpoint's optimizer state names no parameter of "
                         f"this model with a matrix second moment (first names: "
                         f"{sorted(entries)[:3]})")
    return SecondMoments(moments, source=str(directory), optimizer="+".join(sorted(kinds)),
                         epsilon=epsilon)


def _strip_wrappers(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _reduce(moment: Moment, factors_only: bool) -> Moment:
    return moment.factored() if factors_only else moment


