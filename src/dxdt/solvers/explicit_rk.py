"""The one generic explicit Runge–Kutta step, driven by a :class:`~dxdt._tableau.ButcherTableau`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._norm import rms_norm
from .._tableau import ButcherTableau
from .._term import Term
from ..interpolation import hermite, polynomial_weights
from .base import AbstractSolver, StepResult


class _Coefficients(NamedTuple):
    a_rows: tuple[torch.Tensor | None, ...]  # row i: (i,) weights of stages 0..i-1 (None for row 0)
    b: torch.Tensor  # (s,)
    c: torch.Tensor  # (s,) float64, for stage times
    b_err: torch.Tensor | None  # (n_k,)
    b_err_low: torch.Tensor | None  # (n_k,)
    dense: torch.Tensor | None  # (n_k, m)


def _pad(weights: tuple[float, ...] | None, n: int) -> list[float] | None:
    return None if weights is None else list(weights) + [0.0] * (n - len(weights))


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
        self.n_k = tab.stages if tab.fsal else tab.stages + 1
        # k_1 is given; the other stages, plus f(t1, y1) when not first-same-as-last.
        self.evals_per_step = tab.stages - 1 if tab.fsal else tab.stages
        self._cache: dict[tuple[torch.dtype, torch.device], _Coefficients] = {}

    def __repr__(self) -> str:
        if type(self) is ExplicitRungeKutta:
            return f"ExplicitRungeKutta({self.tableau.name})"
        return f"{type(self).__name__}()"

    def _coefficients(self, dtype: torch.dtype, device: torch.device) -> _Coefficients:
        key = (dtype, device)
        if key not in self._cache:
            tab, n_k = self.tableau, self.n_k

            def tensor(x, dt=dtype):
                return None if x is None else torch.tensor(x, dtype=dt, device=device)

            self._cache[key] = _Coefficients(
                a_rows=tuple(tensor(row) if i else None for i, row in enumerate(tab.a)),
                b=tensor(tab.b),
                c=tensor(tab.c, torch.float64),
                b_err=tensor(_pad(tab.b_err, n_k)),
                b_err_low=tensor(_pad(tab.b_err_low, n_k)),
                dense=None if tab.dense is None else tensor(_pad_rows(tab.dense, n_k)),
            )
        return self._cache[key]

    def step(self, term: Term, t: torch.Tensor, dt: torch.Tensor, y: torch.Tensor, f0: torch.Tensor) -> StepResult:
        co = self._coefficients(y.dtype, y.device)
        tab = self.tableau
        dt_y = dt.to(y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
        t_stages = term.stage_times(t, dt, co.c, y.dtype)
        ks = [f0]
        y_stage = y
        for i in range(1, tab.stages):
            y_stage = torch.addcmul(y, dt_y, _combine(tab.a[i], ks))
            ks.append(term.call(t_stages[i], y_stage))
        if tab.fsal:
            y1, f1 = y_stage, ks[-1]  # the last stage is (t1, y1)
        else:
            y1 = torch.addcmul(y, dt_y, _combine(tab.b, ks))
            f1 = term(t + dt, y1)
            ks.append(f1)
        y_err = None if tab.b_err is None else dt_y * _combine(tab.b_err, ks)
        y_err_low = None if tab.b_err_low is None else dt_y * _combine(tab.b_err_low, ks)
        return StepResult(y1=y1, f1=f1, y_err=y_err, y_err_low=y_err_low, ks=ks)

    def error_ratio(self, step: StepResult, y0: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted RMS norm of the error estimate: ``<= 1`` accepts the step. ``(B,)``."""
        scale = torch.addcmul(atol, rtol, torch.maximum(y0.abs(), step.y1.abs()))
        err = rms_norm(step.y_err / scale)
        if step.y_err_low is not None:
            # DOP853 (Hairer, dop853.f): the 5th-order estimate, damped where the 3rd-order one is larger.
            err_low = rms_norm(step.y_err_low / scale)
            denom = torch.sqrt(err**2 + 0.01 * err_low**2)
            err = torch.where(denom > 0, err**2 / denom, err)
        return err

    def interpolate(
        self, theta: torch.Tensor, dt: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, ks: torch.Tensor
    ) -> torch.Tensor:
        co = self._coefficients(y0.dtype, y0.device)
        if co.dense is None:
            return hermite(theta, dt, y0, y1, ks[..., 0], ks[..., -1])
        weights = polynomial_weights(theta, co.dense)  # (..., 1, ..., 1, n_k): broadcasts over the state dims
        return y0 + dt * (ks * weights).sum(-1)


def _combine(weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_j w_j k_j`` over the non-zero weights, one fused kernel per term.

    Cheaper than stacking the stages and a matmul for the small states where per-op overhead dominates,
    and the summation order per element does not depend on the batch size (batch invariance).
    """
    terms = [(w, k) for w, k in zip(weights, ks) if w != 0.0]
    w0, acc = terms[0]
    acc = acc * w0
    for w, k in terms[1:]:
        acc = acc.add(k, alpha=w)
    return acc


def _pad_rows(rows: tuple[tuple[float, ...], ...], n: int) -> list[tuple[float, ...]]:
    """Dense rows padded with zero rows up to ``n`` stages, all of the same polynomial degree."""
    m = max(len(r) for r in rows)
    padded = [tuple(r) + (0.0,) * (m - len(r)) for r in rows]
    return padded + [(0.0,) * m] * (n - len(padded))
