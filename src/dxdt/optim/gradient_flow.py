"""``GradientFlow``: an optimizer that integrates ``dθ/dt = −∇L(θ)`` with an adaptive dxdt solver.

Gradient descent is explicit Euler on this ODE with a step size (the learning rate) that must be tuned
and stay below ``2/λmax``. Here the step is chosen by local error control, as for any ODE: no learning rate.
An explicit solver (``"tsit5"``, ...) follows the flow wherever it is smooth; on ill-conditioned losses its
steps are held near the edge of its stability region by the error control, like a well-tuned gradient
descent at a few gradient evaluations per step. The stiff solver (``"ros2"``: a matrix-free Rosenbrock
method, :mod:`dxdt.optim.rosenbrock`) is L-stable: its steps grow as the flow settles and the iteration
becomes Newton's method, at the price of Hessian-vector products.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

import dxdt

from ..controllers import AbstractController, PIController
from ..solvers import AbstractSolver
from ._objective import Closure, ClosureObjective
from .rosenbrock import MatrixFreeRosenbrock

STIFF_SOLVERS = ("ros2", "stiff")
# Default (rtol, atol). Explicit: error per unit step, relative to the motion dt·|f| (no absolute floor: it
# would let a stiff direction persist at the floor's level). Stiff: loose absolute accuracy of the path,
# since an L-stable method is stable at any step and only the end point matters; tighter values follow the
# flow more closely at more steps.
EXPLICIT_TOLERANCES = (1e-3, 0.0)
STIFF_TOLERANCES = (1e-1, 1e-2)
# The step size is capped here: beyond it a Rosenbrock step is Newton's method to machine precision, and an
# unbounded growth at an exact minimum (zero error) would overflow.
DT_CAP = 1e12
T_END = 1e300  # "integrate forever": each call stops after its step budget, never at t1


class _CarryingController(AbstractController):
    """Wraps a controller so that consecutive ``solve`` calls continue one step-size sequence.

    It starts the error memory from the previous call and records its last proposal (which ``Solution``
    does not carry).
    """

    def __init__(self, inner: AbstractController, err_prev: torch.Tensor | None):
        self.inner = inner
        self.err_prev0 = err_prev
        self.dt_next: torch.Tensor | None = None
        self.err_prev: torch.Tensor | None = None

    def propose(self, dt, err, err_prev, accept, error_order):
        if self.err_prev is None and self.err_prev0 is not None:
            err_prev = self.err_prev0
        self.dt_next, self.err_prev = self.inner.propose(dt, err, err_prev, accept, error_order)
        return self.dt_next, self.err_prev


class GradientFlow(torch.optim.Optimizer):
    """Minimise a loss by integrating the gradient flow ``dθ/dt = −∇L(θ)`` with error control.

    Each :meth:`step` attempts ``steps_per_call`` steps of the ODE solver (accepted or rejected by the
    local error estimate) and leaves the parameters at the last accepted state; the step size and the
    controller's memory carry over between calls, so a training loop integrates one continuous flow.
    Full-batch: the closure must compute the same loss function at every call (the ODE has one right-hand
    side); the gradient at the end of one call is reused at the start of the next.

    Args:
        params: the parameters (one group; all of one dtype and device).
        solver: an explicit dxdt method name (``"tsit5"``, ``"dopri5"``, ``"bosh3"``, ``"heun"``, ...), an
            :class:`~dxdt.solvers.AbstractSolver` instance, or ``"ros2"`` (alias ``"stiff"``) for the
            matrix-free Rosenbrock method, which needs Hessian-vector products.
        rtol, atol: local error tolerances. Explicit solvers (default ``rtol=1e-3, atol=0``): the error of a
            step must stay below ``atol + rtol · dt · ‖f‖`` (RMS norms; error per unit step), relative to the
            motion. ``"ros2"`` (default ``rtol=0.1, atol=1e-2``): the usual ``atol + rtol · |θ|``
            componentwise; loose because only the end point matters and the method is stable at any step.
        steps_per_call: solver steps attempted per :meth:`step`.
        dt0: the first step size (default: ``1/λ`` for the curvature ``λ`` along the gradient, one extra
            gradient).
        dt_max: the largest step size.
        controller: a dxdt controller (default :class:`~dxdt.PIController`).
        linear_rtol, linear_max_iter: conjugate-gradient tolerance (default ``0.1 · rtol``: the linear solves
            an order more accurate than the steps) and iteration cap for ``"ros2"``.

    Attributes (in ``self.stats``): ``t`` (flow time reached), ``dt`` (next step size), ``n_grad``,
    ``n_hvp``, ``n_steps``, ``n_accepted``, ``n_rejected``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        solver: str | AbstractSolver = "tsit5",
        rtol: float | None = None,
        atol: float | None = None,
        steps_per_call: int = 1,
        dt0: float | None = None,
        dt_max: float = math.inf,
        controller: AbstractController | None = None,
        linear_rtol: float | None = None,
        linear_max_iter: int | None = None,
    ):
        if not isinstance(steps_per_call, int) or isinstance(steps_per_call, bool) or steps_per_call < 1:
            raise ValueError(f"steps_per_call must be a positive int; got {steps_per_call!r}")
        if dt0 is not None and not dt0 > 0:
            raise ValueError(f"dt0 must be positive; got {dt0}")
        self.stiff = isinstance(solver, str) and solver.lower() in STIFF_SOLVERS
        defaults = STIFF_TOLERANCES if self.stiff else EXPLICIT_TOLERANCES
        rtol = defaults[0] if rtol is None else rtol
        atol = defaults[1] if atol is None else atol
        if not (rtol > 0 and atol >= 0):
            raise ValueError(f"need rtol > 0 and atol >= 0; got rtol={rtol}, atol={atol}")
        super().__init__(params, dict(rtol=rtol, atol=atol))
        if len(self.param_groups) != 1:
            raise ValueError("GradientFlow integrates one ODE over all parameters: pass a single parameter group")
        self._objective = ClosureObjective(self.param_groups[0]["params"])
        self._solver: AbstractSolver | MatrixFreeRosenbrock
        if self.stiff:
            self._solver = MatrixFreeRosenbrock(
                lambda y, v: -self._objective.hvp(y, v),
                linear_rtol=min(0.1 * rtol, 0.1) if linear_rtol is None else linear_rtol,
                linear_max_iter=linear_max_iter,
            )
        else:
            self._solver = dxdt.solvers.get_solver(solver)
            if not self._solver.adaptive:
                raise ValueError(
                    f"{self._solver!r} has no error estimate: GradientFlow chooses its steps by error control. "
                    "Use an adaptive method (tsit5, dopri5, bosh3, heun) or, for a fixed step, plain gradient "
                    "descent (torch.optim.SGD is explicit Euler on the same flow)"
                )
        self.steps_per_call = steps_per_call
        self.dt_max = min(dt_max, DT_CAP)
        self._controller = controller if controller is not None else PIController()
        self.stats: dict[str, Any] = dict(
            t=0.0, dt=dt0, n_grad=0, n_hvp=0, n_steps=0, n_accepted=0, n_rejected=0, err_prev=None
        )

    @property
    def solver(self) -> AbstractSolver | MatrixFreeRosenbrock:
        return self._solver

    def _field(self, t: torch.Tensor, u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        _, g = self._objective.loss_grad(theta + u[0], create_graph=self.stiff)
        return -g.unsqueeze(0)

    def _initial_dt(self, theta: torch.Tensor, f0: torch.Tensor) -> float:
        """``1/λ`` for the curvature ``λ`` along the gradient, from one more gradient: a step that neither
        crawls nor overshoots along the steepest direction; the controller takes over from there."""
        fnorm = float(f0.norm())
        if fnorm == 0:
            return 1.0
        h = 1e-6 * (1 + float(theta.norm())) / fnorm
        f1 = -self._objective.loss_grad(theta + h * f0)[1]
        lam = float((f1 - f0).norm()) / (h * fnorm)
        return min(1.0 / lam if lam > 0 else 1.0, self.dt_max)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        """Advance the flow by ``steps_per_call`` attempted steps; returns the loss before the step.

        Args:
            closure: re-evaluates the model and returns the loss. For ``"ros2"`` it must not call
                ``backward()``; for explicit solvers it may.
        """
        if closure is None:
            raise ValueError("GradientFlow needs a closure that returns the loss: optimizer.step(closure)")
        obj = self._objective
        obj.set_closure(closure, keep_cache=True)
        theta = obj.get_flat()
        loss, grad = obj.loss_grad(theta, create_graph=self.stiff)
        if self.stiff:
            theta = self._advance_stiff(theta, -grad)
        else:
            theta = self._advance_explicit(theta)
        obj.set_flat(theta)
        self.stats["n_grad"], self.stats["n_hvp"] = obj.n_grad, obj.n_hvp
        return loss

    def _advance_explicit(self, theta: torch.Tensor) -> torch.Tensor:
        group, st = self.param_groups[0], self.stats
        ctrl = _CarryingController(self._controller, st["err_prev"])
        f64 = dict(dtype=torch.float64, device=theta.device)
        f0 = -self._objective.loss_grad(theta)[1]
        if st["dt"] is None:
            st["dt"] = self._initial_dt(theta, f0)
        # Error per unit step, norm-wise: the local error must be small against the motion dt·|f| of the step.
        # A tolerance floor that does not shrink with the flow (atol + rtol|θ|) lets an explicit method settle
        # at the edge of its stability region with the stiffest direction neither growing nor decaying, the
        # gradient stalled at a level proportional to the tolerance; relative to the motion it decays.
        atol_t = group["atol"] + group["rtol"] * st["dt"] * float(f0.norm()) / math.sqrt(f0.numel())
        atol_t = max(atol_t, torch.finfo(theta.dtype).tiny)
        # The state is the displacement u = θ − θ_start: rtol then bounds the error relative to the motion,
        # not to |θ| (see the class docstring).
        sol = dxdt.solve(
            self._field,
            torch.zeros_like(theta).unsqueeze(0),
            torch.tensor(st["t"], **f64),
            torch.tensor(T_END, **f64),
            solver=self._solver,
            rtol=0.0,
            atol=atol_t,
            dt0=torch.tensor(st["dt"], **f64),
            dt_max=self.dt_max,
            max_steps=self.steps_per_call,
            controller=ctrl,
            args=theta,
            throw=False,
        )
        status = dxdt.Status(int(sol.status[0]))
        if status not in (dxdt.Status.SUCCESS, dxdt.Status.MAX_STEPS):
            raise RuntimeError(
                f"GradientFlow: the ODE solver stopped with {status.name} at t = {float(sol.t_final[0]):.6g}: "
                f"{status.message}. The parameters were left unchanged."
            )
        st["t"] = float(sol.t_final[0])
        if ctrl.dt_next is not None:
            st["dt"] = min(float(ctrl.dt_next[0]), self.dt_max)
            st["err_prev"] = ctrl.err_prev
        st["n_steps"] += int(sol.stats.n_steps[0])
        st["n_accepted"] += int(sol.stats.n_accepted[0])
        st["n_rejected"] += int(sol.stats.n_rejected[0])
        return theta + sol.y_final[0]

    def _advance_stiff(self, y: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """``steps_per_call`` attempts of the matrix-free Rosenbrock step under dxdt's controller."""
        group, st, ros = self.param_groups[0], self.stats, self._solver
        rtol, atol = group["rtol"], group["atol"]
        obj = self._objective

        def field(x: torch.Tensor) -> torch.Tensor:
            return -obj.loss_grad(x, create_graph=True)[1]

        if st["dt"] is None:
            st["dt"] = self._initial_dt(y, f0)
        f64 = dict(dtype=torch.float64, device=y.device)
        err_prev = st["err_prev"] if st["err_prev"] is not None else torch.ones(1, **f64)
        for _ in range(self.steps_per_call):
            dt = min(st["dt"], self.dt_max)
            y1, f1, y_err = ros.step(field, y, f0, dt)
            err = ros.error_ratio(y_err, torch.maximum(y.abs(), y1.abs()), rtol, atol)
            accept = math.isfinite(err) and err <= 1.0
            dt_next, err_prev = self._controller.propose(
                torch.tensor([dt], **f64),
                torch.tensor([err if math.isfinite(err) else math.inf], **f64),
                err_prev,
                torch.tensor([accept], device=y.device),
                ros.error_order,
            )
            st["dt"] = min(float(dt_next[0]), self.dt_max)
            st["n_steps"] += 1
            if accept:
                y, f0 = y1, f1
                st["t"] += dt
                st["n_accepted"] += 1
            else:
                st["n_rejected"] += 1
            if st["dt"] <= abs(st["t"]) * 1e-15 or st["dt"] == 0:
                raise RuntimeError(
                    f"GradientFlow: the step size underflowed at t = {st['t']:.6g}: {dxdt.Status.DT_UNDERFLOW.message}"
                )
        st["err_prev"] = err_prev
        return y
