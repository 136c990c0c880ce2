"""A method's own continuous extension: stage weights that are polynomials in θ."""

from __future__ import annotations

import torch


def polynomial_weights(theta: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """The weights ``b_i(θ) = Σ_k dense[i, k-1] θ^k``.

    Args:
        theta: ``(...,)``.
        dense: ``(n_k, m)`` coefficient matrix (one row per stage).

    Returns:
        ``(..., n_k)``: ``y(t0 + θ dt) = y0 + dt Σ_i b_i(θ) k_i``.
    """
    m = dense.shape[1]
    powers = theta.unsqueeze(-1) ** torch.arange(1, m + 1, device=theta.device, dtype=theta.dtype)
    return powers @ dense.T
