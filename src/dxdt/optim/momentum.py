"""Second-order ODEs for optimisation, discretised stably: the heavy ball and Nesterov's ODE.

Heavy ball, ``θ'' + a θ' + ∇L(θ) = 0`` (Polyak 1964): a particle with friction ``a`` in the potential ``L``.
With ``v = θ'`` and step ``h`` the discretisation here is semi-implicit Euler, the friction taken implicitly::

    v_{k+1} = (v_k − h ∇L(θ_k)) / (1 + h a),     θ_{k+1} = θ_k + h v_{k+1}

which is Polyak's momentum method ``θ_{k+1} = θ_k − α ∇L(θ_k) + β (θ_k − θ_{k−1})`` with
``α = h²/(1 + h a)`` and ``β = 1/(1 + h a)``. The friction term never destabilises it (``0 < β < 1`` for any
``h``); on a quadratic it is stable iff ``α λmax < 2 (1 + β)`` (:func:`dxdt.optim.heavy_ball_max_stable_lr`).
Explicit Euler on the same system, by contrast, is unstable for every ``h`` when ``a = 0``.

Nesterov's ODE, ``θ'' + (3/t) θ' + ∇L(θ) = 0`` (Su, Boyd & Candès, JMLR 2016): the limit of Nesterov's
accelerated gradient as the step ``s → 0``, with ``t ≈ k √s``. Its stable discretisation is Nesterov's scheme
itself::

    x_k = y_{k−1} − s ∇L(y_{k−1}),     y_k = x_k + (k − 1)/(k + 2) (x_k − x_{k−1})

with ``L(x_k) − L* <= 2 ‖x_0 − x*‖² / (s (k + 1)²)`` for convex ``L`` and ``s <= 1/λmax``. A proximal step
(``l1``, ``l2``) after the gradient step gives FISTA (Beck & Teboulle 2009); gradient restarts (O'Donoghue &
Candès 2015) recover linear convergence on strongly convex losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .proximal import _check_reg, _closure_loss, prox_elastic_net


class HeavyBall(torch.optim.Optimizer):
    """The heavy-ball ODE ``θ'' + a θ' + ∇L = 0`` integrated by semi-implicit Euler (friction implicit).

    Args:
        params: parameters or groups.
        dt: the time step ``h``.
        damping: the friction ``a >= 0``.

    Equivalent to Polyak momentum with ``lr = h²/(1 + h a)`` and ``momentum = 1/(1 + h a)``; build it from
    those with :meth:`from_polyak`. Gradients come from ``p.grad`` (call ``backward()`` first, or pass a closure
    that does). The velocity is ``self.state[p]["velocity"]``.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], dt: float, damping: float):
        if not dt > 0:
            raise ValueError(f"dt must be positive; got {dt}")
        if not damping >= 0:
            raise ValueError(f"damping must be non-negative; got {damping}")
        super().__init__(params, dict(dt=dt, damping=damping))

    @classmethod
    def from_polyak(cls, params: Iterable[torch.Tensor] | Iterable[dict], lr: float, momentum: float) -> HeavyBall:
        """The heavy ball with Polyak's ``lr = α`` and ``momentum = β`` (``0 < β <= 1``)."""
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1]; got {momentum}")
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}")
        h = math.sqrt(lr / momentum)
        return cls(params, dt=h, damping=(1 / momentum - 1) / h)

    @staticmethod
    def polyak_parameters(dt: float, damping: float) -> tuple[float, float]:
        """``(lr, momentum)`` of the discretisation: ``(h²/(1 + h a), 1/(1 + h a))``."""
        return dt * dt / (1 + dt * damping), 1 / (1 + dt * damping)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            h, a = group["dt"], group["damping"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                v = state.get("velocity")
                if v is None:
                    v = state["velocity"] = torch.zeros_like(p)
                v.add_(p.grad, alpha=-h).div_(1 + h * a)
                p.add_(v, alpha=h)
        return loss


class NesterovODE(torch.optim.Optimizer):
    """Nesterov's ODE ``θ'' + (3/t) θ' + ∇L = 0`` by its stable discretisation (Nesterov's scheme).

    The parameters hold the extrapolated point ``y_k`` where gradients are taken; the iterate ``x_k`` (the
    one with the convergence guarantee) is ``self.iterate()``. The ODE time is ``t_k = k √lr``.

    Args:
        params: parameters or groups.
        lr: the step ``s`` (stable for ``s <= 1/λmax``; the ODE limit is ``s → 0``).
        l1, l2: proximal penalties (FISTA).
        restart: ``"gradient"`` resets the momentum when ``∇L(y)ᵀ(x_k − x_{k−1}) > 0`` (the iteration moves
            uphill), ``None`` never.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        l1: float = 0.0,
        l2: float = 0.0,
        restart: str | None = None,
    ):
        _check_reg(lr, l1, l2)
        if restart not in (None, "gradient"):
            raise ValueError(f"restart must be None or 'gradient'; got {restart!r}")
        super().__init__(params, dict(lr=lr, l1=l1, l2=l2))
        self.restart = restart
        self.k = 0
        self.n_restarts = 0

    @property
    def t(self) -> float:
        """The ODE time of the current iterate, ``k √s`` (first group's ``s``)."""
        return self.k * math.sqrt(self.param_groups[0]["lr"])

    def iterate(self) -> list[torch.Tensor]:
        """``x_k``, one tensor per parameter (the parameters themselves before the first step)."""
        return [self.state[p].get("x", p.detach()) for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        self.k += 1
        new_x, uphill = [], 0.0
        for group in self.param_groups:
            lr, l1, l2 = group["lr"], group["l1"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                x_prev = self.state[p].get("x", p.detach().clone())
                x = prox_elastic_net(p - lr * p.grad, lr, l1, l2)
                uphill += float((p.grad * (x - x_prev)).sum())
                new_x.append((p, x, x_prev))
        if self.restart == "gradient" and uphill > 0 and self.k > 1:
            self.k = 1
            self.n_restarts += 1
        beta = (self.k - 1) / (self.k + 2)
        for p, x, x_prev in new_x:
            self.state[p]["x"] = x
            p.copy_(x + beta * (x - x_prev))
        return loss
