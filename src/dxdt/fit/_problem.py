"""A fitting problem as a map from unknowns to predictions, evaluated for a batch of unknown vectors at once.

The unknowns are model parameters, estimated initial states and (with multiple shooting) the states at the
start of each segment. Each has a *transform* from an unconstrained internal value ``u`` to its natural value
(``exp`` for positive parameters, sigmoids for bounds), so every optimizer works without constraints.

A batch of ``B`` unknown vectors (multi-start, profile points, posterior samples) becomes one call of
:func:`dxdt.solve` with ``B × segments`` samples: every sample takes its own steps, so the batch costs about
one solve on small systems (the per-step overhead dominates). Jacobians of the predictions with respect to
``u`` come from one backward pass through that solve, vectorised over the outputs (``is_grads_batched``):
the samples are independent, so output ``m`` of every sample is differentiated at once. On the 2-parameter
SIR fit this was 3–5× faster than forward mode (``torch.func.jacfwd``, ``torch.autograd.forward_ad``) through
the solver loop, whose dual tensors slow every operation including the step-size control. Forward
sensitivities from the core, when they exist, can replace :meth:`Problem.jacobian` without changing the
optimizers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import dxdt
from dxdt.solvers import get_solver

from ..models.base import MechanisticModel
from .noise import NoiseModel
from .observe import Cumulative, Observation, Sum

F64 = torch.float64
# Complex-step size: perturbations h·S stay far below rounding of y, and no difference is ever taken.
_H = 1e-20


def coarse_options(options: dict[str, Any], loosest: float = 1e-4) -> dict[str, Any] | None:
    """Solver options with ``rtol`` raised to ``loosest`` (``atol`` by the same factor), or ``None`` when the
    requested ones are within a factor 10 of that already or the method is not adaptive."""
    rtol, atol = options.get("rtol", 1e-6), options.get("atol", 1e-6)
    if not isinstance(rtol, (int, float)) or not isinstance(atol, (int, float)) or rtol >= loosest / 10:
        return None
    solver = options.get("solver", "tsit5")
    try:
        if not get_solver(solver).adaptive:
            return None
    except (ValueError, TypeError, AttributeError):
        return None
    factor = loosest / rtol
    return {**options, "rtol": rtol * factor, "atol": atol * factor}


# --- transforms ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """Natural value ``x`` from an unconstrained ``u``: ``positive`` uses ``exp``; bounds use sigmoids."""

    positive: bool = False
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        lo = self.lo if self.lo is not None else (0.0 if self.positive else -math.inf)
        hi = self.hi if self.hi is not None else math.inf
        if not lo < hi:
            raise ValueError(f"bounds must have lower < upper; got ({self.lo}, {self.hi})")
        if self.positive and lo < 0:
            raise ValueError(f"a positive parameter cannot have a negative lower bound; got {lo}")

    @property
    def linear(self) -> bool:
        """Whether ``u`` is the natural value itself (no bounds, not positive)."""
        return not self.positive and self.lo is None and self.hi is None

    @property
    def bounds(self) -> tuple[float, float]:
        lo = self.lo if self.lo is not None else (0.0 if self.positive else -math.inf)
        return lo, (self.hi if self.hi is not None else math.inf)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        if math.isfinite(hi):
            if self.positive and lo > 0:  # log-scale interval: both ends matter multiplicatively
                return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.sigmoid(u))
            if math.isfinite(lo):
                return lo + (hi - lo) * torch.sigmoid(u)
            return hi - torch.exp(u)
        if self.positive and lo == 0:
            return torch.exp(u)
        if math.isfinite(lo):
            return lo + torch.exp(u)
        return u

    def inverse(self, x: float) -> float:
        lo, hi = self.bounds
        if not lo < x < hi and not (x == lo == -math.inf):
            raise ValueError(f"value {x:g} is outside the open interval ({lo:g}, {hi:g})")
        if math.isfinite(hi):
            if self.positive and lo > 0:
                z = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
                return math.log(z / (1 - z))
            if math.isfinite(lo):
                z = (x - lo) / (hi - lo)
                return math.log(z / (1 - z))
            return math.log(hi - x)
        if self.positive and lo == 0:
            return math.log(x)
        if math.isfinite(lo):
            return math.log(x - lo)
        return x

    @property
    def scale(self) -> str:
        return (
            "log"
            if self.positive and not (self.hi is not None or (self.lo or 0) > 0)
            else ("linear" if not (self.positive or self.lo is not None or self.hi is not None) else "bounded")
        )


@dataclass
class Unknown:
    """One scalar unknown: a model parameter (``kind="param"``), an initial state (``"y0"``) or a segment's
    starting state (``"segment"``); ``index`` locates it in the parameter vector or the state."""

    name: str
    kind: str
    index: int
    transform: Transform
    value: float
    fixed: bool = False
    segment: int = 0


# --- dynamics: the vector field with parameters per sample or shared ----------------------------------


class _MechanisticDynamics:
    """A :class:`MechanisticModel`: parameters per sample, so any batch of unknown vectors solves at once."""

    per_sample = True

    def __init__(self, model: MechanisticModel):
        self.model = model
        self.names = list(model.param_names)
        self.states = list(model.states)
        self.values = [float(model.params[p].detach().reshape(-1)[0]) for p in self.names]
        self.positive = [model.param_info[p].positive for p in self.names]

    def _rhs(self, t: torch.Tensor, y: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.rhs(t, y, p)

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.model.regularization({name: x[:, i] for i, name in enumerate(self.names)})

    def solve(self, x: torch.Tensor, y0: torch.Tensor, t0, t1, ts, opts: dict[str, Any]) -> dxdt.Solution:
        p = {name: x[:, i] for i, name in enumerate(self.names)}
        return dxdt.solve(self._rhs, y0, t0, t1, args=p, saveat=ts, throw=False, **opts)

    @property
    def complex_step(self) -> bool:
        return bool(getattr(self.model, "complex_step", False))

    def solve_sensitivities(self, x, dx, y0, dy0, t0, t1, ts, opts):
        """Solve the model and its forward sensitivities ``S = dy/du`` along ``P`` directions, by complex step.

        Each sample becomes ``P`` complex samples ``y0 + i h S0_k`` with parameters ``p + i h dp/du_k``
        (complex-step differentiation, Squire & Trapp, SIAM Rev. 40, 1998): the real part of the solution is the
        ordinary one and ``Im y / h`` its derivative along direction ``k``, exact to rounding for analytic
        vector fields because no difference is taken. Step sizes come from real-valued error norms, which the
        ``O(h)`` imaginary parts do not change, so all copies take the steps of a plain solve and the
        sensitivities are the derivatives of the discrete solution, as autodiff through the loop would give,
        at the cost of one solve without an autograd graph (batching the copies is nearly free for small
        systems).

        Args:
            x: ``(S, Pm)`` parameters; dx: ``(S, Pm, P)`` their derivatives; y0: ``(S, n)``; dy0: ``(S, n, P)``.

        Returns:
            ``ys (S, T, n)``, ``dys (S, T, n, P)``, ``success (S,)``.
        """
        batch, n = y0.shape
        p = dx.shape[2]
        if p == 0:
            sol = self.solve(x, y0, t0, t1, ts, opts)
            return sol.ys, sol.ys.new_zeros(*sol.ys.shape, 0), sol.success
        yc = torch.complex(y0.unsqueeze(1).expand(batch, p, n), _H * dy0.transpose(1, 2)).reshape(batch * p, n)
        pc = {
            name: torch.complex(x[:, j : j + 1].expand(batch, p), _H * dx[:, j, :]).reshape(-1)
            for j, name in enumerate(self.names)
        }

        def per_copy(v):  # per-sample times (segments) are repeated for each copy
            return v.repeat_interleave(p, dim=0) if isinstance(v, torch.Tensor) and v.ndim == 1 else v

        t0c, t1c = per_copy(t0), per_copy(t1)
        tsc = ts.repeat_interleave(p, dim=0) if ts.ndim == 2 else ts
        sol = dxdt.solve(self._rhs, yc, t0c, t1c, args=pc, saveat=tsc, throw=False, **opts)
        ys = sol.ys.reshape(batch, p, *sol.ys.shape[1:])
        dys = (ys.imag * (1.0 / _H)).permute(0, 2, 3, 1)
        return ys[:, 0].real.contiguous(), dys, sol.success.reshape(batch, p).all(1)

    def write_back(self, x: torch.Tensor) -> None:
        values = {}
        for i, n in enumerate(self.names):
            v = float(x[i])
            if self.positive[i]:  # exp of an extreme internal value can round to 0 or inf
                v = min(max(v, 1e-300), 1e300)
            values[n] = v
        self.model.set_params(**values)


class _SolveModule(nn.Module):
    """Runs the whole solve inside ``functional_call``, so the parameters are swapped once per solve."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, y0, t0, t1, ts, opts):
        return dxdt.solve(self.f, y0, t0, t1, saveat=ts, throw=False, **opts)


