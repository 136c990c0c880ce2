"""Batched Jacobians and LU factorizations for the implicit solvers.

Per-sample mode: ``J`` is ``(B, N, N)`` with ``N = prod(S)``: each sample's own Jacobian, obtained from ``N``
vector-Jacobian products of the batched ``f`` (samples are independent, so one cotangent per state component,
replicated across the batch, gives every sample's row at once; ``is_grads_batched`` runs them together). Joint
mode is a batch of one whose state is the whole batch, so ``J`` is the one dense Jacobian of the joint system.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

from .._term import Term

JacobianSpec = Literal["autodiff", "fd"] | Callable[..., torch.Tensor]


class NotDifferentiableError(TypeError):
    """Raised when ``f`` cannot be differentiated with ``torch.func``."""


def _basis(y: torch.Tensor) -> torch.Tensor:
    """``(N, B, *S)``: tangent ``j`` is ``e_j`` in every sample."""
    n = y[0].numel()
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    return eye.reshape(n, 1, *y.shape[1:]).expand(n, *y.shape).contiguous()


def jacobian(
    term: Term,
    t: torch.Tensor,
    y: torch.Tensor,
    spec: JacobianSpec,
    with_time: bool,
    create_graph: bool = False,
    atol: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample ``∂f/∂y`` as ``(B, N, N)`` and, if ``with_time``, ``∂f/∂t`` shaped like ``y``.

    Args:
        t: times already in the shape and dtype ``f`` receives (see :meth:`Term.call`).
        spec: ``"autodiff"`` (reverse-mode autograd), ``"fd"`` (forward differences, ``N + 1`` calls
            of ``f``), or a callable ``jac(t, y[, args])`` returning ``(B, N, N)``.
        atol: the absolute tolerance, ``y``'s shape: the smallest magnitude finite differences resolve.
        create_graph: keep the Jacobian on the autograd graph (exact backpropagation through a Rosenbrock
            step needs it; it costs second derivatives of ``f``).
    """
    batch, n = y.shape[0], y[0].numel()
    f_t = None
    if callable(spec):
        # The user's jac sees what f sees: in joint mode the (B, *S) batch, and returns the (N, N) Jacobian of
        # the whole joint system.
        y_user = y.squeeze(0) if term.joint else y
        jac = spec(t, y_user, term.args) if term.pass_args else spec(t, y_user)
        if term.joint and isinstance(jac, torch.Tensor) and jac.ndim == 2:
            jac = jac.unsqueeze(0)
        expected = (batch, n, n)
        if not isinstance(jac, torch.Tensor) or tuple(jac.shape) != expected:
            got = tuple(jac.shape) if isinstance(jac, torch.Tensor) else type(jac).__name__
            raise ValueError(
                f"jac returned {got}, expected shape {expected} (batch, N, N) with N = prod(y.shape[1:]) = {n}: "
                "row i, column j is ∂f_i/∂y_j of each sample"
            )
        if with_time:
            f_t = _time_derivative_fd(term, t, y)
        return jac.to(y.dtype), f_t
    if spec == "fd":
        return _jacobian_fd(term, t, y, atol), _time_derivative_fd(term, t, y) if with_time else None
    if torch.compiler.is_compiling():  # autograd.grad cannot be traced; torch.func can
        return _jacobian_forward(term, t, y, with_time)
    if create_graph and not term.forward_jacobian_failed:
        # The Jacobian must stay on the graph. Reverse mode with create_graph walks the whole solve's history on
        # every call, quadratic in the steps (209 Rodas5P steps: 10.6 s; 1.6 s this way): the graph comes from
        # forward mode instead, the value from the same reverse pass as without gradients, so that the steps
        # do not depend on whether gradients are tracked (x − x is exactly 0). An f that forward mode cannot
        # differentiate (a custom autograd.Function without a jvp) falls back to reverse mode.
        try:
            jac_graph, f_t_graph = _jacobian_forward(term, t, y, with_time)
        except (RuntimeError, NotImplementedError):
            term.forward_jacobian_failed = True
        else:
            jac, f_t = _jacobian_autodiff(term, t, y, with_time, create_graph=False)
            jac = jac + (jac_graph - jac_graph.detach())
            f_t = None if f_t is None else f_t + (f_t_graph - f_t_graph.detach())
            return jac, f_t
    return _jacobian_autodiff(term, t, y, with_time, create_graph)


def _jacobian_forward(term: Term, t: torch.Tensor, y: torch.Tensor, with_time: bool):
    """Forward mode, one ``jvp`` per column, vectorized with ``vmap``: what ``torch.compile`` can trace (eagerly
    the reverse-mode pass is faster; see docs/architecture.md)."""
    from torch.func import jvp, vmap

    batch, n = y.shape[0], y[0].numel()

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return jvp(lambda y_: term.call(t, y_), (y,), (tangent,))[1]

    jac = vmap(column)(_basis(y)).reshape(n, batch, n).permute(1, 2, 0)  # (B, N_out, N_in)
    f_t = jvp(lambda t_: term.call(t_, y), (t,), (torch.ones_like(t),))[1] if with_time else None
    return jac, f_t


