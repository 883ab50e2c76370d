"""The task-specific Gauss-Newton correction R (TrackStar), block-diagonal per tracked weight.

R_train = E[phi phi^T] over training examples, R_eval the same over the task's queries,
R = lam R_eval + (1 - lam) R_train with lam chosen so that the K-th largest eigenvalues of
lam R_eval and (1 - lam) R_train (each spectrum pooled over all blocks) are equal:
lam mu_K(eval) = (1 - lam) mu_K(train)  =>  lam = mu_K(train) / (mu_K(train) + mu_K(eval)).
Search uses R^-1/2 phi / ||R^-1/2 phi||, with R^-1/2 = U diag((mu + damping * mean(mu))^-1/2) U^T
per block (damping relative to the block's mean eigenvalue).
"""
from __future__ import annotations

import torch


def block_slices(dims: list[int]) -> list[slice]:
    """Column ranges of consecutive blocks of the given widths."""
    out, start = [], 0
    for d in dims:
        out.append(slice(start, start + d))
        start += d
    return out


def second_moment_blocks(phi: torch.Tensor, slices: list[slice]) -> list[torch.Tensor]:
    """E[phi_b phi_b^T] per block: phi [n, d] -> [d_b, d_b] each, float64."""
    if phi.shape[0] == 0:
        raise ValueError("no vectors to estimate a second moment from")
    phi = phi.double()
    return [phi[:, s].T @ phi[:, s] / phi.shape[0] for s in slices]


def pooled_eigenvalues(blocks: list[torch.Tensor]) -> torch.Tensor:
    """All blocks' eigenvalues, largest first (clamped at 0), float64."""
    return torch.cat([torch.linalg.eigvalsh(b.double()).clamp_min(0) for b in blocks]) \
        .sort(descending=True).values


def mixing_lambda(train_blocks: list[torch.Tensor], eval_blocks: list[torch.Tensor],
                  k: int) -> float:
    """lam such that the k-th largest pooled eigenvalues of lam R_eval and (1 - lam) R_train
    cross. Raises ValueError when k exceeds d or R_eval has fewer than k nonzero eigenvalues."""
    train, evals = pooled_eigenvalues(train_blocks), pooled_eigenvalues(eval_blocks)
    if not 1 <= k <= len(train):
        raise ValueError(f"components K={k} must be between 1 and d={len(train)}")
    mu_train, mu_eval = float(train[k - 1]), float(evals[k - 1])
    if mu_eval <= 0:
        rank = int((evals > 0).sum())
        raise ValueError(f"R_eval has only {rank} nonzero eigenvalues (too few queries for "
                         f"K={k}); use more queries or a smaller --components")
    if mu_train <= 0:
        raise ValueError(f"R_train's {k}-th eigenvalue is zero; use a smaller --components")
    return mu_train / (mu_train + mu_eval)


def inverse_sqrt(block: torch.Tensor, damping: float) -> torch.Tensor:
    """(R + damping * mean eigenvalue * I)^-1/2 of a symmetric PSD block, float64."""
    mu, u = torch.linalg.eigh(block.double())
    mu = mu.clamp_min(0)
    shift = damping * float(mu.mean())
    if shift <= 0:
        raise ValueError("damping must be > 0 and the block nonzero for an inverse square root")
    return (u * (mu + shift).rsqrt()) @ u.T


def apply_blocks(transforms: list[torch.Tensor], slices: list[slice],
                 x: torch.Tensor) -> torch.Tensor:
    """Block-diagonal transform of rows: x [n, d] -> [n, d] (transforms are symmetric)."""
    out = torch.empty_like(x)
    for t, s in zip(transforms, slices):
        out[:, s] = x[:, s] @ t.to(x.dtype)
    return out


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
