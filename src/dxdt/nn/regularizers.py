"""Regularizers of neural ODEs integrated alongside the state (Finlay et al., 2020, "How to train your neural ODE").

Two integrals along a trajectory ``y(t)`` of ``dy/dt = f(t, y)`` penalise dynamics that are expensive to solve:

- kinetic energy ``K = ∫ ||f(t, y(t))||² dt``: straight, constant-speed paths (optimal transport);
- Jacobian Frobenius norm ``J = ∫ ||∂f/∂y (t, y(t))||_F² dt``: a smooth field, hence a non-stiff ODE.

Both are computed by appending one accumulator each to the state, so any solver, any batch mode and any
gradient strategy handles them like the state itself. ``J`` is estimated without bias with Hutchinson's trick
``E_ε ||εᵀ ∂f/∂y||² = ||∂f/∂y||_F²`` (``E[εεᵀ] = I``; one vector-Jacobian product per evaluation, with ``ε``
drawn once per solve so the augmented ODE is deterministic), or computed exactly (one backward pass per state
component: small states only).

Example::

    aug = regularized(f, y0)                        # kinetic and Jacobian accumulators, fresh probe
    sol = dxdt.solve(aug.field, aug.y0, 0.0, 1.0, batch_mode="joint")
    y1, reg = aug.split(sol.ys[:, -1])              # reg.kinetic, reg.jacobian: (B,)
    loss = task_loss(y1) + 0.01 * reg.kinetic.mean() + 0.01 * reg.jacobian.mean()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

Noise = Literal["rademacher", "gaussian"]


class Regularization(NamedTuple):
    """Accumulated regularizers, each ``(B,)`` (or ``(B, T)`` for a saved trajectory); ``None`` if not tracked.

    Values are ``∫_{t0}^{t1}``: they are negative when integrating backwards in time.
    """

    kinetic: torch.Tensor | None
    jacobian: torch.Tensor | None


def sample_noise(like: torch.Tensor, kind: Noise = "rademacher", generator: torch.Generator | None = None):
    """Hutchinson probe vectors shaped like ``like``: Rademacher (±1, the lower-variance choice) or N(0, 1)."""
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    raise ValueError(f"noise must be 'rademacher' or 'gaussian'; got {kind!r}")


def kinetic_energy(dy: torch.Tensor) -> torch.Tensor:
    """``||dy||²`` per sample: ``(B, *S) -> (B,)``."""
    return dy.flatten(1).square().sum(1)


def vjp(out: torch.Tensor, y: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``vᵀ ∂out/∂y`` per sample (samples must not interact in ``out``); zeros where ``out`` does not use ``y``."""
    if not out.requires_grad:
        return torch.zeros_like(y)
    (g,) = torch.autograd.grad(out, y, v, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(y) if g is None else g


def batch_jacobian(out: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """The per-sample Jacobian ``∂out/∂y`` as ``(B, n, n)`` (flattened states): one backward pass per row."""
    flat = out.flatten(1)
    rows = []
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = 1
        rows.append(vjp(out, y, e.view_as(out), create_graph).flatten(1))
    return torch.stack(rows, 1)


def jacobian_frobenius(
    out: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None, create_graph: bool = False
) -> torch.Tensor:
    """``||∂out/∂y||_F²`` per sample ``(B,)``: exact if ``noise`` is None, else Hutchinson's ``||noiseᵀ ∂out/∂y||²``.

    Args:
        out: ``(B, *S)``, computed from ``y`` with autograd recording.
        y: ``(B, *S)``, requires grad.
        noise: ``(B, *S)`` probe with ``E[εεᵀ] = I`` (see :func:`sample_noise`), or None for the exact value.
        create_graph: keep the result differentiable (for training).
    """
    if noise is None:
        return batch_jacobian(out, y, create_graph).square().sum((1, 2))
    return vjp(out, y, noise, create_graph).flatten(1).square().sum(1)


class Regularized(NamedTuple):
    """What :func:`regularized` returns: the augmented field, its initial state, and how to read results.

    Attributes:
        field: ``field(t, y[, args])`` on the augmented ``(B, n + k)`` state; a closure over ``f``, so that
            dxdt's adjoints find ``f``'s parameters as they would ``f``'s own.
        y0: ``(B, n + k)``: the flattened initial state (``n = prod(S)``) and ``k`` zero accumulators.
        split: ``split(y)``: ``(..., n + k)`` -> the state ``(..., *S)`` and the :class:`Regularization`.
    """

    field: Callable[..., torch.Tensor]
    y0: torch.Tensor
    split: Callable[[torch.Tensor], tuple[torch.Tensor, Regularization]]


def regularized(
    f: Callable[..., torch.Tensor],
    y0: torch.Tensor,
    *,
    kinetic: bool = True,
    jacobian: bool = True,
    estimator: Literal["hutchinson", "exact"] = "hutchinson",
    noise: Noise = "rademacher",
    generator: torch.Generator | None = None,
) -> Regularized:
    """``f`` with Finlay et al.'s regularizers as extra state: build one per solve (it fixes the probe).

    Args:
        f: the vector field ``f(t, y)`` or ``f(t, y, args)`` on ``(B, *S)`` states; samples must not interact.
            In per-sample mode it receives ``t`` shaped ``(B, 1, ..., 1)``, in joint mode a 0-d ``t``;
            ``args`` given to ``dxdt.solve`` are passed on.
        y0: ``(B, *S)`` initial state: fixes the shapes and draws the Hutchinson probe (one per sample).
        kinetic: accumulate ``∫ ||f||² dt`` (first accumulator).
        jacobian: accumulate ``∫ ||∂f/∂y||_F² dt`` (last accumulator).
        estimator: ``"hutchinson"`` (one vector-Jacobian product per evaluation) or ``"exact"`` (``n`` of them).
        noise: the Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        generator: random generator for the probe.

    Returns:
        :class:`Regularized` ``(field, y0, split)``: solve ``dxdt.solve(field, y0, ...)`` and read any output
        (``(B, n + k)`` or a trajectory ``(B, T, n + k)``) with ``split``.
    """
    if not (kinetic or jacobian):
        raise ValueError("regularized() needs kinetic=True or jacobian=True (otherwise solve f directly)")
    if estimator not in ("hutchinson", "exact"):
        raise ValueError(f"estimator must be 'hutchinson' or 'exact'; got {estimator!r}")
    if not isinstance(y0, torch.Tensor) or y0.ndim < 2:
        raise ValueError("y0 must be a tensor of shape (B, *S) with at least one state dimension")
    shape = tuple(y0.shape[1:])
    n = math.prod(shape)
    probe = sample_noise(y0, noise, generator) if jacobian and estimator == "hutchinson" else None

    def field(t: torch.Tensor, y: torch.Tensor, args: Any = None) -> torch.Tensor:
        batch = y.shape[0]
        if t.ndim:  # per-sample mode: (B, 1) against the augmented state, (B, 1, ..., 1) against f's
            t = t.reshape((batch,) + (1,) * len(shape))
        create_graph = torch.is_grad_enabled()
        # The Jacobian term differentiates f even inside no_grad (evaluation); the result is detached then.
        with torch.enable_grad():
            x = y[:, :n].reshape(batch, *shape)
            if jacobian and not x.requires_grad:
                x = x.detach().requires_grad_(True)
            dx = f(t, x) if args is None else f(t, x, args)
            parts = [dx.reshape(batch, n)]
            if kinetic:
                parts.append(kinetic_energy(dx)[:, None])
            if jacobian:
                parts.append(jacobian_frobenius(dx, x, probe, create_graph)[:, None])
        out = torch.cat(parts, 1)
        return out if create_graph else out.detach()

    def split(y: torch.Tensor) -> tuple[torch.Tensor, Regularization]:
        acc = y[..., n:]
        reg = Regularization(acc[..., 0] if kinetic else None, acc[..., -1] if jacobian else None)
        return y[..., :n].reshape(*y.shape[:-1], *shape), reg

    zeros = torch.zeros(y0.shape[0], int(kinetic) + int(jacobian), dtype=y0.dtype, device=y0.device)
    return Regularized(field, torch.cat([y0.flatten(1), zeros], 1), split)