def _jacobian_autodiff(term: Term, t: torch.Tensor, y: torch.Tensor, with_time: bool, create_graph: bool):
    """Reverse mode, all rows at once (``is_grads_batched``): fast for small and large ``N`` alike."""
    batch, n = y.shape[0], y[0].numel()
    # Identity saved-tensor hooks keep this local graph out of any enclosing torch.utils.checkpoint region: the
    # autograd.grad below unpacks its saved tensors at once, which would make a non-reentrant checkpoint
    # re-run its whole segment every time (a checkpointed Kvaerno5 solve evaluated f 19× too often).
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
        y_in = y if create_graph and y.requires_grad else y.detach().requires_grad_(True)
        t_in = t.detach().requires_grad_(True) if with_time else t
        try:
            out = term.call(t_in, y_in)
        except RuntimeError as err:  # e.g. y.numpy() on a tensor that requires grad
            raise NotDifferentiableError(
                f"the implicit solver could not differentiate f with autograd ({err}). Pass jac='fd' to use finite "
                "differences, or jac=callable(t, y[, args]) returning the (B, N, N) Jacobian."
            ) from err
        if out.grad_fn is None:
            raise NotDifferentiableError(
                "the implicit solver could not differentiate f with autograd (its output has no gradient with "
                "respect to y). Pass jac='fd' to use finite differences, or jac=callable(t, y[, args]) returning "
                "the (B, N, N) Jacobian."
            )
        rows = torch.eye(n, dtype=y.dtype, device=y.device).reshape(n, 1, *out.shape[1:]).expand(n, *out.shape)
        inputs = (y_in, t_in) if with_time else (y_in,)
        grads = torch.autograd.grad(
            out, inputs, rows, is_grads_batched=True, create_graph=create_graph, allow_unused=True
        )
    jac = torch.zeros(batch, n, n, dtype=y.dtype, device=y.device) if grads[0] is None else grads[0]
    jac = jac.reshape(n, batch, n).transpose(0, 1)  # (B, N_out, N_in)
    f_t = None
    if with_time:
        g_t = grads[1]
        f_t = torch.zeros_like(y) if g_t is None else g_t.reshape(n, batch).T.reshape(y.shape)
    return jac, f_t


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


def _fd_step(y: torch.Tensor, floor: torch.Tensor | float = 1.0) -> torch.Tensor:
    """√ε relative to the value, but never below √ε · floor (scipy's num_jac uses atol as the floor): a fixed
    floor of 1 would swamp components of size 1e-5 (Robertson's y2) and ruin their derivatives."""
    eps = torch.finfo(y.dtype).eps ** 0.5
    return eps * torch.maximum(y.abs(), torch.as_tensor(floor, dtype=y.dtype, device=y.device))


def _jacobian_fd(term: Term, t: torch.Tensor, y: torch.Tensor, atol: torch.Tensor | None) -> torch.Tensor:
    batch, n = y.shape[0], y[0].numel()
    f0 = term.call(t, y)
    flat = y.reshape(batch, n)
    h = _fd_step(flat, 1.0 if atol is None else atol.reshape(batch, n))
    cols = []
    for j in range(n):  # one call per state component: the batch stays intact for per-sample args
        dy = torch.zeros_like(flat)
        dy[:, j] = h[:, j]
        cols.append((term.call(t, (flat + dy).reshape(y.shape)) - f0).reshape(batch, n) / h[:, j : j + 1])
    return torch.stack(cols, dim=-1)


def _time_derivative_fd(term: Term, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = _fd_step(t)
    return (term.call(t + h, y) - term.call(t, y)) / h


class Factorization(NamedTuple):
    lu: torch.Tensor  # (B, N, N)
    pivots: torch.Tensor  # (B, N)
    singular: torch.Tensor  # (B,) bool


def factor(matrix: torch.Tensor) -> Factorization:
    """Batched LU; singular samples are flagged, not raised (they become per-sample failures)."""
    lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
    singular = (info != 0) | ~torch.isfinite(lu.detach()).flatten(1).all(1)
    return Factorization(lu, pivots, singular)


def solve_factored(fact: Factorization, rhs: torch.Tensor) -> torch.Tensor:
    """``M^{-1} rhs`` for ``rhs`` of shape ``(B, *S)``."""
    batch = rhs.shape[0]
    out = torch.linalg.lu_solve(fact.lu, fact.pivots, rhs.reshape(batch, -1, 1))
    return out.reshape(rhs.shape)


def identity_like(jac: torch.Tensor) -> torch.Tensor:
    return torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device).expand_as(jac)


def check_jacobian_spec(jac: Any) -> JacobianSpec:
    if jac in ("autodiff", "fd") or callable(jac):
        return jac
    raise ValueError(
        f"jac must be 'autodiff' (torch.func), 'fd' (finite differences) or a callable jac(t, y[, args]) "
        f"returning the (B, N, N) Jacobian; got {jac!r}"
    )
