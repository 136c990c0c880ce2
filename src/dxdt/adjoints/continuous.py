"""Continuous adjoints: solve the adjoint equation backwards in time with the same loop.

With ``a(t) = ∂L/∂y(t)``, the adjoint equation is ``da/dt = -aᵀ ∂f/∂y`` and the parameter gradient is
``∫ aᵀ ∂f/∂θ dt``; ``a`` jumps by ``∂L/∂y(t_k)`` at every save time ``t_k``. The backward pass sweeps the
save times from the last to ``t0``, one backward solve per interval.

Where the parameter integral is computed:

- joint mode: in the augmented state, ``(y, a, g)`` as one system (torchdiffeq's layout; with
  ``seminorm=True`` the ``g`` components do not count in the error norm, which saves steps);
- per-sample mode: each sample takes its own backward steps, but the parameters are shared, so
  ``Σ_b ∫ a_bᵀ ∂f/∂θ dt`` is summed by Gauss–Legendre quadrature (3 nodes, order 6) on every accepted
  step, from the step's dense output: one batched vector-Jacobian product per node gives the sum over the
  batch directly, whatever each sample's step size.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import math
from collections.abc import Sequence

import torch

from .._compiled import tracing_autograd
from .._loop import Loop, integrate
from .._problem import ODEProblem, from_loop_layout, to_loop_layout
from .._solution import Solution, Status, describe_status
from ..interpolation.dense_solution import DenseSolution
from ..interpolation.polynomial import evaluate_polynomial
from ..solvers import AbstractSolver, get_solver
from ..solvers._combine import per_sample
from ..solvers.base import StepResult
from ._augmented import AugmentedTerm, seminorm_tolerances, unflat, vjp
from ._function import DifferentiableSolve, initial_time_gradient, save_time_gradients
from ._params import check_tracked, find_params, param_list, unique_requiring_grad
from .base import AbstractGradient

# Gauss–Legendre nodes and weights on [0, 1]: exact for polynomials of degree 5.
_GL_NODES = (0.5 - math.sqrt(15) / 10, 0.5, 0.5 + math.sqrt(15) / 10)
_GL_WEIGHTS = (5 / 18, 8 / 18, 5 / 18)


class ContinuousAdjoint(AbstractGradient):
    """Common options and the backward sweep of :class:`BacksolveAdjoint` and :class:`InterpolatingAdjoint`.

    Args:
        params: the tensors to compute gradients for (torchdiffeq's ``adjoint_params``). Default: the
            parameters of ``f`` if it is an ``nn.Module`` (or a bound method of one), modules and tensors
            requiring grad that ``f`` closes over or names as globals, and the tensors requiring grad in
            ``args``. If ``f`` reads any other tensor that requires grad, the backward pass raises a
            ``ValueError`` saying to pass it here. Given explicitly, exactly these get gradients.
        solver: the method of the backward solve (a name or instance); default: the forward method.
        rtol, atol: the backward solve's tolerances; default: the forward's.
        seminorm: leave the parameter-gradient components out of the backward error norm (joint mode; Kidger
            et al. 2021: the same accuracy in fewer steps). Per-sample mode always integrates them by
            quadrature outside the error norm.
        max_steps: the backward solve's step budget per interval between save times; default: the forward's.
    """

    #: whether the backward state carries y (backsolve) or reads it from the forward dense solution
    carries_y: bool

    def __init__(
        self,
        params: Sequence[torch.Tensor] | None = None,
        *,
        solver: str | AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        seminorm: bool = True,
        max_steps: int | None = None,
    ):
        self.params = param_list(params)
        self.solver = None if solver is None else get_solver(solver)
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if tol is not None and (not isinstance(tol, (int, float)) or not tol >= 0 or math.isinf(tol)):
                raise ValueError(f"{name} of the adjoint must be a non-negative finite number; got {tol!r}")
        if atol == 0:
            raise ValueError("atol of the adjoint must be positive; got 0")
        self.rtol, self.atol = rtol, atol
        self.seminorm = bool(seminorm)
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps of the adjoint must be a positive int; got {max_steps!r}")
        self.max_steps = max_steps

    def check(self, problem: ODEProblem) -> None:
        if problem.save.steps or problem.save.dense:
            raise ValueError(
                f"gradient={self.name!r} differentiates the states at the save times only; SaveAt(steps=True) "
                "and SaveAt(dense=True) are not supported with it: save at the times you need "
                "(saveat=ts), or use gradient='autodiff' or 'checkpoint'"
            )

    def solve(self, problem: ODEProblem) -> Solution:
        params = unique_requiring_grad(self.params) if self.params is not None else None
        if params is None:
            params = find_params(problem.term.f, problem.term.args)
        sweep = _Sweep(self, problem, params)
        ys = DifferentiableSolve.apply(sweep, problem.y0, problem.t0, problem.save_times(), *params)
        return dataclasses.replace(sweep.solution, ys=from_loop_layout(ys, problem.joint))

    @abc.abstractmethod
    def field(self, sweep: _Sweep, joint_params: list[torch.Tensor]):
        """The backward vector field ``fn(t, z)`` on the flat augmented state."""

    @abc.abstractmethod
    def pack(self, sweep: _Sweep, y: torch.Tensor, a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """The flat backward state at a save time from ``y``, ``a`` (loop layout) and the joint ``g`` row."""

    @abc.abstractmethod
    def state_at(self, sweep: _Sweep, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, a)`` in loop layout from the flat backward state ``z`` at times ``t``."""

    def stops(self, sweep: _Sweep, t_start: torch.Tensor, t_end: torch.Tensor) -> torch.Tensor | None:
        """Times ``(n, K)`` the backward steps must land on between ``t_start`` and ``t_end``, or ``None``."""
        return None


class _Sweep:
    """One differentiable solve: the forward pass and the adjoint's backward sweep over the save times."""

    def __init__(self, adjoint: ContinuousAdjoint, problem: ODEProblem, params: list[torch.Tensor]):
        self.adjoint, self.problem, self.params = adjoint, problem, params
        self.name = adjoint.name
        self.m = problem.y0[0].numel()
        self.solution: Solution | None = None
        self.dense: DenseSolution | None = None

    # -- forward ------------------------------------------------------------------------------------------

    def forward(self) -> torch.Tensor:
        problem = self.problem
        with torch.no_grad():
            record = None if self.adjoint.carries_y else True  # the interpolating adjoint reads y(t)
            result = integrate(problem.loop(record=record), problem.y0.detach())
            self.solution, self.dense = problem.assemble(result)
            self.success = result.status == Status.SUCCESS
            return to_loop_layout(self.solution.ys, problem.joint)

    # -- backward -----------------------------------------------------------------------------------------

    def backward(self, grad_ys: torch.Tensor, needs: tuple[bool, ...]):
        """Gradients for ``(y0, t0, ts, *params)`` given ``∂L/∂ys`` (loop layout ``(n, T, *S)``)."""
        problem, params = self.problem, self.params
        needs_t0, needs_ts = needs[1], needs[2]
        ok = self.success
        ys = to_loop_layout(self.solution.ys, problem.joint)
        y0 = problem.y0.detach()
        t0 = problem.t0.detach()
        ts = problem.save_times().detach()
        n_save = ts.shape[1]
        okv = per_sample(ok, y0)
        # Failed samples (throw=False) get no gradient; their backward intervals shrink to [t0, t0] at y0 so
        # that nothing non-finite enters the batched products.
        grad_ys = torch.where(okv.unsqueeze(1), grad_ys, 0.0)
        ys = torch.where(okv.unsqueeze(1), ys, y0.unsqueeze(1))
        ts = torch.where(ok[:, None], ts, t0[:, None])

        # Parameters found automatically: the first backward evaluation of f checks that none was missed.
        self.unchecked = self.adjoint.params is None
        a = torch.zeros_like(y0)
        g_theta = [torch.zeros_like(p) for p in params]
        grad_ts = save_time_gradients(problem.term, ts, ys, grad_ys) if needs_ts else None
        for k in range(n_save - 1, -1, -1):
            y_k, t_k = ys[:, k], ts[:, k]
            a = a + grad_ys[:, k]
            t_prev = ts[:, k - 1] if k > 0 else t0
            if bool((t_prev != t_k).any()):
                a, g = self._interval(t_k, t_prev, y_k, a)
                g_theta = [x + dx for x, dx in zip(g_theta, g)]
        grad_t0 = initial_time_gradient(problem.term, t0, y0, a) if needs_t0 else None
        grad_y0 = a if needs[0] else None
        grad_params = [g.to(p.dtype) for g, p in zip(g_theta, params)]
        return (grad_y0, grad_t0, grad_ts, *grad_params)

    def inspect(self, out: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        """Once per backward pass: every tensor requiring grad that f reads must be a parameter."""
        if self.unchecked and out.requires_grad:
            self.unchecked = False
            check_tracked(out, [*self.params, *inputs], self.adjoint.name)

    def _interval(self, t_start: torch.Tensor, t_end: torch.Tensor, y: torch.Tensor, a: torch.Tensor):
        """Integrate the adjoint from ``t_start`` back to ``t_end``; the new ``a`` and the parameter gradients."""
        adjoint, problem, params = self.adjoint, self.problem, self.params
        joint_params = params if problem.joint else []
        g0 = y.new_zeros(1, sum(p.numel() for p in joint_params)) if problem.joint else None
        z0 = adjoint.pack(self, y, a, g0)
        solver = self._backward_solver()
        quadrature = None
        if params and not problem.joint:
            quadrature = _Quadrature(self, solver, params)
        rtol, atol = self._tolerances(z0, len_g=g0.shape[1] if g0 is not None else 0)
        # Compiled like the forward solve when the method is explicit: dynamo then traces the fields' calls of
        # autograd.grad. A stiff method's Jacobian of such a field (forward mode over reverse) it cannot trace.
        compile = problem.compile and solver.compilable and not solver.uses_jacobian
        loop = Loop(
            solver,
            problem.controller,
            AugmentedTerm(adjoint.field(self, joint_params)),
            t_start,
            t_end,
            rtol=rtol,
            atol=atol,
            dt0=problem.dt0,
            dt_min=problem.dt_min,
            dt_max=problem.dt_max,
            max_steps=adjoint.max_steps or problem.max_steps,
            stops=adjoint.stops(self, t_start, t_end),
            record=False,
            compile=compile,
            on_step=quadrature,
        )
        with tracing_autograd(compile):
            result = integrate(loop, z0)
        if not bool((result.status == Status.SUCCESS).all()):
            raise RuntimeError(
                f"the {adjoint.name!r} adjoint's backward solve failed ({describe_status(result.status)}) on "
                f"the interval from t = {t_start.tolist()[:4]} back to {t_end.tolist()[:4]}: "
                f"{Status(int(result.status.max())).message}. Try gradient='interpolate' or 'checkpoint', "
                "or tighter forward tolerances"
            )
        _, a_new = adjoint.state_at(self, t_end, result.y)
        if problem.joint:
            grads = unflat(result.y[:, -g0.shape[1] :], params) if params else []
        else:
            grads = quadrature.total if quadrature is not None else []
        return a_new, grads

    def _backward_solver(self) -> AbstractSolver:
        solver = self.adjoint.solver or self.problem.solver
        if callable(getattr(solver, "jac", None)):  # the user's Jacobian is f's, not the adjoint field's
            solver = copy.copy(solver)
            solver.jac = "autodiff"
        return solver

    def _tolerances(self, z0: torch.Tensor, len_g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component tolerances of the flat backward state: the forward's for y and a (or the adjoint's
        own), and for the parameter row either the same or, with the seminorm, none."""
        adjoint, problem = self.adjoint, self.problem
        n, width = z0.shape
        counted = width - len_g if adjoint.seminorm else width
        tols = []
        for own, forward in ((adjoint.rtol, problem.rtol), (adjoint.atol, problem.atol)):
            base = forward.reshape(n, -1) if own is None else torch.full_like(z0[:, : self.m], own)
            tol = base.repeat(1, (width - len_g) // self.m)
            if counted > tol.shape[1]:  # the parameter row, error-controlled at the mean tolerance
                tol = torch.cat([tol, tol.mean(1, keepdim=True).expand(n, len_g)], dim=1)
            tols.append(tol)
        return seminorm_tolerances(*tols, width)


class _Quadrature:
    """Per-sample mode's parameter gradient: Gauss–Legendre quadrature of ``-aᵀ ∂f/∂θ`` on every accepted
    backward step, from the step's dense output, summed over the batch by one vector-Jacobian product per
    node."""

    def __init__(self, sweep: _Sweep, solver: AbstractSolver, params: list[torch.Tensor]):
        self.sweep, self.solver, self.params = sweep, solver, params
        self.total = [torch.zeros_like(p) for p in params]

    def __call__(self, t: torch.Tensor, dt: torch.Tensor, step: StepResult, z: torch.Tensor) -> None:
        sweep = self.sweep
        coefficients = self.solver.dense_coefficients(step, z, dt)
        for node, weight in zip(_GL_NODES, _GL_WEIGHTS):
            t_q = t + node * dt
            z_q = evaluate_polynomial(coefficients, torch.tensor(node, dtype=z.dtype, device=z.device))
            y_q, a_q = sweep.adjoint.state_at(sweep, t_q, z_q)
            # d g/dt = -aᵀ ∂f/∂θ integrated over [t, t + dt] (dt < 0 backwards in time).
            cotangent = a_q * per_sample(-weight * dt, a_q)
            _, _, grads = vjp(sweep.problem.term, t_q, y_q, cotangent, self.params, wrt_y=False, inspect=sweep.inspect)
            self.total = [x + g for x, g in zip(self.total, grads)]
