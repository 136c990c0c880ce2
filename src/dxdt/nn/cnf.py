"""Continuous normalizing flows: FFJORD (Grathwohl et al., 2019), with RNODE's regularizers (Finlay et al., 2020).

A CNF transports data ``x`` to a base sample ``z`` by ``dz/dt = f(t, z)``; the log-density changes along the way
by the instantaneous change of variables (Chen et al., 2018), ``d log p(z(t))/dt = -tr(∂f/∂z)``. Convention here:
**data at t = 0, standard normal base at t = t1 (default 1)**. So

- ``log_prob(x)`` integrates ``(z, l)`` forward from ``(x, 0)`` with ``dl/dt = -tr(∂f/∂z)`` and returns
  ``log N(z(t1)) - l(t1)``;
- ``sample(n)`` draws ``z ~ N(0, I)`` and integrates backwards from ``t1`` to ``0`` (and, if asked, carries
  ``l`` along too: ``log p(x) = log N(z) + l(0)``).

Forward integration also makes the regularizers (:mod:`dxdt.nn.regularizers`) positive integrals over the
same path that the likelihood uses, as in RNODE. The trace is exact (``D`` backward passes per evaluation: small
dimensions) or Hutchinson's unbiased estimate ``εᵀ (∂f/∂z) ε`` with ``ε`` drawn once per solve; the same
vector-Jacobian product ``εᵀ ∂f/∂z`` also gives the Jacobian-norm regularizer for free.

The augmented state ``(z, l, accumulators)`` is one ``(B, D + 1 + k)`` dxdt state, solved in joint mode by
default (one step size for the batch: cheapest for training).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

import dxdt

from .regularizers import Noise, Regularization, batch_jacobian, kinetic_energy, sample_noise, vjp


class ConcatMLP(nn.Module):
    """``f(t, x)``: an MLP on ``(B, D)`` states whose every layer also sees ``t`` (FFJORD's "concat" layers).

    Args:
        dim: state dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        activation: a smooth nonlinearity (the trace is differentiated during training): tanh by default.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3, activation: Callable | None = None):
        super().__init__()
        sizes = [dim] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in itertools.pairwise(sizes))
        self.activation = torch.tanh if activation is None else activation

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # t is 0-d (joint mode) or (B, 1) (per-sample mode): one time column either way.
        tt = t.to(x.dtype).expand(x.shape[0], 1) if t.ndim else t.to(x.dtype).reshape(1, 1).expand(x.shape[0], 1)
        for i, layer in enumerate(self.layers):
            x = layer(torch.cat([x, tt], 1))
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class CNFOutput(NamedTuple):
    """What :meth:`CNF.forward` returns.

    Attributes:
        log_prob: ``(B,)`` log-density of the data.
        z: ``(B, D)`` the data transported to the base distribution (at ``t1``).
        regularization: kinetic energy / Jacobian norm integrals ``(B,)`` (``None`` where not requested).
        n_f_evals: vector-field evaluations of the solve (the batch's, in joint mode).
    """

    log_prob: torch.Tensor
    z: torch.Tensor
    regularization: Regularization
    n_f_evals: int


