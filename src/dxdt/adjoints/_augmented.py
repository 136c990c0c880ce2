"""The adjoint equations' vector fields live on a flat augmented state ``(n, D)`` and need float64 times."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._term import Term


class AugmentedTerm(Term):
    """A vector field ``fn(t, z)`` on a flat state ``z`` ``(n, D)``; ``t`` stays float64 ``(n,)``.

    The adjoint fields read the forward dense solution at ``t`` (interpolating adjoint) and call the
    user's field through its own :class:`Term`, which converts ``t`` to what ``f`` expects.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.f = fn
        self.args = None
        self.pass_args = False
        self.joint = False
        self.time_shape = None
        self.forward_jacobian_failed = False

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.f(t, z)

    def stage_times(self, t: torch.Tensor, dt: torch.Tensor, c: torch.Tensor, dtype: torch.dtype):
        return torch.addcmul(t.unsqueeze(-1), dt.unsqueeze(-1), c).unbind(1)

    def call(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.f(t, z)

    def check(self, out, z) -> None:
        pass


def vjp(
    term: Term,
    t: torch.Tensor,
    y: torch.Tensor,
    cotangent: torch.Tensor,
    params: list[torch.Tensor],
    *,
    wrt_y: bool = True,
    create_graph: bool = False,
    inspect: Callable[[torch.Tensor, list[torch.Tensor]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """``f(t, y)``, ``cᵀ ∂f/∂y`` (if ``wrt_y``) and ``cᵀ ∂f/∂θ`` for every ``θ`` in ``params``, zeros where unused.

    With ``create_graph`` the results stay differentiable in ``y``, ``cotangent`` and ``t`` (implicit solvers
    differentiate the adjoint equations for their Jacobians); otherwise ``y`` is detached first.
    ``inspect(out, inputs)`` sees ``f``'s output with its graph (and its inputs ``y``, ``t``) before it is
    differentiated.
    """
    with torch.enable_grad():
        y_in = y if create_graph and y.requires_grad else y.detach().requires_grad_(wrt_y)
        out = term(t, y_in)
        if inspect is not None:
            inspect(out, [y_in, t])
        inputs = ([y_in] if wrt_y else []) + params
        if out.requires_grad and inputs:
            grads = torch.autograd.grad(out, inputs, cotangent, create_graph=create_graph, allow_unused=True)
        else:  # f depends on none of them
            grads = (None,) * len(inputs)
    if not create_graph:
        out = out.detach()
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    g_y = grads.pop(0) if wrt_y else None
    return out, g_y, grads


def flat(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Parameters (or their gradients) as one ``(1, P)`` row in ``like``'s dtype (the joint augmented state)."""
    if not tensors:
        return like.new_zeros(1, 0)
    return torch.cat([x.reshape(1, -1).to(like.dtype) for x in tensors], dim=1)


def unflat(row: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of :func:`flat`."""
    out, i = [], 0
    for x in like:
        out.append(row[0, i : i + x.numel()].reshape(x.shape).to(x.dtype))
        i += x.numel()
    return out


def seminorm_tolerances(rtol: torch.Tensor, atol: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tolerances ``(n, width)`` for a flat state whose first ``rtol.shape[1]`` components are error-controlled
    and the rest not (a seminorm): the rest get ``atol = inf``; the controlled ones are scaled so that the
    RMS over all ``width`` components equals the RMS over the controlled ones alone."""
    n, counted = rtol.shape
    if counted == width:
        return rtol, atol
    scale = math.sqrt(counted / width)
    rest = width - counted
    rtol = torch.cat([rtol * scale, rtol.new_zeros(n, rest)], dim=1)
    atol = torch.cat([atol * scale, atol.new_full((n, rest), math.inf)], dim=1)
    return rtol, atol
