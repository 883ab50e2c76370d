"""Optimizer second moments V per parameter: loading, factoring, estimating.

Every moment is kept in its parameter's own storage shape, keyed by the canonical parameter name
(``model.named_parameters()``). Adam/AdamW ``exp_avg_sq`` is stored in full ([rows, cols]) and
bias-corrected; Adafactor keeps row and column factors only. ``factors()`` gives the row/column
means that the factored correction uses, whichever form is held.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from tda.engine.optimizer_state import (find_state_file, is_state_dict, param_names,
                                        read_state)
from tda.errors import OptimizerStateError

OWN_FORMAT = "tda.second_moments/1"


@dataclass
class Moment:
    """V for one 2-D parameter, in storage shape [rows, cols]: ``full`` or factors ``row`` [rows]
    (mean over columns) and ``col`` [cols] (mean over rows)."""

    full: torch.Tensor | None = None
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(row means [rows], column means [cols], overall mean): V ~= row col^T / mean."""
        if self.full is not None:
            v = self.full.double()
            return v.mean(1), v.mean(0), float(v.mean())
        row, col = self.row.double(), self.col.double()
        return row, col, float(row.mean())

    def factored(self) -> "Moment":
        """The same moment as row and column means only (what the factored correction uses)."""
        return self if self.full is None else Moment(row=self.full.mean(1),
                                                     col=self.full.mean(0))

    def dense(self) -> torch.Tensor:
        """V as [rows, cols] (Adafactor's V = row col^T / mean(row))."""
        if self.full is not None:
            return self.full.double()
        row, col, mean = self.factors()
        return torch.outer(row, col) / max(mean, 1e-300)

    @property
    def shape(self) -> tuple[int, int]:
        """The parameter's storage shape (rows, cols)."""
        if self.full is not None:
            return tuple(self.full.shape)
        return (self.row.shape[0], self.col.shape[0])


@dataclass
class SecondMoments:
    """Second moments for a model's parameters, and where they came from."""

    moments: dict[str, Moment]
    source: str
    optimizer: str = "adam"
    extra: dict = field(default_factory=dict)

    def __getitem__(self, param_name: str) -> Moment:
        try:
            return self.moments[param_name]
        except KeyError:
            raise OptimizerStateError(f"optimizer state has no second moment for parameter "
                                      f"{param_name!r} ({self.source})") from None

    def factored(self) -> "SecondMoments":
        """A copy holding only row/column means."""
        return SecondMoments({n: m.factored() for n, m in self.moments.items()}, self.source,
                             self.optimizer, dict(self.extra))

    def check_against(self, model: nn.Module, param_names: Iterable[str]) -> None:
        """Raise OptimizerStateError naming the first parameter that is missing or has the
        wrong shape."""
        params = dict(model.named_parameters())
        for name in param_names:
            if name not in self.moments:
                raise OptimizerStateError(f"optimizer state {self.source} does not match the "
                                          f"model: no second moment for parameter {name!r}")
            want = tuple(params[name].shape)
            got = self.moments[name].shape
            if got != want:
                raise OptimizerStateError(f"optimizer state {self.source} does not match the "
                                          f"model: parameter {name!r} has shape {list(want)}, "
                                          f"its second moment {list(got)}")

    def save(self, path: str | Path) -> None:
        """Write the name-keyed tda format (``tda_second_moments.pt``)."""
        state = {n: {k: v for k, v in vars(m).items() if v is not None}
                 for n, m in self.moments.items()}
        torch.save({"format": OWN_FORMAT, "optimizer": self.optimizer, "source": self.source,
                    "extra": self.extra, "moments": state}, Path(path))


