"""ODE-RNN and latent ODE for irregularly sampled time series (Rubanova, Chen & Duvenaud, NeurIPS 2019).

An :class:`ODERNN` is a GRU whose hidden state follows a neural ODE between observations; run backwards in
time over a series it summarises the whole series in the distribution of an initial latent state. A
:class:`LatentODE` samples ``z0`` from that distribution, integrates a second neural ODE in latent space
from ``t0`` to any times, and reads observations out of the latent path; it is trained by maximising the
evidence lower bound (:meth:`LatentODE.elbo`).

Series in a batch need not share times. Each series keeps its own observation times, and every solve uses
dxdt's per-sample machinery: per-sample intervals ``t0``/``t1`` of shape ``(B,)`` in the encoder and
per-sample save times ``(B, T)`` in the decoder, with each series taking its own steps, so that a series'
result does not depend on the others in the batch (no union time grid).

Ragged series (different numbers of observations) are padded to a common length ``T``: give the padded
entries the series' last real time again (repeated times) and ``mask = 0`` there. A repeated time is a
zero-length interval for the encoder (no dynamics) and a masked entry is no GRU update, so padding changes
nothing; the decoder evaluates a repeated time once and copies the value; the likelihood ignores masked
entries. Values at masked entries are never read (they may be NaN).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import solve
from ..solvers import AbstractSolver

__all__ = ["ODERNN", "ELBOTerms", "LatentODE", "MLPField", "gaussian_kl"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The solve arguments the modules set themselves; solve_kwargs may not repeat them.
_OWN_KWARGS = ("solver", "saveat", "rtol", "atol", "dt0", "batch_mode", "gradient")
# Padded (repeated) decoder times are moved this far (relative) past the series' last time, because save
# times must be strictly increasing; the values there are never used, only copied from the repeated time.
_PAD_SHIFT = 1e-9


class MLPField(nn.Module):
    """An autonomous vector field ``f(t, y) = MLP(y)`` with tanh hidden layers.

    Args:
        dim: state dimension (``y`` is ``(B, dim)``).
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2):
        super().__init__()
        sizes = [dim] + [hidden] * layers
        modules: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            modules += [nn.Linear(a, b), nn.Tanh()]
        modules.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*modules)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class _Solver:
    """How a module calls :func:`dxdt.solve` (a plain object: not part of any state dict)."""

    def __init__(
        self,
        solver: str | AbstractSolver,
        rtol: float,
        atol: float,
        dt0: float | None,
        gradient: Any,
        solve_kwargs: dict[str, Any] | None,
    ):
        solve_kwargs = dict(solve_kwargs or {})
        clash = sorted(set(solve_kwargs) & set(_OWN_KWARGS))
        if clash:
            raise ValueError(f"solve_kwargs may not contain {', '.join(clash)}: pass them as the module's arguments")
        self.kwargs = dict(solver=solver, rtol=rtol, atol=atol, dt0=dt0, batch_mode="per_sample", **solve_kwargs)
        if gradient != "autodiff":  # forwarded only when asked for, so older solve() signatures still work
            self.kwargs["gradient"] = gradient

    def __call__(self, f: Field, y0: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, saveat=None):
        return solve(f, y0, t0, t1, saveat=saveat, **self.kwargs)


