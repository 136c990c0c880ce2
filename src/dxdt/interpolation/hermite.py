"""Cubic Hermite interpolation from the step's end points and slopes (third-order dense output)."""

from __future__ import annotations

import torch


def hermite(
    theta: torch.Tensor, dt: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor
) -> torch.Tensor:
    """``y(t0 + θ dt)`` from ``y0, y1 = y(t0), y(t0 + dt)`` and ``f0, f1`` their slopes.

    ``theta`` and ``dt`` broadcast against the states.
    """
    # Written in powers of θ around y0: y0 + θ·dt·f0 + θ²·c2 + θ³·c3.
    dy = y1 - y0
    c2 = 3 * dy - dt * (2 * f0 + f1)
    c3 = -2 * dy + dt * (f0 + f1)
    return y0 + theta * (dt * f0 + theta * (c2 + theta * c3))