def load_second_moments(path: str | Path, model: nn.Module,
                        factors_only: bool = False) -> SecondMoments:
    """Read second moments saved next to a model.

    ``factors_only`` keeps only each full moment's row and column means (what the factored
    correction needs): the file is memory-mapped and reduced one parameter at a time, so an
    8B model's optimizer state never sits in memory whole.

    ``path`` is a file or a directory holding one of:
    - ``tda_second_moments.pt``: the name-keyed tda format (``SecondMoments.save``);
    - ``optimizer.pt`` or any ``torch.save(optimizer.state_dict())``: Adam/AdamW (``exp_avg_sq``)
      or Adafactor (``exp_avg_sq_row``/``exp_avg_sq_col``); integer parameter ids are mapped
      back to names through ``param_names`` when the optimizer was built from named parameters,
      else through the model's parameter order (one group) or the HF Trainer's
      decay/no-decay grouping (two groups).
    """
    file = find_state_file(path)
    blob = read_state(file)
    if isinstance(blob, dict) and blob.get("format") == OWN_FORMAT:
        moments = {n: _reduce(Moment(**{k: t.double() for k, t in m.items()}), factors_only)
                   for n, m in blob["moments"].items()}
        return SecondMoments(moments, source=blob.get("source") or str(file),
                             optimizer=blob["optimizer"], extra=blob.get("extra", {}))
    if not is_state_dict(blob):
        raise OptimizerStateError(f"{file}: not an optimizer state_dict (no 'state'/"
                                  f"'param_groups') and not the {OWN_FORMAT} format")
    names = param_names(blob, model, file)
    moments: dict[str, Moment] = {}
    kinds = set()
    for pid, name in names.items():
        st = blob["state"].get(pid)
        if not st:
            continue
        group = next(g for g in blob["param_groups"] if pid in g["params"])
        if "exp_avg_sq" in st and st["exp_avg_sq"].dim() == 2:
            kinds.add("adam")
            v = st["exp_avg_sq"].double()
            beta2 = group.get("betas", (0.9, 0.999))[1]
            step = float(st.get("step", 0))
            if step > 0:
                v = v / (1.0 - beta2 ** step)
            moments[name] = _reduce(Moment(full=v), factors_only)
        elif "exp_avg_sq_row" in st:
            kinds.add("adafactor")
            moments[name] = Moment(row=st["exp_avg_sq_row"].double(),
                                   col=st["exp_avg_sq_col"].double())
    if not moments:
        raise OptimizerStateError(f"{file}: optimizer state holds no 2-D second moments "
                                  f"(exp_avg_sq or exp_avg_sq_row/col)")
    return SecondMoments(moments, source=str(file), optimizer="+".join(sorted(kinds)))


def _reduce(moment: Moment, factors_only: bool) -> Moment:
    return moment.factored() if factors_only else moment


def estimate_second_moments(model: nn.Module, examples: list[list[int]],
                            param_names: Iterable[str], loss_fn) -> SecondMoments:
    """V = mean over ``examples`` of the squared per-example gradient, one backward each.

    ``examples`` are token id lists; ``loss_fn(model, ids)`` returns the scalar example loss.
    Used when no optimizer state exists; the source string says so.
    """
    if not examples:
        raise OptimizerStateError("cannot estimate second moments from zero examples")
    params = dict(model.named_parameters())
    wanted = list(dict.fromkeys(param_names))
    saved = {n: p.requires_grad for n, p in params.items()}
    sums = {n: torch.zeros(params[n].shape, dtype=torch.float64) for n in wanted}
    try:
        for n, p in params.items():
            p.requires_grad_(n in sums)
        for ids in examples:
            grads = torch.autograd.grad(loss_fn(model, ids), [params[n] for n in wanted])
            for n, g in zip(wanted, grads):
                sums[n] += g.detach().double().cpu() ** 2
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n])
    moments = {n: Moment(full=s / len(examples)) for n, s in sums.items()}
    return SecondMoments(moments, source=f"estimated: mean squared gradient over "
                                         f"{len(examples)} examples", optimizer="estimated",
                         extra={"n_examples": len(examples)})
