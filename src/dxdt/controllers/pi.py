"""Proportional–integral step-size control (Gustafsson 1991; Hairer & Wanner, *Solving ODEs II*, IV.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AbstractController


@dataclass(frozen=True)
class PIController(AbstractController):
    """``dt_new = dt · safety · err^(−β1/k) · err_prev^(β2/k)``, with ``k = error_order + 1``.

    Defaults are those of OrdinaryDiffEq.jl's PI controller (β1 = 0.7, β2 = 0.4), which damp the
    oscillating step sequences of pure error-per-step control. ``err_prev`` is the error of the last
    accepted step. After a rejection the step never grows; a non-finite step shrinks by ``factor_min``.

    Args:
        beta1: integral gain (times ``k``).
        beta2: proportional gain (times ``k``); ``0`` gives the classical I controller.
        safety: safety factor.
        factor_min, factor_max: bounds on ``dt_new / dt``.
    """

    beta1: float = 0.7
    beta2: float = 0.4
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
        finite = torch.isfinite(err)
        # Floors keep the powers finite for exact (zero-error) steps.
        e = err.clamp_min(1e-10)
        factor = self.safety * e ** (-self.beta1 / k)
        if self.beta2:
            factor = factor * err_prev ** (self.beta2 / k)
        factor = factor.clamp(self.factor_min, self.factor_max)
        factor = torch.where(accept, factor, factor.clamp_max(1.0))
        factor = torch.where(finite, factor, self.factor_min)
        err_prev = torch.where(accept, e.clamp_min(1e-4), err_prev)
        return dt * factor, err_prev


def IController(safety: float = 0.9, factor_min: float = 0.2, factor_max: float = 10.0) -> PIController:
    """The classical controller ``dt_new = dt · safety · err^(−1/k)`` (a PI controller with ``β2 = 0``)."""
    return PIController(beta1=1.0, beta2=0.0, safety=safety, factor_min=factor_min, factor_max=factor_max)
