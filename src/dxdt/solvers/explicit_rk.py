"""The one generic explicit Runge–Kutta step, driven by a :class:`~dxdt._tableau.ButcherTableau`."""

from __future__ import annotations

import torch

from .._norm import rms_norm
from .._tableau import ButcherTableau
from .._term import Term
from ..interpolation import hermite_coefficients
from ._combine import Combinations, per_sample
from .base import AbstractSolver, StepResult, error_scale


class ExplicitRungeKutta(AbstractSolver):
    """An explicit Runge–Kutta method given by its tableau.

    The step evaluates the stages ``k_i = f(t + c_i dt, y + dt Σ_j a_ij k_j)`` with ``k_1 = f0`` given,
    and always ends with ``f1 = f(t + dt, y1)`` (free for first-same-as-last tableaus), which becomes the
    next step's ``k_1`` and feeds Hermite dense output.
    """

    tableau: ButcherTableau

    def __init__(self, tableau: ButcherTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        tab = self.tableau
        self.order = tab.order
        self.error_order = tab.error_order
        self.adaptive = tab.adaptive
        self.dense_order = tab.dense_order if tab.dense is not None else 3
        # k_1 is given; the other stages, plus f(t1, y1) when not first-same-as-last.
        self.evals_per_step = tab.stages - 1 if tab.fsal else tab.stages
        self._c: dict[torch.device, torch.Tensor] = {}
        self._stage_weights = [Combinations([tab.a[i]]) for i in range(1, tab.stages)]
        self._b = Combinations([tab.b])
        error_rows = [w for w in (tab.b_err, tab.b_err_low) if w is not None]
        self._error_weights = Combinations(error_rows) if error_rows else None
        # Dense output weights regrouped by power of θ: row k holds the weights of θ^(k+1).
        if tab.dense is not None:
            degree = max(len(row) for row in tab.dense)
            self._dense_weights = Combinations(
                [tuple(row[k] if k < len(row) else 0.0 for row in tab.dense) for k in range(degree)]
            )

    def __repr__(self) -> str:
        if type(self) is ExplicitRungeKutta:
            return f"ExplicitRungeKutta({self.tableau.name})"
        return f"{type(self).__name__}()"

    def _stage_c(self, device: torch.device) -> torch.Tensor:
        if device in self._c:  # a constant of the method, cached per device
            return self._c[device]
        c = torch.tensor(self.tableau.c, dtype=torch.float64, device=device)
        if not torch.compiler.is_compiling():  # a graph constant when compiled; a cache write would be a guard
            self._c[device] = c
        return c

    def step(self, term: Term, t, dt, y, f0, state=None, rtol=None, atol=None) -> StepResult:
        tab = self.tableau
        dt_y = per_sample(dt, y)
        t_stages = term.stage_times(t, dt, self._stage_c(t.device), y.dtype)
        ks = [f0]
        y_stage = y
        for i in range(1, tab.stages):
            y_stage = torch.addcmul(y, dt_y, self._stage_weights[i - 1].one(ks))
            ks.append(term.call(t_stages[i], y_stage))
        if tab.fsal:
            y1, f1 = y_stage, ks[-1]  # the last stage is (t1, y1)
        else:
            y1 = torch.addcmul(y, dt_y, self._b.one(ks))
            f1 = term(t + dt, y1)
            ks.append(f1)
        y_err = y_err_low = None
        if self._error_weights is not None:
            errors = dt_y * self._error_weights(ks)
            y_err, y_err_low = (errors[0], errors[1]) if len(errors) == 2 else (errors[0], None)
        return StepResult(y1=y1, f1=f1, y_err=y_err, y_err_low=y_err_low, ks=ks, f0=f0)

    def error_ratio(self, step: StepResult, y0: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted RMS norm of the error estimate: ``<= 1`` accepts the step. ``(B,)``."""
        scale = error_scale(step, y0, rtol, atol)
        err = rms_norm(step.y_err / scale)
        if step.y_err_low is not None:
            # DOP853 (Hairer, dop853.f): the 5th-order estimate, damped where the 3rd-order one is larger.
            err_low = rms_norm(step.y_err_low / scale)
            denom = torch.sqrt(err**2 + 0.01 * err_low**2)
            err = torch.where(denom > 0, err**2 / denom, err)
        return err

    def dense_coefficients(self, step: StepResult, y0: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        dt_y = per_sample(dt, y0)
        if self.tableau.dense is None:
            return hermite_coefficients(dt_y, y0, step.y1, step.f0, step.f1)
        # y(θ) = y0 + dt Σ_i b_i(θ) k_i with polynomial b_i: collect the stages' weight of each power of θ.
        powers = dt_y * self._dense_weights(step.ks)
        return torch.cat([y0.unsqueeze(0), powers]).movedim(0, -1)
