"""The one generic (E)SDIRK step: simplified Newton per stage on batched LU factorizations.

Stage ``i`` solves ``z = base_i + dt γ f(t_i, z)`` with ``base_i = y + dt Σ_{j<i} a_ij k_j``, iterating
``(I − dt γ J) Δ = base_i + dt γ f(t_i, z) − z`` with one factorization shared by all stages and reused across
steps while Newton converges well (the policy of Hairer's RADAU5 and scipy's Radau: the Jacobian is
re-evaluated after slow convergence or a failure, the LU whenever ``dt γ`` or the Jacobian changes). A sample
whose Newton iteration diverges or does not converge in ``max_newton_iters`` fails the step: the loop rejects
it for that sample only and shrinks its dt.

Gradients never flow through the Newton iterations: the converged stage is re-attached to the graph by an
implicit-function-theorem term ``z − (c − c.detach())``, ``c = M⁻¹ G(z)``, with ``M = I − dt γ J(z)`` evaluated
exactly at the converged ``z`` (detached): the value stays Newton's and ``dz/dθ = −M⁻¹ ∂G/∂θ`` exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._norm import rms_norm
from .._tableau import DIRKTableau
from .._term import Term
from ..interpolation import hermite_coefficients
from ._combine import combine, per_sample
from ._newton import Factorization, JacobianSpec, check_jacobian_spec, factor, identity_like, jacobian, solve_factored
from .base import AbstractSolver, StepResult

# The step idle samples take: small enough to change nothing, large enough that 1/dt is finite in float32.
IDLE_DT = 1e-12
# Re-evaluate the Jacobian when Newton needed more than 2 iterations at a contraction rate above this.
SLOW_RATE = 1e-3


class DIRKState(NamedTuple):
    jac: torch.Tensor  # (B, N, N)
    lu: torch.Tensor  # (B, N, N) factorization of I - lu_dtg * jac
    pivots: torch.Tensor  # (B, N)
    lu_dtg: torch.Tensor  # (B,) float64: the dt γ of the factorization (0: none yet)
    need_jac: torch.Tensor  # (B,) bool
    n_jac: torch.Tensor
    n_lu: torch.Tensor
    n_newton: torch.Tensor
    n_newton_failures: torch.Tensor


class DIRK(AbstractSolver):
    """An ESDIRK method given by its tableau, with simplified Newton on batched LU factorizations.

    Args:
        jac: ``"autodiff"`` (``torch.func``, default), ``"fd"`` (finite differences), or a callable
            ``jac(t, y[, args]) -> (B, N, N)``.
        max_newton_iters: iterations per stage before the step is declared failed.
    """

    tableau: DIRKTableau
    adaptive = True
    compilable = False  # Newton convergence is decided on the host within a step
    uses_jacobian = True

    def __init__(self, jac: JacobianSpec = "autodiff", max_newton_iters: int = 7, tableau: DIRKTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        if not self.tableau.explicit_first_stage:
            raise ValueError(f"{self.tableau.name}: only ESDIRK tableaus (explicit first stage) are supported")
        if not isinstance(max_newton_iters, int) or max_newton_iters < 2:
            raise ValueError(f"max_newton_iters must be an int >= 2; got {max_newton_iters!r}")
        self.jac = check_jacobian_spec(jac)
        self.max_newton_iters = max_newton_iters
        tab = self.tableau
        self.order = tab.order
        self.error_order = min(tab.order, tab.embedded_order)
        self.dense_order = 3
        self.evals_per_step = 0  # Newton evaluations vary: reported per step as extra_evals

    def init_state(self, term: Term, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> DIRKState:
        batch, n = y0.shape[0], y0[0].numel()
        zeros = torch.zeros(batch, dtype=torch.int64, device=y0.device)
        return DIRKState(
            jac=y0.new_zeros(batch, n, n),
            lu=y0.new_zeros(batch, n, n),
            pivots=torch.ones(batch, n, dtype=torch.int32, device=y0.device),
            lu_dtg=torch.zeros(batch, dtype=torch.float64, device=y0.device),
            need_jac=torch.ones(batch, dtype=torch.bool, device=y0.device),
            n_jac=zeros,
            n_lu=zeros,
            n_newton=zeros,
            n_newton_failures=zeros,
        )

    def step(self, term, t, dt, y, f0, state: DIRKState, rtol, atol) -> StepResult:
        tab = self.tableau
        gamma = tab.gamma
        # Idle samples (dt = 0) take a negligible step instead: finite values, nothing singular on the graph.
        dt_safe = torch.where(dt == 0, IDLE_DT, dt)
        dt_y = per_sample(dt_safe, y)
        dtg = dt_safe * gamma
        times = term.stage_times(t, dt_safe, torch.tensor(tab.c, dtype=torch.float64, device=t.device), y.dtype)
        extra = torch.zeros(y.shape[0], dtype=torch.int64, device=y.device)

        with torch.no_grad():
            jac, n_jac = state.jac, state.n_jac
            if bool(state.need_jac.any()):
                jac_new, _ = jacobian(term, times[0], y.detach(), self.jac, with_time=False, atol=atol)
                jac = torch.where(state.need_jac[:, None, None], jac_new, jac)
                n_jac = n_jac + state.need_jac
            need_lu = state.need_jac | (dtg != state.lu_dtg)
            lu, pivots, n_lu = state.lu, state.pivots, state.n_lu
            singular = torch.zeros_like(state.need_jac)
            if bool(need_lu.any()):
                fresh = factor(identity_like(jac) - per_sample(dtg, jac) * jac)
                lu = torch.where(need_lu[:, None, None], fresh.lu, lu)
                pivots = torch.where(need_lu[:, None], fresh.pivots, pivots)
                singular = fresh.singular & need_lu
                n_lu = n_lu + need_lu
            newton = Factorization(lu, pivots, singular)

        grad = torch.is_grad_enabled() and (y.requires_grad or f0.requires_grad)
        dtg_y = per_sample(dtg, y)
        ks = [f0]
        failed = singular.clone()
        slow = torch.zeros_like(failed)
        n_newton = torch.zeros_like(extra)
        z = y
        for i in range(1, tab.stages):
            base = y + dt_y * combine(tab.a[i][:-1], ks)
            # A stage at the same time as the previous one (the last stages of stiffly accurate methods, both at
            # c = 1) starts from that stage's value: an explicit extrapolation is way off in stiff components.
            same_time = i > 1 and tab.c[i] == tab.c[i - 1]
            guess = z.detach() if same_time else base.detach() + dtg_y * ks[-1].detach()
            z, converged, iters, stage_slow = self._newton(
                term, times[i], base.detach(), guess, dtg_y, newton, y, rtol, atol
            )
            failed |= ~converged
            slow |= stage_slow
            n_newton = n_newton + iters
            extra = extra + iters
            if grad:
                z = self._reattach(term, times[i], z, base, dtg_y, atol)
                extra = extra + 1
            ks.append((z - base) / dtg_y)
        y1 = z  # stiffly accurate: the last stage is y1
        y_err = dt_y * combine(tab.b_err, ks)
        new_state = state._replace(
            jac=jac,
            lu=lu,
            pivots=pivots,
            lu_dtg=torch.where(need_lu, dtg, state.lu_dtg),
            need_jac=failed | slow,
            n_jac=n_jac,
            n_lu=n_lu,
            n_newton=state.n_newton + n_newton,
            n_newton_failures=state.n_newton_failures + failed,
        )
        return StepResult(
            y1=y1,
            f1=ks[-1],
            y_err=y_err,
            y_err_low=None,
            ks=ks,
            f0=f0,
            state=new_state,
            failed=failed,
            extra_evals=extra,
        )

    def _newton(self, term, t_i, base, guess, dtg_y, fact, y, rtol, atol):
        """Simplified Newton for ``z = base + dtγ f(t_i, z)``: returns ``z``, converged, iterations, slow."""
        batch = y.shape[0]
        # scipy's Radau: max(10 eps / rtol, min(0.03, sqrt(rtol))), on the tolerance-scaled norm.
        rtol_min = rtol.flatten(1).amin(1).clamp_min(torch.finfo(y.dtype).eps)
        newton_tol = torch.maximum(10 * torch.finfo(y.dtype).eps / rtol_min, rtol_min.sqrt().clamp_max(0.03))
        with torch.no_grad():
            z = guess
            active = torch.ones(batch, dtype=torch.bool, device=y.device)
            converged = torch.zeros_like(active)
            iters = torch.zeros(batch, dtype=torch.int64, device=y.device)
            rate = torch.ones(batch, dtype=newton_tol.dtype, device=y.device)
            norm_prev = torch.full_like(rate, float("inf"))
            for k in range(self.max_newton_iters):
                fz = term.call(t_i, z)
                residual = base + dtg_y * fz - z
                dz = solve_factored(fact, residual)
                scale = torch.addcmul(atol, rtol, z.abs())
                norm = rms_norm(dz / scale).to(rate.dtype)
                iters = iters + active
                z = torch.where(per_sample(active, z), z + dz, z)
                if k > 0:
                    rate = torch.where(active, norm / norm_prev, rate)
                finite = torch.isfinite(norm)
                done = (norm == 0) | ((k > 0) & (rate < 1) & (rate / (1 - rate) * norm < newton_tol))
                diverged = ~finite | (
                    (k > 0)
                    & ((rate >= 1) | (rate ** (self.max_newton_iters - 1 - k) / (1 - rate) * norm > newton_tol))
                    & ~done
                )
                converged = converged | (active & done)
                active = active & ~done & ~diverged
                norm_prev = norm
                if not bool(active.any()):
                    break
            slow = converged & (iters > 2) & (rate > SLOW_RATE)
        return z, converged, iters, slow

    def _reattach(self, term, t_i, z, base, dtg_y, atol):
        """Implicit-function-theorem gradient of the converged stage (see the module docstring)."""
        with torch.no_grad():
            jac, _ = jacobian(term, t_i, z, self.jac, with_time=False, atol=atol)
            fact = factor(identity_like(jac) - dtg_y.reshape(-1, 1, 1) * jac)
        residual = z - base - dtg_y * term.call(t_i, z)
        correction = solve_factored(fact, residual)
        # Value-neutral: the stage keeps Newton's value (so the solve does not depend on whether gradients are
        # tracked); only the derivative −M⁻¹ ∂G/∂θ is attached.
        return z - (correction - correction.detach())

    def commit(self, old: DIRKState, new: DIRKState, accept: torch.Tensor, running: torch.Tensor) -> DIRKState:
        # Idle samples keep their state (and counters); running ones take the new one, accepted or not.
        return DIRKState(*(_rows_where(running, b, a) for a, b in zip(old, new)))

    def statistics(self, state: DIRKState) -> dict[str, torch.Tensor]:
        return {
            "n_jac_evals": state.n_jac,
            "n_lu_decompositions": state.n_lu,
            "n_newton_iters": state.n_newton,
            "n_newton_failures": state.n_newton_failures,
        }

    def dense_coefficients(self, step: StepResult, y0: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        return hermite_coefficients(per_sample(dt, y0), y0, step.y1, step.f0, step.f1)


def _rows_where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` for the samples (leading dim) where ``mask``, else ``b``."""
    return torch.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