def gaussian_kl(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(std²)) || N(0, I))`` summed over the last dimension: ``(B, L) -> (B,)``."""
    return 0.5 * (mu**2 + std**2 - 1.0 - 2.0 * torch.log(std)).sum(-1)


def _prepare(
    x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check a batch of series; return float64 ``(B, T)`` times and the ``(B, T, D)`` bool observation mask."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, T, D) tensor of observations; got {shape}")
    times = _check_times("times", times, x.shape[0])
    if times.shape[1] != x.shape[1]:
        raise ValueError(f"times must have shape (B, T) = {tuple(x.shape[:2])} like x; got {tuple(times.shape)}")
    return times, _check_mask(mask, x)


def _check_times(name: str, times: Any, batch: int) -> torch.Tensor:
    """``(T,)`` or ``(B, T)`` non-decreasing times as a float64 ``(B, T)`` tensor."""
    if not isinstance(times, torch.Tensor):
        times = torch.tensor(times, dtype=torch.float64)
    if times.ndim == 1:
        times = times.unsqueeze(0).expand(batch, -1)
    if times.ndim != 2 or times.shape[0] != batch or times.shape[1] == 0:
        raise ValueError(f"{name} must have shape (T,) or (B, T) with B = {batch}, T >= 1; got {tuple(times.shape)}")
    times = times.to(torch.float64)
    if not torch.isfinite(times.detach()).all():
        raise ValueError(f"{name} must be finite (pad with the series' last time, not NaN)")
    if (times.detach().diff(dim=1) < 0).any():
        b = int((times.detach().diff(dim=1) < 0).any(1).nonzero()[0])
        raise ValueError(
            f"{name} must be non-decreasing in every series; series {b} has {times[b, :8].tolist()}. Sort each "
            "series by time; pad ragged series by repeating their last time (with mask = 0)"
        )
    return times


def _check_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)
    if mask.shape == x.shape[:2]:
        mask = mask.unsqueeze(-1)
    elif mask.shape != x.shape:
        raise ValueError(
            f"mask must have shape (B, T) = {tuple(x.shape[:2])} (whole observations) or (B, T, D) = "
            f"{tuple(x.shape)} (single features); got {tuple(mask.shape)}"
        )
    return mask.to(device=x.device).bool().expand(x.shape)


def _check_t0(t0: Any, times: torch.Tensor) -> torch.Tensor:
    """``t0`` (None: each series' first time; a number; or ``(B,)``) as float64 ``(B,)``, not after any time."""
    batch = times.shape[0]
    if t0 is None:
        return times[:, 0].detach()
    t0 = torch.as_tensor(t0, dtype=torch.float64, device=times.device).detach()
    if t0.ndim > 1 or (t0.ndim == 1 and t0.shape[0] not in (1, batch)):
        raise ValueError(f"t0 must be a number or a ({batch},) tensor (one per series); got shape {tuple(t0.shape)}")
    t0 = t0.reshape(-1).expand(batch)
    if (t0 > times[:, 0].detach()).any():
        b = int((t0 > times[:, 0].detach()).nonzero()[0])
        raise ValueError(
            f"t0 must not be later than a series' first time: series {b} has t0 = {t0[b].item()} but its first "
            f"time is {times[b, 0].item()}"
        )
    return t0


class ODERNN(nn.Module):
    """ODE-RNN encoder: a GRU cell whose hidden state evolves by a neural ODE between observation times.

    Run backwards in time (Rubanova et al., 2019, Algorithm 1 applied to the reversed series): the hidden
    state starts at zero at the last observation, takes the GRU update there, follows ``dh/dt = func(t, h)``
    back to the previous observation time, takes that update, ..., and finally follows the ODE back from the
    first observation to ``t0``. A linear head maps the final state to the mean and standard deviation of the
    latent initial state ``z0`` at ``t0``.

    The GRU's input at an observation is ``[x * m, m]`` (values with unobserved features zeroed, and the
    feature mask ``m``), as in the paper; an observation with no observed feature is no update at all.

    Args:
        obs_dim: ``D``, features per observation.
        hidden_dim: ``H``, the GRU's hidden size.
        latent_dim: ``L``, the size of ``z0``.
        func: the hidden state's vector field ``func(t, h)`` with ``h`` of shape ``(B, H)`` and ``t`` of shape
            ``(B, 1)``; default :class:`MLPField` ``(H, ode_hidden)``. An ``nn.Module``, so that adjoint
            gradient strategies find its parameters.
        ode_hidden: width of the default ``func``.
        solver, rtol, atol, dt0: how the ODE between observations is solved. Fixed-step methods (e.g.
            ``solver="rk4", dt0=0.25``: at most a couple of steps per gap) are much cheaper here, and the
            paper's encoder used Euler steps.
        gradient: how gradients flow through each solve: ``"autodiff"`` (default), ``"checkpoint"``,
            ``"backsolve"``, ``"interpolate"``, ``"forward"`` or a ``dxdt.adjoints`` instance.
        solve_kwargs: further keyword arguments of :func:`dxdt.solve` (``max_steps``, ``controller``, ...).
    """

    def __init__(
        self,
        obs_dim: int,
        hidden_dim: int,
        latent_dim: int,
        *,
        func: Field | None = None,
        ode_hidden: int = 64,
        solver: str | AbstractSolver = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        dt0: float | None = None,
        gradient: Any = "autodiff",
        solve_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.obs_dim, self.hidden_dim, self.latent_dim = obs_dim, hidden_dim, latent_dim
        self.gru = nn.GRUCell(2 * obs_dim, hidden_dim)
        self.func = MLPField(hidden_dim, ode_hidden) if func is None else func
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)
        self.gradient = gradient
        self._solve = _Solver(solver, rtol, atol, dt0, gradient, solve_kwargs)

    def _evolve(self, h: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        """Follow the ODE from ``t_from`` to ``t_to`` (``(B,)`` each, per series; backwards here)."""
        if bool((t_from == t_to).all()):  # every series at a padded (repeated) time: nothing to solve
            return h
        return self._solve(self.func, h, t_from, t_to).ys[:, -1]

    def hidden(
        self, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None, t0: Any = None
    ) -> torch.Tensor:
        """The hidden state at ``t0`` after the backward pass over the series: ``(B, H)``.

        Args:
            x: ``(B, T, D)`` observations (values at unobserved entries are ignored; they may be NaN).
            times: ``(B, T)`` per-series observation times (or ``(T,)`` shared), non-decreasing in each series.
            mask: ``(B, T)`` or ``(B, T, D)``, true/1 where observed; default all observed.
            t0: the time of the latent initial state: a number or ``(B,)``; default each series' first time.
        """
        times, observed = _prepare(x, times, mask)
        t0 = _check_t0(t0, times)
        times = times.detach()  # observation times are data: solve takes no gradient with respect to t0
        inputs = torch.cat([torch.where(observed, x, 0.0), observed.to(x.dtype)], dim=-1)
        update = observed.any(-1, keepdim=True)  # (B, T, 1)
        h = x.new_zeros(x.shape[0], self.hidden_dim)
        for i in reversed(range(x.shape[1])):
            if i < x.shape[1] - 1:
                h = self._evolve(h, times[:, i + 1], times[:, i])
            h = torch.where(update[:, i], self.gru(inputs[:, i], h), h)
        return self._evolve(h, times[:, 0], t0)

    def forward(
        self, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None, t0: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of ``q(z0 | x)``, each ``(B, L)``; arguments as in :meth:`hidden`."""
        mu, raw = self.head(self.hidden(x, times, mask, t0)).chunk(2, dim=-1)
        return mu, F.softplus(raw) + 1e-4


class ELBOTerms(NamedTuple):
    """The parts of :meth:`LatentODE.elbo` per series, each ``(B,)``; ``loss`` is the batch mean of
    ``nll + kl_weight * kl``."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor


class LatentODE(nn.Module):
    """Latent ODE: ODE-RNN encoder → ``z0 ~ N(mu, std²)`` → latent neural ODE → readout to observations.

    The generative model is ``z0 ~ N(0, I)``, ``dz/dt = func(t, z)``, ``x(t) ~ N(readout(z(t)), obs_std²)``
    per observed feature; the encoder (:class:`ODERNN`) is the approximate posterior ``q(z0 | x)``.

    Times: every method takes per-series times ``(B, T)`` (or shared ``(T,)``) and a reference time ``t0``
    (a number or ``(B,)``; default each series' first time) at which ``z0`` lives; prediction times must
    not precede ``t0`` and may extend beyond the observations (extrapolation). Ragged series are padded by
    repeating their last time with ``mask = 0`` (see the module docstring).

    Args:
        obs_dim: ``D``, features per observation.
        latent_dim: ``L``, the latent state's size.
        hidden_dim: the encoder's GRU size (when ``encoder`` is not given).
        encoder: an :class:`ODERNN` (default: ``ODERNN(obs_dim, hidden_dim, latent_dim)``).
        func: the latent vector field ``func(t, z)``, ``z`` of shape ``(B, L)`` and ``t`` of shape ``(B, 1)``;
            default :class:`MLPField` ``(L, ode_hidden)``.
        ode_hidden: width of the default ``func``.
        readout: ``(..., L) -> (..., D)``; default linear, or an MLP with one hidden layer of
            ``readout_hidden`` units.
        obs_std: the observation noise's standard deviation in the likelihood.
        learn_obs_std: make ``obs_std`` a trained parameter (kept as its log).
        solver, rtol, atol, dt0: how the latent ODE is solved.
        gradient: how gradients flow through the decoder's solve (``"autodiff"``, ``"checkpoint"``,
            ``"backsolve"``, ``"interpolate"``, ``"forward"`` or a ``dxdt.adjoints`` instance). The default
            encoder gets the same; a given encoder keeps its own.
        solve_kwargs: further keyword arguments of :func:`dxdt.solve` for the decoder.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        *,
        hidden_dim: int = 32,
        encoder: ODERNN | None = None,
        func: Field | None = None,
        ode_hidden: int = 64,
        readout: nn.Module | None = None,
        readout_hidden: int | None = None,
        obs_std: float = 0.1,
        learn_obs_std: bool = False,
        solver: str | AbstractSolver = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        dt0: float | None = None,
        gradient: Any = "autodiff",
        solve_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not (isinstance(obs_std, (int, float)) and 0 < obs_std < math.inf):
            raise ValueError(f"obs_std must be a positive number; got {obs_std!r}")
        self.obs_dim, self.latent_dim = obs_dim, latent_dim
        if encoder is None:
            encoder = ODERNN(obs_dim, hidden_dim, latent_dim, ode_hidden=ode_hidden, gradient=gradient)
        elif encoder.latent_dim != latent_dim or encoder.obs_dim != obs_dim:
            raise ValueError(
                f"encoder has obs_dim={encoder.obs_dim}, latent_dim={encoder.latent_dim}; the model has "
                f"obs_dim={obs_dim}, latent_dim={latent_dim}"
            )
        self.encoder = encoder
        self.func = MLPField(latent_dim, ode_hidden) if func is None else func
        if readout is None:
            readout = (
                nn.Linear(latent_dim, obs_dim)
                if readout_hidden is None
                else nn.Sequential(nn.Linear(latent_dim, readout_hidden), nn.Tanh(), nn.Linear(readout_hidden, obs_dim))
            )
        self.readout = readout
        log_std = torch.tensor(math.log(obs_std))
        if learn_obs_std:
            self.log_obs_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_obs_std", log_std)
        self.gradient = gradient
        self._solve = _Solver(solver, rtol, atol, dt0, gradient, solve_kwargs)

    @property
    def obs_std(self) -> torch.Tensor:
        return self.log_obs_std.exp()

    def encode(
        self, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None, t0: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, std)`` of ``q(z0 | x)`` at ``t0``, each ``(B, L)``; see :meth:`ODERNN.hidden`."""
        return self.encoder(x, times, mask, t0)

    def latent_path(self, z0: torch.Tensor, times: torch.Tensor, t0: Any = None) -> torch.Tensor:
        """Solve the latent ODE from ``z0`` (``(B, L)``, at ``t0``) and return ``z`` at ``times``: ``(B, T, L)``.

        ``times`` is ``(B, T)`` per series (or ``(T,)`` shared), non-decreasing, none before ``t0`` (default
        ``t0``: each series' first time). One per-sample solve with per-series save times: a repeated time
        is saved once and copied, since save times must be strictly increasing.
        """
        if not isinstance(z0, torch.Tensor) or z0.ndim != 2:
            raise ValueError(f"z0 must be a (B, L) tensor; got {getattr(z0, 'shape', type(z0).__name__)}")
        times = _check_times("times", times, z0.shape[0]).to(z0.device)
        t0 = _check_t0(t0, times)
        batch, n = times.shape
        # rank[b, j]: index of times[b, j] among the series' distinct times (times are sorted: a running count).
        new = torch.cat([torch.ones_like(times[:, :1], dtype=torch.bool), times[:, 1:] != times[:, :-1]], dim=1)
        rank = new.long().cumsum(1) - 1
        n_unique = rank[:, -1:] + 1
        slot = torch.arange(n, device=times.device).expand(batch, n)
        first = torch.searchsorted(rank.contiguous(), slot.contiguous()).clamp_max(n - 1)
        last = times[:, -1:].detach()
        # Slots past a series' distinct times hold dummy save times just after its last time.
        pad = last + (slot - n_unique + 1) * _PAD_SHIFT * last.abs().clamp_min(1.0)
        save = torch.where(slot < n_unique, times.gather(1, first), pad)
        sol = self._solve(self.func, z0, t0, save[:, -1].detach(), saveat=save)
        return sol.ys.gather(1, rank[..., None].expand(-1, -1, z0.shape[-1]))

    def decode(self, z0: torch.Tensor, times: torch.Tensor, t0: Any = None) -> torch.Tensor:
        """Predicted observations ``readout(z(t))`` at ``times`` from ``z0`` at ``t0``: ``(B, T, D)``."""
        return self.readout(self.latent_path(z0, times, t0))

    def forward(
        self,
        x: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None = None,
        pred_times: torch.Tensor | None = None,
        t0: Any = None,
        *,
        sample: bool = False,
    ) -> torch.Tensor:
        """Encode the observed series and predict at ``pred_times`` (default: ``times``): ``(B, T', D)``.

        Uses the posterior mean of ``z0`` (or one sample with ``sample=True``). ``pred_times`` ``(B, T')`` may
        differ per series and lie anywhere at or after ``t0``: between observations (interpolation) or
        beyond them (extrapolation).
        """
        mu, std = self.encode(x, times, mask, t0)
        z0 = mu + std * torch.randn_like(std) if sample else mu
        times_b = _check_times("times", times, x.shape[0])
        return self.decode(z0, times_b if pred_times is None else pred_times, _check_t0(t0, times_b))

    def predict(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The same as calling the module: see :meth:`forward`."""
        return self(*args, **kwargs)

    def elbo(
        self,
        x: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor | None = None,
        t0: Any = None,
        *,
        target_x: torch.Tensor | None = None,
        target_times: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        n_samples: int = 1,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
        return_terms: bool = False,
    ) -> torch.Tensor | ELBOTerms:
        """Negative evidence lower bound, averaged over the batch (a loss to minimise).

        ``-ELBO = E_q[-log p(target | z0)] + KL(q(z0 | x) || N(0, I))`` per series, with a Gaussian
        likelihood of standard deviation ``obs_std`` summed over observed target entries only, and the
        expectation estimated with ``n_samples`` reparameterised samples ``z0 = mu + std * eps``.

        Args:
            x, times, mask, t0: the observed series the encoder sees (see :meth:`ODERNN.hidden`).
            target_x, target_times, target_mask: what the likelihood scores, ``(B, T', D)``, ``(B, T')`` and
                ``(B, T')``/``(B, T', D)``; default the observed series itself (reconstruction). Give e.g. the
                whole series while the encoder sees its first part, to train extrapolation.
            n_samples: samples of ``z0`` per series.
            kl_weight: weight of the KL term (``< 1`` for KL annealing; 1 is the ELBO).
            generator: random generator for ``eps`` (reproducible losses).
            return_terms: return :class:`ELBOTerms` (loss, and per-series nll and kl) instead of the loss.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int; got {n_samples!r}")
        times = _check_times("times", times, x.shape[0]).to(x.device)
        t0 = _check_t0(t0, times)
        mu, std = self.encode(x, times, mask, t0)
        if target_x is None:
            if target_times is not None or target_mask is not None:
                raise ValueError("target_times and target_mask need target_x")
            target_x, target_times, target_mask = x, times, mask
        elif target_times is None:
            raise ValueError("target_x needs target_times")
        target_times, observed = _prepare(target_x, target_times, target_mask)
        batch = x.shape[0]
        eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
        z0 = (mu + std * eps).reshape(n_samples * batch, -1)
        # The samples become a larger batch of per-sample solves: sample k of series b is row k * B + b.
        pred = self.decode(z0, target_times.repeat(n_samples, 1), t0.repeat(n_samples))
        pred = pred.reshape(n_samples, *target_x.shape)
        var = torch.exp(2 * self.log_obs_std)
        # Unobserved entries are zeroed first: where() alone would still pass 0 * NaN into the gradient.
        target_x = torch.where(observed, target_x, 0.0)
        log_density = -0.5 * (target_x - pred) ** 2 / var - self.log_obs_std - 0.5 * math.log(2 * math.pi)
        nll = -torch.where(observed, log_density, 0.0).sum((-2, -1)).mean(0)
        kl = gaussian_kl(mu, std)
        loss = (nll + kl_weight * kl).mean()
        return ELBOTerms(loss, nll, kl) if return_terms else loss
