"""Newton flow, damped Newton, and Gauss–Newton for least squares, matrix-free (Hessian- or
Gauss–Newton-vector products and conjugate gradients).

The Newton flow ``dθ/dt = −H(θ)⁻¹ ∇L(θ)`` moves the gradient along a straight line to zero:
``d∇L/dt = H θ' = −∇L``, so ``∇L(θ(t)) = e^{−t} ∇L(θ0)`` on every loss (while ``H`` is invertible). Explicit
Euler with step ``dt`` is damped Newton, ``θ ← θ − dt H⁻¹ ∇L``; ``dt = 1`` is Newton's method, which lands
on the minimum of a quadratic in one step and converges quadratically near any nondegenerate minimum. A
backtracking line search (Armijo) on ``dt`` globalises it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ._objective import Closure, ClosureObjective
from .linalg import conjugate_gradient


def _check(dt: float, damping: float, linear_rtol: float) -> None:
    if not 0 < dt <= 1:
        raise ValueError(f"dt must be in (0, 1] (1 is Newton's method, smaller damps it); got {dt}")
    if not damping >= 0:
        raise ValueError(f"damping must be non-negative; got {damping}")
    if not 0 < linear_rtol < 1:
        raise ValueError(f"linear_rtol must be in (0, 1); got {linear_rtol}")


def _backtrack(
    loss_at: Callable[[torch.Tensor], float],
    theta: torch.Tensor,
    p: torch.Tensor,
    loss0: float,
    slope: float,
    dt: float,
) -> tuple[float, int]:
    """Armijo backtracking: the largest ``α = dt/2^k`` with ``L(θ + α p) <= L(θ) + 1e-4 α ∇Lᵀp``.

    Near the minimum the decrease falls below the rounding error of ``L``: that is allowed for, or the line
    search would halve every step there and spoil Newton's quadratic convergence."""
    alpha = dt
    noise = 8 * torch.finfo(theta.dtype).eps * abs(loss0)
    for k in range(40):
        value = loss_at(theta + alpha * p)
        if value <= loss0 + 1e-4 * alpha * slope + noise:
            return alpha, k + 1
        alpha *= 0.5
    return 0.0, 40


class _LinearSolveOptimizer(torch.optim.Optimizer):
    """Shared set-up of the optimizers that solve one linear system (by CG) over all parameters per step."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        dt: float,
        damping: float,
        line_search: bool,
        linear_rtol: float,
        linear_max_iter: int | None,
    ):
        _check(dt, damping, linear_rtol)
        super().__init__(params, dict(dt=dt, damping=damping))
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} solves one linear system over all parameters: pass one group")
        self._objective = ClosureObjective(self.param_groups[0]["params"])
        self.line_search = line_search
        self.linear_rtol = linear_rtol
        self.linear_max_iter = linear_max_iter


class NewtonFlow(_LinearSolveOptimizer):
    """Damped Newton: explicit Euler on the Newton flow, ``θ ← θ − dt (H + μ I)⁻¹ ∇L``.

    The Newton direction is solved by conjugate gradients on Hessian-vector products (double backward through
    the closure), so ``H`` is never formed. Where ``H`` has negative curvature CG stops there (Steihaug) and
    the direction so far, still a descent direction, is used.

    Args:
        params: the parameters (one group).
        dt: the Euler step on the flow: 1 is Newton's method, smaller values damp it.
        damping: ``μ``, added to the Hessian (Levenberg); also the exact Hessian of an L2 penalty ``μ/2 ‖θ‖²``
            that the closure does not include.
        line_search: backtrack ``dt`` until the loss decreases enough (Armijo); costs loss evaluations.
        linear_rtol: CG stops at relative residual ``linear_rtol``. Small values give quadratic convergence,
            larger ones (inexact Newton) fewer products per step.
        linear_max_iter: cap on CG iterations per step (default: the dimension).

    ``self.stats``: ``n_grad`` (gradients), ``n_hvp`` (Hessian-vector products), ``n_loss`` (line-search loss
    evaluations), ``n_negative_curvature``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        dt: float = 1.0,
        damping: float = 0.0,
        line_search: bool = True,
        linear_rtol: float = 1e-4,
        linear_max_iter: int | None = None,
    ):
        super().__init__(params, dt, damping, line_search, linear_rtol, linear_max_iter)
        self.stats = dict(n_grad=0, n_hvp=0, n_loss=0, n_negative_curvature=0)

    def _loss_at(self, theta: torch.Tensor) -> float:
        obj = self._objective
        obj.set_flat(theta)
        with torch.no_grad():
            value = float(obj.closure())
        self.stats["n_loss"] += 1
        return value

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        """One damped Newton step; returns the loss before it. The closure must not call ``backward()``."""
        if closure is None:
            raise ValueError(f"{type(self).__name__} needs a closure that returns the loss: optimizer.step(closure)")
        group = self.param_groups[0]
        obj = self._objective
        obj.set_closure(closure)
        theta = obj.get_flat()
        loss, g = obj.loss_grad(theta, create_graph=True)
        mu = group["damping"]
        if mu:
            g = g + mu * theta
        res = conjugate_gradient(
            lambda v: obj.hvp(theta, v) + mu * v, -g, rtol=self.linear_rtol, max_iter=self.linear_max_iter
        )
        p = res.x
        self.stats["n_negative_curvature"] += res.negative_curvature
        dt = group["dt"]
        if self.line_search:
            loss0 = float(loss) + (0.5 * mu * float(theta @ theta) if mu else 0.0)

            def value(x: torch.Tensor) -> float:
                return self._loss_at(x) + (0.5 * mu * float(x @ x) if mu else 0.0)

            dt, _ = _backtrack(value, theta, p, loss0, float(g @ p), dt)
        obj.set_flat(theta + dt * p)
        self.stats["n_grad"], self.stats["n_hvp"] = obj.n_grad, obj.n_hvp
        return loss