class CNF(nn.Module):
    """Continuous normalizing flow with a standard normal base (FFJORD).

    Args:
        field: the vector field ``f(t, z)`` on ``(B, D)`` states (``t`` 0-d in joint mode, ``(B, 1)`` per
            sample); an ``nn.Module`` is registered as a submodule. Default: ``ConcatMLP(dim, hidden, depth)``.
            Samples must not interact (no batch norm): traces are taken per sample.
        dim: data dimension ``D`` (required).
        hidden, depth: size of the default field.
        trace: ``"exact"`` (sum of the Jacobian's diagonal, ``D`` backward passes; small ``D``) or
            ``"hutchinson"`` (unbiased one-probe estimate, noise fixed per solve).
        noise: Hutchinson probe, ``"rademacher"`` or ``"gaussian"``.
        t1: end time of the flow (data at 0, base at ``t1``).
        solver, rtol, atol, batch_mode, max_steps: passed to :func:`dxdt.solve`.
        gradient: the gradient strategy of :func:`dxdt.solve`: ``"autodiff"`` (backprop through the loop),
            ``"checkpoint"``, ``"backsolve"``, ``"interpolate"`` (the field is passed as a closure over
            ``field``, so the adjoints find its parameters), or a ``dxdt.adjoints`` instance. ``"forward"`` is
            not supported (forward sensitivities of a reverse-mode trace).

    Extra keyword arguments of :meth:`forward`, :meth:`log_prob` and :meth:`sample` override these solve
    options for one call (e.g. ``solver="rk4", dt0=0.05``).
    """

    def __init__(
        self,
        field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        dim: int,
        hidden: int = 64,
        depth: int = 3,
        trace: Literal["exact", "hutchinson"] = "exact",
        noise: Noise = "rademacher",
        t1: float = 1.0,
        solver: str = "tsit5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        batch_mode: Literal["per_sample", "joint"] = "joint",
        max_steps: int = 10_000,
        gradient: Any = "autodiff",
    ):
        super().__init__()
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson'; got {trace!r}")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"noise must be 'rademacher' or 'gaussian'; got {noise!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int; got {dim!r}")
        self.field = ConcatMLP(dim, hidden, depth) if field is None else field
        self.dim = dim
        self.trace = trace
        self.noise = noise
        self.t1 = float(t1)
        self.solve_options: dict[str, Any] = dict(
            solver=solver, rtol=rtol, atol=atol, batch_mode=batch_mode, max_steps=max_steps, gradient=gradient
        )

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Standard normal log-density ``(B, D) -> (B,)``."""
        return -0.5 * z.square().sum(1) - 0.5 * self.dim * math.log(2 * math.pi)

    def dynamics(
        self, noise: torch.Tensor | None, kinetic: bool = False, jacobian: bool = False
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The augmented vector field on ``(B, D + 1 + k)``: ``(f, -tr ∂f/∂z[, ||f||²][, ||∂f/∂z||_F²])``.

        ``noise``: the Hutchinson probe ``(B, D)`` for this solve, or None for the exact trace (and Jacobian).
        """
        dim, field = self.dim, self.field

        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            create_graph = torch.is_grad_enabled()
            # The trace needs autograd even when log_prob runs under no_grad; the result is detached then.
            with torch.enable_grad():
                z = y[:, :dim]
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                dz = field(t, z)
                if noise is None:
                    jac = batch_jacobian(dz, z, create_graph)  # (B, D, D)
                    trace = jac.diagonal(dim1=1, dim2=2).sum(1)
                    frob = jac.square().sum((1, 2)) if jacobian else None
                else:
                    e_jac = vjp(dz, z, noise, create_graph)  # εᵀ ∂f/∂z: the trace and the norm estimate share it
                    trace = (e_jac * noise).sum(1)
                    frob = e_jac.square().sum(1) if jacobian else None
                parts = [dz, -trace[:, None]]
                if kinetic:
                    parts.append(kinetic_energy(dz)[:, None])
                if frob is not None:
                    parts.append(frob[:, None])
            out = torch.cat(parts, 1)
            return out if create_graph else out.detach()

        return f

    def _solve(self, f, y0: torch.Tensor, t0: float, t1: float, options: dict[str, Any]):
        return dxdt.solve(f, y0, t0, t1, **{**self.solve_options, **options})

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        return sample_noise(like, self.noise, generator) if self.trace == "hutchinson" else None

    def forward(
        self,
        x: torch.Tensor,
        *,
        kinetic: bool = False,
        jacobian: bool = False,
        generator: torch.Generator | None = None,
        **solve_options: Any,
    ) -> CNFOutput:
        """Transport data to the base and return its log-density, optionally with RNODE's regularizers.

        Args:
            x: ``(B, D)`` data.
            kinetic: also integrate ``∫_0^{t1} ||f||² dt``.
            jacobian: also integrate ``∫_0^{t1} ||∂f/∂z||_F² dt`` (exact with ``trace="exact"``, else the
                Hutchinson estimate from the trace's probe).
            generator: random generator for the Hutchinson probe.
            **solve_options: override the module's :func:`dxdt.solve` options for this call.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}); got {tuple(x.shape)}")
        k = int(kinetic) + int(jacobian)
        y0 = torch.cat([x, x.new_zeros(x.shape[0], 1 + k)], 1)
        f = self.dynamics(self._noise(x, generator), kinetic, jacobian)
        sol = self._solve(f, y0, 0.0, self.t1, solve_options)
        y1 = sol.ys[:, -1]
        z, dlogp = y1[:, : self.dim], y1[:, self.dim]
        acc = y1[:, self.dim + 1 :]
        reg = Regularization(acc[:, 0] if kinetic else None, acc[:, -1] if jacobian else None)
        return CNFOutput(self.base_log_prob(z) - dlogp, z, reg, int(sol.stats.n_f_evals.max()))

    def log_prob(self, x: torch.Tensor, *, generator: torch.Generator | None = None, **solve_options: Any):
        """``(B, D)`` data -> ``(B,)`` log-density (exact up to the solver's error, or Hutchinson's estimate)."""
        return self.forward(x, generator=generator, **solve_options).log_prob

    def sample(
        self,
        n: int,
        *,
        return_log_prob: bool = False,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **solve_options: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples by integrating base samples from ``t1`` back to ``0``.

        Args:
            n: number of samples.
            return_log_prob: also return their log-density, integrated along the same backward solve
                (without it, the trace is not computed at all).
            z: ``(n, D)`` base samples to transport instead of fresh ones.
            generator: random generator for the base samples (and the Hutchinson probe).
        """
        ref = next(self.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else None
        if z is None:
            z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        if not return_log_prob:
            field = self.field
            sol = self._solve(lambda t, y: field(t, y), z, self.t1, 0.0, solve_options)
            return sol.ys[:, -1]
        y0 = torch.cat([z, z.new_zeros(z.shape[0], 1)], 1)
        sol = self._solve(self.dynamics(self._noise(z, generator)), y0, self.t1, 0.0, solve_options)
        y = sol.ys[:, -1]
        return y[:, : self.dim], self.base_log_prob(z) + y[:, self.dim]
