"""Automatic initial step size (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4, p. 169)."""

from __future__ import annotations

import torch

from .._norm import rms_norm
from .._term import Term


def initial_step_size(
    term: Term,
    t0: torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: torch.Tensor,
    order: int,
    rtol: torch.Tensor,
    atol: torch.Tensor,
) -> torch.Tensor:
    """Per-sample ``|dt0|`` from one extra evaluation of ``f``; ``(B,)`` float64."""
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0 = rms_norm(y0 / scale).double()
        d1 = rms_norm(f0 / scale).double()
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        h0_y = (h0 * direction).to(y0.dtype).reshape((-1,) + (1,) * (y0.ndim - 1))
        f1 = term(t0 + h0 * direction, y0 + h0_y * f0)
        d2 = rms_norm((f1 - f0) / scale).double() / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(
            dmax <= 1e-15,
            torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
            (0.01 / dmax) ** (1.0 / (order + 1)),
        )
        dt = torch.minimum(100 * h0, h1)
        # A NaN here (f non-finite at t0) is caught by the loop's finiteness checks; keep dt usable.
        # detach(): no_grad does not stop forward-mode tangents, and step sizes are never differentiated.
        dt = dt.detach()
        return torch.where(torch.isfinite(dt) & (dt > 0), dt, torch.full_like(dt, 1e-6))