class GaussNewton(_LinearSolveOptimizer):
    """Gauss–Newton (Levenberg–Marquardt with fixed damping) for ``L = ½ ‖r(θ)‖²``.

    The closure returns the residuals ``r`` (any shape), not the loss. The step solves
    ``(JᵀJ + μ I) p = −Jᵀ r`` by conjugate gradients on Gauss–Newton-vector products ``Jᵀ(J v)``
    (``J v`` by the double-vjp trick, ``Jᵀ u`` by one backward), then ``θ ← θ + dt p``. ``JᵀJ`` is the
    Hessian without the residual-curvature term ``Σ r_i ∇²r_i``: positive semi-definite always, exact for
    linear residuals, and Newton's convergence on zero-residual problems.

    Args:
        params: the parameters (one group).
        dt: step along the direction (1: full Gauss–Newton step).
        damping: ``μ`` (Levenberg–Marquardt); ``0`` is pure Gauss–Newton.
        line_search: Armijo backtracking on ``½ ‖r‖²``.
        linear_rtol, linear_max_iter: CG tolerance and iteration cap.

    ``self.stats``: ``n_grad`` (residual evaluations with a backward), ``n_ggn`` (Gauss–Newton-vector
    products), ``n_loss``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        dt: float = 1.0,
        damping: float = 0.0,
        line_search: bool = True,
        linear_rtol: float = 1e-10,
        linear_max_iter: int | None = None,
    ):
        super().__init__(params, dt, damping, line_search, linear_rtol, linear_max_iter)
        self.stats = dict(n_grad=0, n_ggn=0, n_loss=0)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        """One Gauss–Newton step; returns ``½ ‖r‖²`` before it. The closure returns the residuals."""
        if closure is None:
            raise ValueError("GaussNewton needs a closure that returns the residuals: optimizer.step(closure)")
        group = self.param_groups[0]
        obj = self._objective
        params = obj.params
        theta = obj.get_flat()
        with torch.enable_grad():
            r = closure()
            if not isinstance(r, torch.Tensor) or not r.requires_grad:
                raise ValueError("the closure must return the residuals as a tensor that depends on the parameters")
            u = torch.zeros_like(r, requires_grad=True)
            jtu = torch.autograd.grad(r, params, u, create_graph=True, allow_unused=True)
        self.stats["n_grad"] += 1
        zeros = [torch.zeros_like(p) for p in params]
        jtu_used = [(j, z) for j, z in zip(jtu, zeros) if j is not None]

        def jt(w: torch.Tensor) -> torch.Tensor:
            out = torch.autograd.grad(r, params, w, retain_graph=True, allow_unused=True)
            return obj.flat([z if o is None else o for o, z in zip(out, zeros)])

        def jvp(v: torch.Tensor) -> torch.Tensor:
            vs = [vi for vi, j in zip(obj.split(v), jtu) if j is not None]
            return torch.autograd.grad([j for j, _ in jtu_used], u, vs, retain_graph=True)[0]

        mu = group["damping"]

        def ggn(v: torch.Tensor) -> torch.Tensor:
            self.stats["n_ggn"] += 1
            return jt(jvp(v)) + mu * v

        rd = r.detach()
        loss = 0.5 * (rd * rd).sum()
        g = jt(rd)
        p = conjugate_gradient(ggn, -g, rtol=self.linear_rtol, max_iter=self.linear_max_iter).x
        dt = group["dt"]
        if self.line_search:

            def value(x: torch.Tensor) -> float:
                obj.set_flat(x)
                res = closure()
                self.stats["n_loss"] += 1
                return 0.5 * float((res.detach() ** 2).sum())

            dt, _ = _backtrack(value, theta, p, float(loss), float(g @ p), dt)
        obj.set_flat(theta + dt * p)
        return loss
