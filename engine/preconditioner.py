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

from tda.errors import ProfileError

MODES = ("none", "train", "mixed")


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
        raise ProfileError("no vectors to estimate a second moment from")
    phi = phi.double()
    return [phi[:, s].T @ phi[:, s] / phi.shape[0] for s in slices]


def pooled_eigenvalues(blocks: list[torch.Tensor]) -> torch.Tensor:
    """All blocks' eigenvalues, largest first (clamped at 0), float64."""
    return torch.cat([torch.linalg.eigvalsh(b.double()).clamp_min(0) for b in blocks]) \
        .sort(descending=True).values


def mixing_lambda(train_blocks: list[torch.Tensor], eval_blocks: list[torch.Tensor],
                  k: int) -> float:
    """lam such that the k-th largest pooled eigenvalues of lam R_eval and (1 - lam) R_train
    cross. Raises ProfileError when k exceeds d or R_eval has fewer than k nonzero eigenvalues."""
    train, evals = pooled_eigenvalues(train_blocks), pooled_eigenvalues(eval_blocks)
    if not 1 <= k <= len(train):
        raise ProfileError(f"components K={k} must be between 1 and d={len(train)}")
    mu_train, mu_eval = float(train[k - 1]), float(evals[k - 1])
    if mu_eval <= 0:
        rank = int((evals > 0).sum())
        raise ProfileError(f"R_eval has only {rank} nonzero eigenvalues (too few queries for "
                         f"K={k}); use more queries or a smaller --components")
    if mu_train <= 0:
        raise ProfileError(f"R_train's {k}-th eigenvalue is zero; use a smaller --components")
    return mu_train / (mu_train + mu_eval)


def inverse_sqrt(block: torch.Tensor, damping: float) -> torch.Tensor:
    """(R + damping * mean eigenvalue * I)^-1/2 of a symmetric PSD block, float64."""
    mu, u = torch.linalg.eigh(block.double())
    mu = mu.clamp_min(0)
    shift = damping * float(mu.mean())
    if shift <= 0:
        raise ProfileError("damping must be > 0 and the block nonzero for an inverse square "
                           "root")
    return (u * (mu + shift).rsqrt()) @ u.T


def apply_blocks(transforms: list[torch.Tensor], slices: list[slice],
                 x: torch.Tensor) -> torch.Tensor:
    """Block-diagonal transform of rows: x [n, d] -> [n, d] (transforms are symmetric)."""
    out = torch.empty_like(x)
    for t, s in zip(transforms, slices):
        out[:, s] = x[:, s] @ t.to(x.dtype)
    return out


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of x [n, d] scaled to unit L2 norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


def transform(transforms: list[torch.Tensor], slices: list[slice], x: torch.Tensor,
              unit_normalize: bool = True) -> torch.Tensor:
    """Search-time vectors of a profile for rows x [n, d]: R^-1/2 x / ||R^-1/2 x||, or R^-1/2 x
    when the index is not unit normalized (Grad-Dot with R stays a dot product)."""
    out = apply_blocks(transforms, slices, x)
    return normalize_rows(out) if unit_normalize else out


def fit_blocks(train_phi: torch.Tensor, eval_phi: torch.Tensor | None, slices: list[slice],
               mode: str, components: int, damping: float, mixing: float = 0.0
               ) -> tuple[list[torch.Tensor], dict]:
    """The transform blocks R^-1/2 ([d_b, d_b] float64 per block) and what was chosen
    (lambda, and for 'mixed' the K-th pooled eigenvalues of R_train and R_eval).
    ``mixing``: for 'mixed', lambda itself instead of the one K chooses (0: choose).

    ``train_phi`` [n, d] training vectors, ``eval_phi`` [m, d] query vectors (for 'mixed'),
    both un-normalized phi; ``mode``: 'none' (identity), 'train' (R_train) or 'mixed'."""
    d = slices[-1].stop
    if mode not in MODES:
        raise ProfileError(f"mode must be one of {MODES}, got {mode!r}")
    if not 1 <= components <= d:
        raise ProfileError(f"components K={components} must be between 1 and d={d}")
    if mode == "none":
        return [torch.eye(s.stop - s.start, dtype=torch.float64) for s in slices], \
            {"lambda": None}
    train = second_moment_blocks(train_phi, slices)
    info: dict = {"lambda": 0.0}
    blocks = train
    if mode == "mixed":
        if eval_phi is None:
            raise ProfileError("mode 'mixed' needs query vectors (R_eval)")
        evals = second_moment_blocks(eval_phi, slices)
        lam = mixing or mixing_lambda(train, evals, components)
        blocks = [lam * e + (1 - lam) * t for e, t in zip(evals, train)]
        info = {"lambda": lam, "lambda_given": bool(mixing),
                "mu_K_train": float(pooled_eigenvalues(train)[components - 1]),
                "mu_K_eval": float(pooled_eigenvalues(evals)[components - 1])}
    return [inverse_sqrt(b, damping) for b in blocks], info
