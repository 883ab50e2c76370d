"""Tail-patch score (Chang et al. 2024): how much one training step on a candidate proponent
raises the probability of a query's target.

From the final model and its AdamW state, take one optimizer step on a single training example
(the training loss of ``evaluation.train.train_lm``: mean next-token NLL over the example's
tokens) with the state's own hyperparameters (learning rate, betas, eps, weight decay), and
measure ``p_after(target | prompt) - p_before(target | prompt)`` and the same for the
log-probability. Every step starts from the same saved state (weights, moments, step count);
nothing accumulates.

The step is computed functionally: the example's gradient comes from autograd on detached
leaves that share the model's storage, the updated tensors from AdamW's formula applied to the
saved ``exp_avg`` / ``exp_avg_sq`` / ``step`` (bias correction with ``step + 1``, exactly as
``torch.optim.AdamW`` orders its operations), and the target is scored with
``torch.func.functional_call`` on the updated tensors. The model is never modified, and one
call costs one forward+backward on the example and one forward on the query.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import signature
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from tda.engine.batching import (collate, example_sequence, pad_id, per_example_loss,
                                 query_sequence)
from tda.engine.optimizer_state import find_state_file, is_state_dict, param_names, read_state
from tda.errors import OptimizerStateError


@dataclass
class _Slot:
    """One trained parameter with its saved AdamW state, pre-combined with the constants of
    the one step every call takes from it."""

    name: str
    param: torch.Tensor            # the model's own tensor (read only)
    base: torch.Tensor             # param * (1 - lr * wd) (decoupled decay), else param
    exp_avg: torch.Tensor          # saved m
    exp_avg_sq_b2: torch.Tensor    # saved v * beta2
    max_exp_avg_sq: torch.Tensor | None   # amsgrad only
    beta1: float
    beta2: float
    eps: float
    step_size: float               # lr / (1 - beta1^(step+1))
    bias_correction2_sqrt: float   # sqrt(1 - beta2^(step+1))
    l2: float                      # weight decay added to the gradient (Adam, not AdamW)
    maximize: bool
    buffers: tuple[torch.Tensor, ...] | None = None   # reused by every call (no allocation)

    def updated(self, grad: torch.Tensor) -> torch.Tensor:
        """The parameter after one step with ``grad``: torch's single-tensor Adam, in the same
        order of operations, written into this slot's buffers (valid until the next call)."""
        if self.buffers is None:
            self.buffers = tuple(torch.empty_like(self.param) for _ in range(3))
        exp_avg, denom, out = self.buffers
        if self.maximize:
            grad = -grad
        if self.l2:
            grad = grad.add(self.param, alpha=self.l2)
        torch.lerp(self.exp_avg, grad, 1 - self.beta1, out=exp_avg)
        torch.addcmul(self.exp_avg_sq_b2, grad, grad, value=1 - self.beta2, out=denom)
        if self.max_exp_avg_sq is not None:
            torch.maximum(self.max_exp_avg_sq, denom, out=denom)
        denom.sqrt_().div_(self.bias_correction2_sqrt).add_(self.eps)
        return torch.addcdiv(self.base, exp_avg, denom, value=-self.step_size, out=out)


