"""The one generic Rosenbrock step, driven by a :class:`~dxdt._tableau.RosenbrockTableau`.

Linearly implicit: each stage is one linear solve with ``W = I/(dt γ) − J`` (one LU per attempted step), no
Newton iteration, so backpropagation through the step is exact. The Jacobian is evaluated once per accepted
step and reused after a rejection (the state has not moved).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._tableau import RosenbrockTableau
from .._term import Term
from ..interpolation import hermite_coefficients
from ._combine import Combinations, per_sample
from ._newton import JacobianSpec, check_jacobian_spec, factor, identity_like, jacobian, solve_factored
from .base import AbstractSolver, StepResult
from .dirk import IDLE_DT


class RosenbrockState(NamedTuple):
    jac: torch.Tensor  # (B, N, N) at the current y
    f_t: torch.Tensor  # (B, *S) ∂f/∂t at the current (t, y)
    current: torch.Tensor  # (B,) bool: jac/f_t were evaluated at the current (t, y)
    n_jac: torch.Tensor  # (B,) int64 Jacobian evaluations
    n_lu: torch.Tensor  # (B,) int64 LU factorizations


class Rosenbrock(AbstractSolver):
    """A Rosenbrock method given by its tableau.

    Args:
        jac: how the Jacobian is obtained: ``"autodiff"`` (``torch.func`` forward mode, default), ``"fd"``
            (finite differences), or a callable ``jac(t, y[, args]) -> (B, N, N)``.
    """

    tableau: RosenbrockTableau
    adaptive = True
    uses_jacobian = True

    def __init__(self, jac: JacobianSpec = "autodiff", tableau: RosenbrockTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        self.jac = check_jacobian_spec(jac)
        tab = self.tableau
        self.order = tab.order
        self.error_order = min(tab.order, tab.embedded_order)
        self.dense_order = tab.dense_order if tab.dense is not None else 3
        # stages 2..s, then f(t1, y1) for the next step; the Jacobian's own cost is counted separately.
        self.evals_per_step = tab.stages
        # Stage i's state increment and its coupling to the previous stages, from the same vectors.
        self._stage_weights = [Combinations([tab.a[i], tab.C[i]]) for i in range(tab.stages)]
        self._solution_weights = Combinations([tab.m, tab.m_err])
        if tab.dense is not None:
            # (1 − θ) y0 + θ (y1 + (1 − θ)(h_1 + θ h_2 + ...)) in powers of θ: the coefficients of θ^1 (besides
            # y1 − y0), θ^2, ... are h_1, h_2 − h_1, ..., −h_last, each a fixed combination of the stages.
            hs = [list(row) for row in tab.dense]
            width = max(len(row) for row in hs)
            hs = [row + [0.0] * (width - len(row)) for row in hs]
            rows = [hs[0]] + [[b - a for a, b in zip(hs[k - 1], hs[k])] for k in range(1, len(hs))]
            rows.append([-w for w in hs[-1]])
            self._dense_weights = Combinations(rows)

    def init_state(self, term: Term, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> RosenbrockState:
        batch, n = y0.shape[0], y0[0].numel()
        zeros = torch.zeros(batch, dtype=torch.int64, device=y0.device)
        return RosenbrockState(
            jac=y0.new_zeros(batch, n, n),
            f_t=torch.zeros_like(y0),
            current=torch.zeros(batch, dtype=torch.bool, device=y0.device),
            n_jac=zeros,
            n_lu=zeros.clone(),  # distinct tensors: aliased inputs would make a compiled step recompile
        )

    def step(self, term, t, dt, y, f0, state: RosenbrockState, rtol=None, atol=None) -> StepResult:
        tab = self.tableau
        times = term.stage_times(t, dt, torch.tensor((*tab.c, 1.0), dtype=torch.float64, device=t.device), y.dtype)
        # The Jacobian is needed wherever it is not already at the current point (after an accepted step).
        stale = ~state.current
        # Compiled (compile=True), the Jacobian is evaluated on every attempt and kept only where stale: a
        # host-side test would split the step into several graphs.
        if torch.compiler.is_compiling() or bool(stale.any()):
            grad = torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad)
            jac_new, f_t_new = jacobian(term, times[0], y, self.jac, with_time=True, create_graph=grad, atol=atol)
            jac = torch.where(stale[:, None, None], jac_new, state.jac)
            f_t = torch.where(stale.reshape((-1,) + (1,) * (y.ndim - 1)), f_t_new, state.f_t)
        else:
            jac, f_t = state.jac, state.f_t
        # Idle samples have dt = 0; give them a harmless W so nothing non-finite enters the graph.
        dt_safe = torch.where(dt == 0, IDLE_DT, dt)
        dt_y = per_sample(dt_safe, y)
        inv = (1.0 / (dt_safe * tab.gamma)).to(y.dtype)[:, None, None]
        fact = factor(inv * identity_like(jac) - jac)
        us: list[torch.Tensor] = []
        for i in range(tab.stages):
            if i == 0:
                rhs = f0
            else:
                increment, coupling = self._stage_weights[i](us)
                rhs = term.call(times[i], y + increment) + coupling / dt_y
            if tab.d[i] != 0.0:
                rhs = torch.addcmul(rhs, dt_y, f_t, value=tab.d[i])
            us.append(solve_factored(fact, rhs))
        increment, y_err = self._solution_weights(us)
        y1 = y + increment
        f1 = term.call(times[-1], y1)
        new_state = RosenbrockState(
            jac=jac,
            f_t=f_t,
            current=torch.ones_like(state.current),
            n_jac=state.n_jac + stale,
            n_lu=state.n_lu + 1,
        )
        return StepResult(
            y1=y1, f1=f1, y_err=y_err, y_err_low=None, ks=us, f0=f0, state=new_state, failed=fact.singular
        )

    def commit(self, old: RosenbrockState, new: RosenbrockState, accept: torch.Tensor, running: torch.Tensor):
        # After an accepted step y has moved: the Jacobian must be re-evaluated there.
        return new._replace(
            current=~accept,
            n_jac=torch.where(running, new.n_jac, old.n_jac),
            n_lu=torch.where(running, new.n_lu, old.n_lu),
        )

    def statistics(self, state: RosenbrockState) -> dict[str, torch.Tensor]:
        return {"n_jac_evals": state.n_jac, "n_lu_decompositions": state.n_lu}

    def dense_coefficients(self, step: StepResult, y0: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        tab = self.tableau
        if tab.dense is None:
            return hermite_coefficients(per_sample(dt, y0), y0, step.y1, step.f0, step.f1)
        powers = self._dense_weights(step.ks)
        first = powers[0] + (step.y1 - y0)
        return torch.cat([y0.unsqueeze(0), first.unsqueeze(0), powers[1:]]).movedim(0, -1)
