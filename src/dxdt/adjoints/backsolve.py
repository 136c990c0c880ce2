"""The backsolve adjoint: re-integrate y backwards alongside the adjoint (memory flat in the number of steps)."""

from __future__ import annotations

import torch

from ._augmented import flat, vjp
from .continuous import ContinuousAdjoint, _Sweep


class BacksolveAdjoint(ContinuousAdjoint):
    """Continuous adjoint that recomputes ``y(t)`` by solving the ODE backwards together with the adjoint.

    torchdiffeq's ``odeint_adjoint`` (Chen et al. 2018). Memory does not grow with the number of steps: no
    graph and no trajectory are kept. The gradient is that of the exact ODE solution up to the tolerances,
    not the exact gradient of the computed solution. Backwards integration of ``y`` is unstable where the
    forward problem is strongly contracting (stiff) or chaotic; then ``y`` drifts from the forward
    trajectory and the gradient is wrong: use :class:`InterpolatingAdjoint` or
    :class:`~dxdt.adjoints.Checkpointed` there. Options: see :class:`ContinuousAdjoint`.
    """

    name = "backsolve"
    carries_y = True

    def pack(self, sweep: _Sweep, y, a, g):
        parts = [y.flatten(1), a.flatten(1)]
        return torch.cat(parts if g is None else [*parts, g], dim=1)

    def state_at(self, sweep: _Sweep, t, z):
        shape, m = sweep.problem.y0.shape, sweep.m
        return z[:, :m].reshape(shape), z[:, m : 2 * m].reshape(shape)

    def field(self, sweep: _Sweep, joint_params):
        term = sweep.problem.term

        def backsolve_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            y, a = self.state_at(sweep, t, z)
            create = z.requires_grad or t.requires_grad  # implicit solvers differentiate this field
            f_y, a_f_y, a_f_p = vjp(term, t, y, a, joint_params, create_graph=create, inspect=sweep.inspect)
            parts = [f_y.flatten(1), -a_f_y.flatten(1)]
            if joint_params:
                parts.append(-flat(a_f_p, z))
            return torch.cat(parts, dim=1)

        return backsolve_field
