"""The interpolating adjoint: the backward pass reads y(t) from the forward dense solution."""

from __future__ import annotations

import torch

from ._augmented import flat, vjp
from .continuous import ContinuousAdjoint, _Sweep


class InterpolatingAdjoint(ContinuousAdjoint):
    """Continuous adjoint whose backward solve reads ``y(t)`` from the forward pass's dense output.

    SciML's ``InterpolatingAdjoint``. ``y`` is never integrated backwards, so the gradient stays right
    for stiff and chaotic problems where :class:`BacksolveAdjoint` drifts; the price is memory for the
    forward dense solution (the state and interpolation coefficients of every step — no autograd graph),
    and the backward state is half as large. Options: see :class:`ContinuousAdjoint`.
    """

    name = "interpolate"
    carries_y = False

    def pack(self, sweep: _Sweep, y, a, g):
        return a.flatten(1) if g is None else torch.cat([a.flatten(1), g], dim=1)

    def state_at(self, sweep: _Sweep, t, z):
        y = sweep.dense(t[:, None])[:, 0]
        return y, z[:, : sweep.m].reshape(y.shape)

    def stops(self, sweep: _Sweep, t_start, t_end):
        # Backward steps never straddle a forward step: inside one, y(t) is a single smooth polynomial, so the
        # adjoint and the parameter integrand resolve y's fast transients even where a itself is smooth.
        records = sweep.dense.records
        if records is None:
            return None
        ends = records.t_end.T.flip(1)  # (n, I): forward step ends, in the backward direction
        direction = torch.where(t_end >= t_start, 1.0, -1.0).to(ends.dtype)[:, None]
        beyond = (ends - t_end[:, None]) * direction >= 0
        return torch.where(beyond, t_end[:, None], ends)

    def field(self, sweep: _Sweep, joint_params):
        term = sweep.problem.term

        def interpolating_field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            y, a = self.state_at(sweep, t, z)
            create = z.requires_grad or t.requires_grad  # implicit solvers differentiate this field
            _, a_f_y, a_f_p = vjp(term, t, y, a, joint_params, create_graph=create, inspect=sweep.inspect)
            parts = [-a_f_y.flatten(1)]
            if joint_params:
                parts.append(-flat(a_f_p, z))
            return torch.cat(parts, dim=1)

        return interpolating_field