class _ModuleDynamics:
    """Any ``nn.Module`` vector field ``f(t, y)``: its trainable parameters are the unknowns (shared by the
    samples of a solve, so a batch is one problem's segments, not several starts)."""

    per_sample = False

    def __init__(self, module: nn.Module, states: Sequence[str]):
        self.module = module
        self.wrapper = _SolveModule(module)
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the module has no trainable parameters to fit")
        self.names, self.shapes, self.values = [], [], []
        for n, p in self.params:
            flat = p.detach().reshape(-1)
            self.shapes.append((n, tuple(p.shape), flat.numel()))
            if flat.numel() == 1:
                self.names.append(n)
            else:
                self.names += [f"{n}[{i}]" for i in range(flat.numel())]
            self.values += flat.double().tolist()
        self.positive = [False] * len(self.names)
        self.states = list(states)

    def _pdict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, off = {}, 0
        for (n, shape, k), (_, p) in zip(self.shapes, self.params):
            out["f." + n] = x[0, off : off + k].reshape(shape).to(p.dtype)
            off += k
        return out

    def solve(self, x: torch.Tensor, y0, t0, t1, ts, opts) -> dxdt.Solution:
        if x.shape[0] != 1:
            raise ValueError("a module's parameters are shared: evaluate one unknown vector at a time")
        return torch.func.functional_call(self.wrapper, self._pdict(x), (y0, t0, t1, ts, opts))

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def write_back(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            off = 0
            for (_, shape, k), (_, p) in zip(self.shapes, self.params):
                p.copy_(x[off : off + k].reshape(shape).to(p.dtype))
                off += k


# --- segments (multiple shooting) ---------------------------------------------------------------------


def _pad_times(real: list[float], t_start: float, n: int) -> list[float]:
    """``real`` plus midpoints of the widest gaps (from ``t_start``) until there are ``n`` strictly increasing times."""
    times = sorted(real)
    while len(times) < n:
        points = [t_start, *times]
        gaps = [(points[i + 1] - points[i], i) for i in range(len(points) - 1)]
        width, i = max(gaps)
        if width <= 0:
            raise ValueError("cannot pad save times: a segment has zero length")
        times.insert(i, 0.5 * (points[i] + points[i + 1]))
        times.sort()
    return times


@dataclass
class Segments:
    """Observation times split into ``K`` consecutive segments ``[τ_k, τ_{k+1}]``, each solved as one sample."""

    t0: torch.Tensor  # (K,) float64
    t1: torch.Tensor  # (K,)
    ts: torch.Tensor  # (K, Tmax) per-sample save times (padded)
    obs_seg: torch.Tensor  # (T,) segment of each observation
    obs_slot: torch.Tensor  # (T,) its slot in that segment's save times
    end_slot: torch.Tensor  # (K,) slot of τ_{k+1} in segment k

    @property
    def n(self) -> int:
        return int(self.t0.shape[0])

    @staticmethod
    def make(t0: float, times: torch.Tensor, k: int) -> Segments:
        T = times.shape[0]
        k = max(1, min(k, T))
        bounds = [round(i * T / k) for i in range(k + 1)]  # observation index ranges [a_k, a_{k+1})
        tau = [t0] + [float(times[b - 1]) for b in bounds[1:]]
        if any(tau[i + 1] <= tau[i] for i in range(k)):
            raise ValueError("multiple shooting needs at least one observation after t0 in every segment")
        chunks = [[float(x) for x in times[bounds[i] : bounds[i + 1]]] for i in range(k)]
        tmax = max(len(c) for c in chunks)
        rows, seg, slot, end = [], [], [], []
        for i, chunk in enumerate(chunks):
            padded = _pad_times(chunk, tau[i], tmax)
            rows.append(padded)
            for x in chunk:
                seg.append(i)
                slot.append(padded.index(x))
            end.append(padded.index(tau[i + 1]))
        return Segments(
            t0=torch.tensor(tau[:-1], dtype=F64),
            t1=torch.tensor(tau[1:], dtype=F64),
            ts=torch.tensor(rows, dtype=F64),
            obs_seg=torch.tensor(seg),
            obs_slot=torch.tensor(slot),
            end_slot=torch.tensor(end),
        )


# --- the problem -------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Predictions for a batch of unknown vectors.

    Attributes:
        mu: ``(B, T, K)`` predicted means of the ``K`` observed series at the ``T`` observation times.
        pen: ``(B, C)`` scaled continuity defects between shooting segments (``C = 0`` for single shooting).
        ok: ``(B,)`` the solve succeeded and everything is finite.
        out: ``(B, T·K + C)``: ``mu`` flattened and ``pen``, what Jacobians differentiate.
    """

    mu: torch.Tensor
    pen: torch.Tensor
    ok: torch.Tensor
    out: torch.Tensor


class Problem:
    """Everything a fit needs: dynamics, unknowns, data, observation and noise models, solver options."""

    def __init__(
        self,
        dynamics: _MechanisticDynamics | _ModuleDynamics,
        unknowns: list[Unknown],
        y0: torch.Tensor,
        population: float | None,
        susceptible: int | None,
        t0: float,
        times: torch.Tensor,
        data: torch.Tensor,
        observations: list[Observation],
        noise: NoiseModel,
        solve_options: dict[str, Any],
        segments: int = 1,
        continuity: float = 1e-3,
    ):
        self.dynamics = dynamics
        self.unknowns = unknowns
        self.free = [i for i, u in enumerate(unknowns) if not u.fixed]
        self.u_all0 = torch.tensor([u.transform.inverse(u.value) for u in unknowns], dtype=F64)
        self.y0_base = y0.reshape(1, -1).to(F64)
        self.population = population
        self.susceptible = susceptible
        self.t0 = float(t0)
        self.times = times.to(F64)
        self.data = data.to(F64)  # (T, K), NaN = missing
        self.mask = ~torch.isnan(self.data)
        self.replicates: torch.Tensor | None = None
        self.observations = observations
        self.noise = noise
        self.solve_options = dict(solve_options)
        self.segments = Segments.make(self.t0, self.times, segments)
        self.n_params = len(dynamics.names)
        self.continuity_scale: torch.Tensor | None = None
        self.continuity = continuity
        self.n_solves = 0
        if self.segments.n > 1:
            self._init_segments()

    # --- layout ---

    @property
    def n_free(self) -> int:
        return len(self.free)

    @property
    def free_names(self) -> list[str]:
        return [self.unknowns[i].name for i in self.free]

    def profiled_names(self, names: Sequence[str] | None) -> list[str]:
        """The free unknowns a profile likelihood is asked for (``None``: every free model parameter), checked."""
        free = self.free_names
        if names is None:
            return [n for n, j in zip(free, self.free) if self.unknowns[j].kind == "param"]
        for n in names:
            if n not in free:
                raise ValueError(f"cannot profile {n!r}: not a free parameter (free: {', '.join(free)})")
        return list(names)

    @property
    def batchable(self) -> bool:
        return self.dynamics.per_sample

    def u0(self) -> torch.Tensor:
        """``(1, P)`` internal values of the free unknowns at their starting values."""
        return self.u_all0[self.free].unsqueeze(0).clone()

    def full(self, u: torch.Tensor) -> torch.Tensor:
        """Free internal values ``(B, P)`` → all unknowns ``(B, P_all)`` (fixed ones inserted)."""
        out = self.u_all0.to(u.dtype).unsqueeze(0).expand(u.shape[0], -1)
        idx = torch.tensor(self.free, dtype=torch.long)
        return out.index_copy(1, idx, u) if self.free else out

    def natural(self, u_all: torch.Tensor) -> torch.Tensor:
        """All internal values ``(B, P_all)`` → natural values."""
        cols = [unk.transform.forward(u_all[:, i]) for i, unk in enumerate(self.unknowns)]
        return torch.stack(cols, dim=1)

    # --- evaluation ---

    def _initial_states(self, x: torch.Tensor) -> torch.Tensor:
        """Initial states ``(B, n)`` at ``t0`` from natural unknowns ``(B, P_all)``."""
        batch = x.shape[0]
        y0 = self.y0_base.to(x.dtype).expand(batch, -1)
        cols = list(y0.unbind(1))
        for j, unk in enumerate(self.unknowns):
            if unk.kind == "y0":
                cols[unk.index] = x[:, j]
        if self.population is not None and self.susceptible is not None:
            rest = sum(c for i, c in enumerate(cols) if i != self.susceptible)
            cols[self.susceptible] = self.population - rest
        return torch.stack(cols, dim=1)

    def _init_segments(self) -> None:
        """Start values of the segment states: a simulation at the starting parameters, overwritten by data where
        a state is observed directly (which puts every segment near the data even when the series is chaotic)."""
        seg = self.segments
        n = self.y0_base.shape[1]
        u_all = self.u_all0.unsqueeze(0)
        x = self.natural(u_all)
        y0 = self._initial_states(x)
        tau = seg.t0[1:]
        sol = self.dynamics.solve(x[:, : self.n_params], y0, self.t0, float(seg.t1[-1]), tau, self.solve_options)
        start = torch.nan_to_num(sol.ys[0].detach(), nan=0.0)  # (K-1, n)
        for k, obs in enumerate(self.observations):
            if isinstance(obs, Sum) and not isinstance(obs, Cumulative) and obs.idx is not None and len(obs.idx) == 1:
                i = obs.idx[0]
                for s in range(1, seg.n):
                    j = int((self.times == seg.t0[s]).nonzero()[0]) if bool((self.times == seg.t0[s]).any()) else None
                    if j is not None and bool(self.mask[j, k]):
                        start[s - 1, i] = float(self.data[j, k]) / obs.scale
        states = self.dynamics.states
        for s in range(1, seg.n):
            for i in range(n):
                self.unknowns.append(
                    Unknown(
                        f"{states[i]}@{float(seg.t0[s]):g}",
                        "segment",
                        i,
                        Transform(),
                        float(start[s - 1, i]),
                        segment=s,
                    )
                )
        self.u_all0 = torch.cat([self.u_all0, start.reshape(-1)])
        self.free = [i for i, u in enumerate(self.unknowns) if not u.fixed]
        # Continuity defects are measured relative to each state's typical size.
        self.state_scale = torch.cat([start, y0.detach()]).abs().amax(0).clamp_min(1e-8)
        self.set_continuity(self.continuity)

    def set_continuity(self, continuity: float) -> None:
        """The continuity defect, relative to each state's size, that costs one unit of objective."""
        self.continuity = continuity
        if self.segments.n > 1:
            self.continuity_scale = continuity * self.state_scale

    def _inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Free internal unknowns ``(B, P)`` → model parameters ``(B, Pm)``, the initial state ``y0`` ``(B, n)``
        and every segment's starting state ``(B, K, n)`` (segment 0 starts from ``y0``)."""
        x = self.natural(self.full(u))
        y0 = self._initial_states(x)
        starts = [y0]
        if self.segments.n > 1:
            n = y0.shape[1]
            cols: dict[int, list[int]] = {}
            for j, unk in enumerate(self.unknowns):
                if unk.kind == "segment":
                    cols.setdefault(unk.segment, [0] * n)[unk.index] = j
            starts += [x[:, cols[k]] for k in range(1, self.segments.n)]
        return x[:, : self.n_params], y0, torch.stack(starts, dim=1)

    def _outputs(
        self, ys: torch.Tensor, y0: torch.Tensor, starts: torch.Tensor, x_model: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment solutions ``(B·K, Tmax, n)`` → predicted means ``(B, T, K_obs)`` and penalty residuals
        ``(B, C)``: scaled continuity defects, then the model's regularization residuals.

        Linear in its inputs except for user :class:`~dxdt.fit.observe.Function` observations (and analytic
        throughout), so complex-step differentiation through it is exact.
        """
        seg = self.segments
        batch, k_seg, n = starts.shape
        if k_seg == 1:
            ys_obs = ys
            pen = ys.new_zeros(batch, 0)
        else:
            ys = ys.reshape(batch, k_seg, seg.ts.shape[1], n)
            ys_obs = ys[:, seg.obs_seg, seg.obs_slot]
            ends = ys[:, torch.arange(k_seg - 1), seg.end_slot[:-1]]
            pen = ((ends - starts[:, 1:]) / self.continuity_scale).reshape(batch, -1)
        mu = torch.stack([obs(ys_obs, y0) for obs in self.observations], dim=-1)
        reg = self.dynamics.regularization(x_model)
        if reg is not None:
            pen = torch.cat([pen, reg.to(pen.dtype)], dim=1)
        return mu, pen

    def _solve_args(self, batch: int):
        seg = self.segments
        if seg.n == 1:
            return self.t0, float(seg.t1[0]), seg.ts[0]
        return seg.t0.repeat(batch), seg.t1.repeat(batch), seg.ts.repeat(batch, 1)

    def _sample_params(self, x_model: torch.Tensor) -> torch.Tensor:
        k = self.segments.n
        return x_model.repeat_interleave(k, dim=0) if (k > 1 and self.dynamics.per_sample) else x_model

    def evaluate(self, u: torch.Tensor, times: torch.Tensor | None = None, from_segment: int = 0) -> Evaluation:
        """Predictions for free internal unknowns ``u`` ``(B, P)`` (differentiable with respect to ``u``).

        ``times`` replaces the observation times (for forecasts and plots): the solve then starts from segment
        ``from_segment`` (``0``: from ``t0``) and no continuity defects are computed.
        """
        x_model, y0, starts = self._inputs(u)
        batch = u.shape[0]
        self.n_solves += 1
        if times is not None:
            y_start = starts[:, from_segment]
            t_start = float(self.segments.t0[from_segment])
            sol = self.dynamics.solve(x_model, y_start, t_start, float(times[-1]), times, self.solve_options)
            mu = torch.stack([obs(sol.ys, y_start) for obs in self.observations], dim=-1)
            ok = sol.success & torch.isfinite(mu).flatten(1).all(1)
            return Evaluation(mu, mu.new_zeros(batch, 0), ok, mu.flatten(1))
        t0, t1, ts = self._solve_args(batch)
        n = y0.shape[1]
        sol = self.dynamics.solve(self._sample_params(x_model), starts.reshape(-1, n), t0, t1, ts, self.solve_options)
        mu, pen = self._outputs(sol.ys, y0, starts, x_model)
        out = torch.cat([mu.flatten(1), pen], dim=1)
        ok = sol.success.reshape(batch, -1).all(1) & torch.isfinite(out).all(1)
        return Evaluation(mu, pen, ok, out)

    @property
    def complex_step(self) -> bool:
        """Jacobians by complex-step forward sensitivities (analytic mechanistic models), else by autodiff."""
        return bool(getattr(self.dynamics, "complex_step", False)) and all(o.analytic for o in self.observations)

    def evaluate_jac(self, u: torch.Tensor) -> tuple[Evaluation, torch.Tensor]:
        """Predictions and their Jacobian ``(B, M, P)`` with respect to ``u``, both detached."""
        if not self.complex_step:
            ur = u.detach().clone().requires_grad_(True)
            ev = self.evaluate(ur)
            jac = self.jacobian(ur, ev)
            return Evaluation(ev.mu.detach(), ev.pen.detach(), ev.ok, ev.out.detach()), jac
        batch, p = u.shape
        if p == 0:
            with torch.no_grad():
                ev = self.evaluate(u)
            return ev, ev.out.new_zeros(batch, ev.out.shape[1], 0)
        # Derivatives of the solve's inputs (transforms, initial states) by complex step too: all P directions
        # in one call of the (analytic) input map, without autograd.
        u = u.detach()
        eye = torch.eye(p, dtype=u.dtype)
        u_c = torch.complex(u.unsqueeze(0).expand(p, batch, p), _H * eye.unsqueeze(1).expand(p, batch, p))
        x_c, y0_c, starts_c = self._inputs(u_c.reshape(p * batch, p))
        x_model, y0, starts = (v.real.reshape(p, batch, *v.shape[1:])[0] for v in (x_c, y0_c, starts_c))
        dx, dy0, dstarts = ((v.imag / _H).reshape(p, batch, *v.shape[1:]).movedim(0, -1) for v in (x_c, y0_c, starts_c))
        n = y0.shape[1]
        k_seg = starts.shape[1]
        t0, t1, ts = self._solve_args(batch)
        self.n_solves += 1
        # Nothing here is differentiated (the derivatives come from the complex step), so the solve runs in
        # inference mode: about a fifth less overhead per tensor operation than no_grad. Its results are
        # cloned back into ordinary tensors, which the optimizers may combine with anything.
        with torch.inference_mode():
            dx_s = dx.repeat_interleave(k_seg, dim=0) if k_seg > 1 else dx
            ys, dys, success = self.dynamics.solve_sensitivities(
                self._sample_params(x_model),
                dx_s,
                starts.reshape(-1, n),
                dstarts.reshape(-1, n, p),
                t0,
                t1,
                ts,
                self.solve_options,
            )
            # Complex step through the (analytic) observation map: all P directions in one call.
            h = _H
            ys_c = torch.complex(ys.unsqueeze(0).expand(p, *ys.shape), h * dys.permute(3, 0, 1, 2))
            y0_c = torch.complex(y0.unsqueeze(0).expand(p, *y0.shape), h * dy0.permute(2, 0, 1))
            st_c = torch.complex(starts.unsqueeze(0).expand(p, *starts.shape), h * dstarts.permute(3, 0, 1, 2))
            mu_c, pen_c = self._outputs(
                ys_c.reshape(-1, *ys.shape[1:]), y0_c.reshape(-1, n), st_c.reshape(-1, k_seg, n), x_c
            )
            mu = mu_c.real.reshape(p, batch, *mu_c.shape[1:])[0]
            pen = pen_c.real.reshape(p, batch, -1)[0]
            out = torch.cat([mu.flatten(1), pen], dim=1)
            d_out = torch.cat([mu_c.imag.reshape(p, batch, -1), pen_c.imag.reshape(p, batch, -1)], dim=2) / h
            jac = d_out.permute(1, 2, 0)
            ok = success.reshape(batch, -1).all(1) & torch.isfinite(out).all(1) & torch.isfinite(jac).flatten(1).all(1)
            jac = torch.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
        return Evaluation(mu.clone(), pen.clone(), ok.clone(), out.clone()), jac.clone()

    def jacobian(self, u: torch.Tensor, ev: Evaluation, chunk: int = 256) -> torch.Tensor:
        """``d ev.out / du``, ``(B, M, P)``, from the graph of ``ev`` (``u`` must require grad)."""
        batch, m = ev.out.shape
        if m == 0 or u.shape[1] == 0:
            return ev.out.new_zeros(batch, m, u.shape[1])
        blocks = []
        eye = torch.eye(m, dtype=ev.out.dtype)
        for lo in range(0, m, chunk):
            e = eye[lo : lo + chunk].unsqueeze(1).expand(-1, batch, m)
            last = lo + chunk >= m
            (g,) = torch.autograd.grad(ev.out, u, e, retain_graph=not last, is_grads_batched=True, allow_unused=True)
            blocks.append(g if g is not None else u.new_zeros(e.shape[0], batch, u.shape[1]))
        jac = torch.cat(blocks, dim=0).permute(1, 0, 2)
        return torch.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)

    # --- objective pieces ---

    def set_replicates(self, data: torch.Tensor) -> None:
        """Fit ``R`` data sets at once: ``data`` is ``(R, T, K)``; row ``r`` of every batch is data set ``r``."""
        self.replicates = data.to(F64).reshape(data.shape[0], -1)

    def row(self, r: int) -> Problem:
        """The problem of replicate ``r`` alone (for its result, profiles and forecasts)."""
        out = copy.copy(self)
        out.data = self.replicates[r].reshape(self.data.shape)
        out.mask = ~torch.isnan(out.data)
        out.replicates = None
        return out

    def y_flat(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The data as ``(1, M)``, or ``(len(rows), M)`` when fitting replicates."""
        if self.replicates is None:
            return self.data.reshape(1, -1)
        return self.replicates if rows is None else self.replicates[rows]

    def mask_flat(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return ~torch.isnan(self.y_flat(rows))

    def objective(self, ev: Evaluation, aux: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` objective: the noise model's negative log-likelihood plus half the squared penalties."""
        mu = ev.mu.flatten(1)
        y, mask = self.y_flat(rows), self.mask_flat(rows)
        obj = self.noise.objective(torch.where(mask, y, 0.0), mu, mask, aux)
        if ev.pen.shape[1]:
            obj = obj + 0.5 * (ev.pen * ev.pen).sum(1)
        return torch.where(ev.ok, obj, torch.inf)

    def gradient_and_fisher(
        self, ev: Evaluation, jac: torch.Tensor, aux: torch.Tensor | None, rows: torch.Tensor | None = None
    ):
        """Gradient ``Jᵀ s`` and Fisher information ``Jᵀ W J`` of the objective, ``(B, P)`` and ``(B, P, P)``."""
        mu = ev.mu.flatten(1).detach()
        y, mask = self.y_flat(rows), self.mask_flat(rows)
        s, w = self.noise.score_fisher(torch.where(mask, y, 0.0), mu, aux)
        s = torch.where(mask, s, 0.0)
        w = torch.where(mask, w, 0.0)
        if ev.pen.shape[1]:
            s = torch.cat([s, ev.pen.detach()], dim=1)
            w = torch.cat([w, torch.ones_like(ev.pen)], dim=1)
        g = torch.einsum("bmp,bm->bp", jac, s)
        h = torch.einsum("bmp,bm,bmq->bpq", jac, w, jac)
        return g, h

    @property
    def n_obs(self) -> int:
        return int(self.mask.sum())
