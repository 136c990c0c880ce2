"""Dense output as a polynomial in θ: built per step, evaluated anywhere by Horner's rule."""

from __future__ import annotations

import torch


def evaluate_polynomial(coefficients: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``Σ_k θ^k P[..., k]`` for coefficients ``(..., m + 1)``; ``theta`` broadcasts against ``P[..., 0]``."""
    out = coefficients[..., -1]
    for k in range(coefficients.shape[-1] - 2, -1, -1):
        out = torch.addcmul(coefficients[..., k], out, theta)
    return out
