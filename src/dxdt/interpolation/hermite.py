"""Cubic Hermite interpolation from the step's end points and slopes (third-order dense output)."""

from __future__ import annotations

import torch


def hermite_coefficients(
    dt: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor
) -> torch.Tensor:
    """Coefficients ``(..., 4)`` in powers of θ of the cubic through ``y0, y1`` with slopes ``f0, f1``.

    ``dt`` broadcasts against the states.
    """
    dy = y1 - y0
    return torch.stack([y0, dt * f0, 3 * dy - dt * (2 * f0 + f1), -2 * dy + dt * (f0 + f1)], dim=-1)