class TailPatcher:
    """Tail-patch scores for one model and its optimizer state.

    ``model``: a loaded Hugging Face causal LM (scored in eval mode: no dropout; a model in
    train mode is switched to eval for each call and restored). ``optimizer_state``: a
    ``torch.optim.AdamW`` (or Adam) ``state_dict`` of the model's parameters: with
    ``param_names`` in its groups (an optimizer built from ``model.named_parameters()``), or
    integer ids in ``model.named_parameters()`` order (one group), or the HF Trainer's
    decay/no-decay groups. Parameters the state does not hold are not updated; a parameter the
    state holds but never stepped starts from zero moments, as torch would.

    ``lr``: the step's learning rate; None takes each group's final ``lr`` from the state.
    A schedule that decays to exactly 0 (``train_lm``'s cosine does) makes every score 0, so a
    zero learning rate is refused: pass ``lr`` explicitly (for instance the group's
    ``initial_lr``, which LR schedulers record) and report which one was used.

    The weights and moments are read once, here: change the model afterwards and the scores
    mix two models. Holds about six extra copies of the trained parameters (the saved moments
    and the buffers every step is written into).
    """

    def __init__(self, model: nn.Module, tokenizer, optimizer_state: dict, max_len: int = 256,
                 lr: float | None = None):
        if not is_state_dict(optimizer_state):
            raise OptimizerStateError("optimizer_state is not an optimizer state_dict "
                                      "(no 'state'/'param_groups')")
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id = pad_id(tokenizer)
        self.device = next(model.parameters()).device
        forward_args = signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward_args
        self._before: dict[tuple[str, str], float] = {}
        lrs = [float(g["lr"]) if lr is None else float(lr)
               for g in optimizer_state["param_groups"]]
        if not any(lrs):
            initial = [g.get("initial_lr") for g in optimizer_state["param_groups"]]
            raise OptimizerStateError(f"the step's learning rate is 0 (the state's schedule "
                                      f"decayed to zero?), so one step changes nothing: pass "
                                      f"lr= explicitly (the groups' initial_lr: {initial})")
        self.lr = lrs[0]        # the step's learning rate (first group's; ``lrs``: each group's)
        self.lrs = lrs
        self.slots = self._read_state(optimizer_state, lr)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32",
                        device: str | torch.device = "cpu", max_len: int = 256,
                        lr: float | None = None, optimizer_file: str = "optimizer.pt"
                        ) -> "TailPatcher":
        """Load the model, tokenizer and ``optimizer.pt`` saved in one directory."""
        from tda.engine.model import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        state = read_state(find_state_file(path, (optimizer_file,)))
        return cls(model, tokenizer, state, max_len=max_len, lr=lr)

    # -- state ----------------------------------------------------------------------------

    def _read_state(self, blob: dict, lr: float | None) -> list[_Slot]:
        params = dict(self.model.named_parameters())
        names = param_names(blob, self.model, "optimizer state")
        slots = []
        with torch.no_grad():
            for group in blob["param_groups"]:
                g_lr = float(group["lr"] if lr is None else lr)
                beta1, beta2 = (float(b) for b in group.get("betas", (0.9, 0.999)))
                eps = float(group.get("eps", 1e-8))
                wd = float(group.get("weight_decay", 0.0))
                decoupled = group.get("decoupled_weight_decay", True)
                amsgrad = bool(group.get("amsgrad", False))
                for pid in group["params"]:
                    name = names[pid]
                    if name not in params:
                        raise OptimizerStateError(f"optimizer state names parameter {name!r}, "
                                                  f"which the model does not have")
                    p = params[name].detach()
                    st = blob["state"].get(pid) or {}
                    if st and "exp_avg" not in st:
                        raise OptimizerStateError(f"optimizer state for {name!r} is not "
                                                  f"Adam/AdamW (keys {sorted(st)})")
                    step = float(st["step"]) if "step" in st else 0.0

                    def moment(key, _st=st, _p=p, _name=name):
                        t = _st.get(key)
                        if t is None:
                            return torch.zeros_like(_p)
                        if tuple(t.shape) != tuple(_p.shape):
                            raise OptimizerStateError(
                                f"optimizer state {key} for {_name!r} has shape "
                                f"{list(t.shape)}, the parameter {list(_p.shape)}")
                        # a copy: the caller may step an optimizer that shares these tensors
                        return t.detach().to(device=_p.device, dtype=_p.dtype, copy=True)

                    exp_avg, exp_avg_sq = moment("exp_avg"), moment("exp_avg_sq")
                    slots.append(_Slot(
                        name=name, param=p,
                        base=p * (1 - g_lr * wd) if decoupled and wd else p,
                        exp_avg=exp_avg, exp_avg_sq_b2=exp_avg_sq.mul(beta2),
                        max_exp_avg_sq=moment("max_exp_avg_sq") if amsgrad else None,
                        beta1=beta1, beta2=beta2, eps=eps,
                        step_size=g_lr / (1 - beta1 ** (step + 1)),
                        bias_correction2_sqrt=(1 - beta2 ** (step + 1)) ** 0.5,
                        l2=0.0 if decoupled else wd,
                        maximize=bool(group.get("maximize", False))))
        if not slots:
            raise OptimizerStateError("optimizer state holds no parameters")
        return slots

    # -- scoring --------------------------------------------------------------------------

    def _inputs(self, seq) -> tuple[dict, torch.Tensor]:
        batch = collate([seq], self.pad_id).to(self.device)
        kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                      position_ids=batch.position_ids, use_cache=False)
        return kwargs, batch.labels

    def _logprob(self, prompt: str, target: str, params: dict | None) -> float:
        """Summed log p(target tokens | prompt), with the model's own weights or ``params``."""
        seq, cut = query_sequence(self.tokenizer, prompt, target, self.max_len)
        if cut:
            warnings.warn(f"query longer than max_len={self.max_len} tokens: its prompt keeps "
                          f"the end", stacklevel=3)
        kwargs, _ = self._inputs(seq)
        n_target = seq.n_predicted
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = n_target + 1
        with torch.no_grad(), _eval_mode(self.model):
            out = (self.model(**kwargs) if params is None
                   else functional_call(self.model, params, args=(), kwargs=kwargs))
        logits = out.logits[0, -(n_target + 1):-1]       # the positions predicting the target
        targets = kwargs["input_ids"][0, seq.n_context:]
        logp = torch.log_softmax(logits.double(), dim=-1)
        return float(logp.gather(1, targets[:, None]).sum())

    def updated_parameters(self, example_text: str) -> dict[str, torch.Tensor]:
        """The trained parameters after one AdamW step on ``example_text`` (name -> new tensor;
        a parameter the example's loss does not reach keeps its value, as torch skips it)."""
        return {n: t.clone() for n, t in self._patched(example_text).items()}

    def _patched(self, example_text: str) -> dict[str, torch.Tensor]:
        """As ``updated_parameters``, in the slots' reused buffers: valid until the next call."""
        seq, truncated = example_sequence(self.tokenizer, example_text, self.max_len)
        if truncated:
            warnings.warn(f"training example longer than max_len={self.max_len} tokens: the "
                          f"step uses its first {self.max_len} tokens", stacklevel=3)
        kwargs, labels = self._inputs(seq)
        leaves = {s.name: s.param.detach().requires_grad_(True) for s in self.slots}
        with torch.enable_grad(), _eval_mode(self.model):
            logits = functional_call(self.model, leaves, args=(), kwargs=kwargs).logits
            loss = per_example_loss(logits, labels).sum() / (labels >= 0).sum()
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        with torch.no_grad():
            return {s.name: s.param if g is None else s.updated(g)
                    for s, g in zip(self.slots, grads)}

    def target_logprob(self, prompt: str, target: str) -> float:
        """log p(target | prompt) under the unpatched model: the sum over the target's tokens,
        prompt + target tokenized once and split at the boundary (``query_sequence``). Cached."""
        key = (prompt, target)
        if key not in self._before:
            self._before[key] = self._logprob(prompt, target, None)
        return self._before[key]

    def delta(self, prompt: str, target: str, example_text: str) -> tuple[float, float]:
        """(Δp, Δlog p) of the target after one training step on ``example_text``."""
        before = self.target_logprob(prompt, target)
        after = self._logprob(prompt, target, self._patched(example_text))
        return math.exp(after) - math.exp(before), after - before

    def deltas(self, prompt: str, target: str, example_texts: list[str]
               ) -> list[tuple[float, float]]:
        """:meth:`delta` for each example, each step from the same saved state."""
        return [self.delta(prompt, target, text) for text in example_texts]


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the duration (no dropout), each module's own mode restored after."""
    if not model.training:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
