"""A matrix-free, linearly implicit (Rosenbrock) step for stiff gradient flows.

On an ill-conditioned loss the gradient flow ``θ' = −∇L(θ)`` is a stiff ODE: its Jacobian ``−H`` has
eigenvalues from ``−λmax`` to ``−λmin``, and an explicit method must keep ``dt λmax`` inside its small
stability region for the whole time ``~1/λmin`` that the slow directions need. A Rosenbrock method solves
linear systems with ``I − γ dt J = I + γ dt H`` instead; it is L-stable, so error control alone sets the
step, which grows without bound as the flow settles. For large ``dt`` the step approaches Newton's method
(``(I + γ dt H)⁻¹ dt ∇L → H⁻¹ ∇L / γ``).

The systems are solved by conjugate gradients on Hessian-vector products, so the Hessian is never formed.
dxdt's own stiff solvers factor dense Jacobians (and differentiate ``f`` with ``torch.func``, which cannot
see parameters that a closure reads in place); this step is the matrix-free counterpart that
:class:`~dxdt.optim.GradientFlow` drives with dxdt's step-size controller. It is the one place a dxdt stiff
solver with a matrix-free linear solve would slot in.

Method: ROS2 (Verwer, Spee, Blom & Hundsdorfer, SIAM J. Sci. Comput. 20, 1999), second order, L-stable,
``γ = 1 + 1/√2``, with the linearly implicit Euler solution ``y + dt k1`` as first-order embedded method::

    (I − γ dt J) k1 = f(y)
    (I − γ dt J) k2 = f(y + dt k1) − 2 k1
    y1 = y + 3/2 dt k1 + 1/2 dt k2,      error estimate  y1 − (y + dt k1) = dt (k1 + k2)/2

For autonomous ``f`` only (``∂f/∂t = 0``, as for every gradient flow).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .linalg import conjugate_gradient

GAMMA = 1.0 + 1.0 / math.sqrt(2.0)


class MatrixFreeRosenbrock:
    """ROS2 with the linear systems ``(I − γ dt J) x = b`` solved by conjugate gradients.

    ``I − γ dt J`` must be symmetric positive definite for CG: true for gradient flows (``J = −H``) at
    convex points; where ``H`` has negative eigenvalues CG stops at negative curvature and the error
    control rejects steps that are too large.

    Args:
        jvp: ``jvp(y, v) -> J(y) v`` for one sample, flat ``(n,)`` vectors; for a gradient flow
            ``−H(y) v``.
        linear_rtol: relative residual at which CG stops.
        linear_max_iter: the most CG iterations per solve (default: the dimension).

    Attributes:
        n_linear_iter: CG iterations (= Jacobian-vector products) so far.
        n_negative_curvature: solves that met negative curvature.
    """

    order = 2
    error_order = 1

    def __init__(
        self,
        jvp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        linear_rtol: float = 1e-6,
        linear_max_iter: int | None = None,
        recycle: bool = True,
    ):
        if not 0 < linear_rtol < 1:
            raise ValueError(f"linear_rtol must be in (0, 1); got {linear_rtol}")
        self.jvp = jvp
        self.linear_rtol = linear_rtol
        self.linear_max_iter = linear_max_iter
        self.recycle = recycle
        self.n_linear_iter = 0
        self.n_negative_curvature = 0

    def _solve(self, y: torch.Tensor, gdt: float, b: torch.Tensor, recycle=None):
        res = conjugate_gradient(
            lambda v: v - gdt * self.jvp(y, v),
            b,
            rtol=self.linear_rtol,
            max_iter=self.linear_max_iter,
            recycle=recycle,
        )
        self.n_linear_iter += res.n_iter
        self.n_negative_curvature += res.negative_curvature
        return res.x, res.space

    def step(
        self, f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, f0: torch.Tensor, dt: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of size ``dt`` from ``y`` (flat ``(n,)``) with ``f0 = f(y)``.

        Returns:
            ``(y1, f(y1), error estimate)``, each ``(n,)``.
        """
        # Both stages solve with the same matrix: the second reuses the first's conjugate directions.
        k1, space = self._solve(y, GAMMA * dt, f0)
        k2, _ = self._solve(y, GAMMA * dt, f(y + dt * k1) - 2 * k1, recycle=space if self.recycle else None)
        y1 = y + dt * (1.5 * k1 + 0.5 * k2)
        return y1, f(y1), 0.5 * dt * (k1 + k2)

    @staticmethod
    def error_ratio(y_err: torch.Tensor, y_abs: torch.Tensor, rtol: float, atol: float) -> float:
        """The RMS norm of the error relative to ``atol + rtol · y_abs`` (``max(|y0|, |y1|)``): ``<= 1``
        accepts."""
        scale = atol + rtol * y_abs
        return float(torch.linalg.vector_norm(y_err / scale)) / math.sqrt(y_err.numel())

    def __repr__(self) -> str:
        return f"MatrixFreeRosenbrock(ROS2, linear_rtol={self.linear_rtol})"
