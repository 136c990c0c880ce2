"""What a fit returns: estimates with uncertainty, goodness of fit, convergence, profiles and forecasts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ._problem import Problem, coarse_options
from ._stats import normal_quantile, t_quantile
from .observe import Incidence
from .optimizers import gauss_newton_at, gauss_newton_points

__all__ = ["Estimate", "FitResult", "Forecast"]


@dataclass
class Estimate:
    """A point estimate with its standard error and interval (``nan`` where not available)."""

    value: float
    se: float = math.nan
    lower: float = math.nan
    upper: float = math.nan
    unit: str = ""

    def to_dict(self) -> dict[str, float | str]:
        return {"estimate": self.value, "se": self.se, "lower": self.lower, "upper": self.upper, "unit": self.unit}


@dataclass
class Forecast:
    """Predictions with bands, from :meth:`FitResult.forecast`.

    Attributes:
        times: ``(T,)`` the observation times followed by the forecast times.
        names: the observed series.
        mean: ``(T, K)`` predicted means at the estimates.
        mean_lower, mean_upper: band of the mean from parameter uncertainty alone (``level``).
        lower, upper: prediction interval for new observations: parameter uncertainty and observation noise.
        future: ``(T,)`` bool, the times after the last observation.
        regular: ``(T,)`` bool, the observation and forecast times (not the intermediate plotting points).
        level: coverage of the bands.
        parameter_uncertainty: whether parameters were sampled (needs a covariance and per-sample parameters).
        n_samples: samples behind the bands.
    """

    times: torch.Tensor
    names: list[str]
    mean: torch.Tensor
    mean_lower: torch.Tensor
    mean_upper: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    future: torch.Tensor
    regular: torch.Tensor
    level: float
    parameter_uncertainty: bool
    n_samples: int

    def table(self, only_future: bool = True) -> str:
        pct = f"{100 * self.level:g}%"
        rows = [
            i for i in range(len(self.times)) if bool(self.regular[i]) and (bool(self.future[i]) or not only_future)
        ]
        lines = []
        for k, name in enumerate(self.names):
            lines.append(f"{'time':>8}  {name + ' mean':>14}  {pct + ' band of mean':>22}  {pct + ' prediction':>22}")
            for i in rows:
                band = f"[{_g(self.mean_lower[i, k])}, {_g(self.mean_upper[i, k])}]"
                pred = f"[{_g(self.lower[i, k])}, {_g(self.upper[i, k])}]"
                lines.append(f"{_g(self.times[i]):>8}  {_g(self.mean[i, k]):>14}  {band:>22}  {pred:>22}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        keep = self.regular
        out: dict[str, Any] = {
            "level": self.level,
            "times": self.times[keep].tolist(),
            "future": self.future[keep].tolist(),
            "parameter_uncertainty": self.parameter_uncertainty,
            "n_samples": self.n_samples,
        }
        for k, name in enumerate(self.names):
            out[name] = {
                "mean": self.mean[keep, k].tolist(),
                "mean_lower": self.mean_lower[keep, k].tolist(),
                "mean_upper": self.mean_upper[keep, k].tolist(),
                "lower": self.lower[keep, k].tolist(),
                "upper": self.upper[keep, k].tolist(),
            }
        return out


def _g(x: Any, digits: int = 5) -> str:
    x = float(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


@dataclass
class FitResult:
    """The outcome of :func:`dxdt.fit.fit`.

    Attributes:
        params: estimates of the model parameters (fixed ones included, with ``se = 0``), by name.
        initial: estimated initial states (``"I0"``) and, with multiple shooting, segment states.
        derived: derived quantities such as ``R0``, with delta-method intervals (log scale when positive).
        noise: the noise model; ``noise_params`` its estimated nuisance parameters (``sigma`` or ``k``).
        objective: the minimised objective (Gaussian: ``SSR / 2``; counts: negative log-likelihood).
        ssr: sum of squared residuals of the data. ``loglik``, ``aic``, ``bic``, ``rmse``: goodness of fit.
        n_obs, n_free, dof: observations, estimated unknowns, residual degrees of freedom.
        converged, message, n_iter, n_solves, elapsed: convergence information.
        starts: the objective reached from every start (multi-start).
        fitted: ``(T, K)`` predicted means at the observation times; ``residuals = data - fitted``.
        cov: covariance of the free unknowns on their internal scale (log for positive parameters), or ``None``.
        profile_ci: profile-likelihood intervals, filled by :meth:`profile`.
    """

    model: Any
    problem: Problem
    names: list[str]
    u: torch.Tensor
    aux: torch.Tensor | None
    cov: torch.Tensor | None
    scale2: float
    level: float
    params: dict[str, Estimate]
    initial: dict[str, Estimate]
    derived: dict[str, Estimate]
    noise_params: dict[str, float]
    objective: float
    ssr: float
    loglik: float
    aic: float
    bic: float
    rmse: float
    n_obs: int
    n_free: int
    dof: int
    converged: bool
    message: str
    n_iter: int
    n_solves: int
    elapsed: float
    optimizer: str
    starts: list[float]
    fitted: torch.Tensor
    observed: list[str]
    identifiable: bool = True
    profile_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    profile_elapsed: float = 0.0

    # --- convenience ---

    @property
    def residuals(self) -> torch.Tensor:
        return self.problem.data - self.fitted

    @property
    def times(self) -> torch.Tensor:
        return self.problem.times

    @property
    def data(self) -> torch.Tensor:
        return self.problem.data

    def quantile(self) -> float:
        """The two-sided quantile behind the intervals: Student's t with ``dof`` when a dispersion is estimated
        (Gaussian, log-normal, negative binomial), else normal."""
        p = 0.5 + self.level / 2
        return t_quantile(p, self.dof) if self.problem.noise.t_intervals and self.dof >= 1 else normal_quantile(p)

    def __getitem__(self, name: str) -> Estimate:
        for table in (self.params, self.derived, self.initial):
            if name in table:
                return table[name]
        raise KeyError(f"no estimate named {name!r}; have {', '.join([*self.params, *self.derived, *self.initial])}")

    # --- profile likelihood ---

    def profile(
        self,
        names: list[str] | None = None,
        *,
        tol: float = 0.02,
        max_rounds: int = 8,
        first_round: tuple | None = None,
    ) -> dict[str, tuple]:
        """Profile-likelihood intervals for free parameters (default: every free model parameter).

        For each parameter and side, a secant search on the signed root of the likelihood ratio finds where the
        profile crosses the threshold: ``F(1, dof)`` (``t²``) when σ is estimated, ``χ²₁`` for count noise. The
        profile's value at a trial point (the parameter held, the other unknowns re-optimised) is the objective
        there minus its Gauss–Newton decrement over the other unknowns, and the next point starts from that
        Gauss–Newton step: one batched solve per round for every branch (the optimum's objective at the same
        loose solve options rides along in the first). The first round tries the Wald endpoint and a point 5 %
        closer; an endpoint is found when a trial point is within ``tol`` of the threshold, or when the inverse
        quadratic interpolation through the last three points (the optimum among them) and the secant agree on
        the crossing to within ``tol / 10``. The trial points' values are Gauss–Newton estimates, so an endpoint
        is good to about ``tol`` either way: on the bundled influenza fit (one round for Gaussian, Poisson and
        log-normal noise, two for negative binomial) the likelihood-ratio statistics at the endpoints,
        recomputed by re-optimising independently with scipy, are within 0.1 % (Gaussian, β), 1 % (γ) and 2 %
        (Poisson, β) of the threshold. An endpoint the likelihood never reaches is reported as
        the parameter's bound (``0`` or ``inf`` for positive parameters). Needs a model with per-sample
        parameters (a mechanistic model).

        ``first_round``: the first round already solved (``fit(profile=...)`` solves it in the batch of its final
        Levenberg–Marquardt solve): ``(rows, free, evaluation, Jacobian)`` at rows placed by
        :func:`profile_first_points` from a point near the optimum, at the fit's own solve options, which the
        later rounds then keep.

        Returns:
            ``{name: (lower, upper)}``, also stored in :attr:`profile_ci`.
        """
        start = time.perf_counter()
        problem = self.problem
        if self.cov is None:
            raise ValueError("profile likelihood needs the covariance of the estimates (it seeds the search)")
        if not problem.batchable:
            raise ValueError("profile likelihood needs per-sample parameters (a MechanisticModel)")
        names = problem.profiled_names(names)
        if not names:
            return {}
        q = self.quantile()
        threshold = q * q  # F(1, dof) = t², or χ²₁ = z²
        scale = self.scale2  # the dispersion: σ̂² (F test), the Pearson factor, or 1 (likelihood ratio)
        # The profile is located to within `tol` of the threshold, far coarser than the solver's accuracy: the
        # searches run on loose solves, against the optimum's objective at the same tolerance.
        saved = problem.solve_options
        if first_round is None:
            problem.solve_options = coarse_options(saved) or saved
        try:
            return self._profile(names, q, threshold, scale, tol, max_rounds, start, first_round)
        finally:
            problem.solve_options = saved

    def _profile(self, names, q, threshold, scale, tol, max_rounds, start, first_round=None):
        problem = self.problem
        cov, u_hat = self.cov, self.u[0]
        n_unknowns = len(self.names)
        cols = [self.names.index(n) for n in names]
        branches = [(j, side) for j in cols for side in (-1.0, 1.0)]
        nb = len(branches)
        se = torch.sqrt(torch.diagonal(cov)).clamp_min(1e-12)
        # The other unknowns at each trial point: first the linear prediction along the profile from the
        # covariance; then the nearest point's Gauss–Newton update, moved along the same prediction to the next h.
        slopes = [cov[:, j] / cov[j, j] * side for j, side in branches]
        held = {j: torch.arange(n_unknowns) != j for j in cols}  # each branch's free mask
        pts: list[list[tuple[float, float]]] = [[(0.0, 0.0)] for _ in branches]
        done = [False] * nb
        result_h = [math.inf] * nb
        last_h = [math.nan] * nb  # each branch's latest trial point
        target = math.sqrt(threshold)
        aux = None if self.aux is None else self.aux.reshape(-1)[:1]  # the fit's dispersion, re-fitted per point
        if first_round is None:
            rows, free = profile_first_points(u_hat, cov, q, cols)
            solved, f_hat = None, None
        else:  # solved already, from a point near the optimum, at the fit's own solve options
            rows, free, *solved = first_round
            rows, free, f_hat = list(rows), list(free), self.objective
        for _ in range(max_rounds):
            if not rows:
                break
            owners = []  # each row's branch (its held unknown, the side it is on) and its distance h
            for row, mask in zip(rows, free):
                j = int((~mask).nonzero()[0])
                h_row = float(row[j] - u_hat[j])
                owners.append((branches.index((j, math.copysign(1.0, h_row))), abs(h_row)))
            # Each point's profile value: its objective minus the Gauss–Newton decrement over the other unknowns
            # (one solve per round for every branch, instead of re-optimising them to convergence).
            if solved:
                minimum, step = gauss_newton_at(problem, *solved, torch.stack(free), aux)
                solved = None
            elif f_hat is None:  # the optimum's objective at these solve options rides along in the batch
                zero = torch.zeros(n_unknowns, dtype=torch.bool)
                minimum, step = gauss_newton_points(
                    problem, torch.stack([*rows, u_hat]), torch.stack([*free, zero]), aux
                )
                f_hat = float(minimum[-1])
            else:
                minimum, step = gauss_newton_points(problem, torch.stack(rows), torch.stack(free), aux)
            todo = sorted({b for b, _ in owners})
            evaluated: dict[int, list[tuple[float, float, int]]] = {b: [] for b in todo}
            for i, (b, x) in enumerate(owners):
                last_h[b] = x
                f_p = float(minimum[i])
                if math.isfinite(f_p):
                    r = math.sqrt(max(2.0 * (f_p - f_hat) / scale, 0.0))
                    pts[b].append((x, r))
                    evaluated[b].append((x, r, i))
            next_rows, next_free = [], []
            for b in todo:
                j = branches[b][0]
                if not evaluated[b]:  # the solve failed out there: come back halfway
                    x = 0.5 * min(h for c, h in owners if c == b)
                    next_rows.append(u_hat + slopes[b] * x)
                    next_free.append(held[j])
                    last_h[b] = x
                    continue
                closest = min(evaluated[b], key=lambda e: abs(e[1] - target))
                if abs(closest[1] ** 2 - threshold) <= tol * threshold:
                    done[b], result_h[b] = True, closest[0]
                    continue
                (h1, r1), (h2, r2) = pts[b][-2], pts[b][-1]
                new = h2 + (target - r2) * (h2 - h1) / (r2 - r1) if r2 != r1 else 2 * h2
                new = min(max(new, 0.25 * h2), 4.0 * h2)  # keep the secant from jumping too far either way
                if new > 60 * float(se[j]) + 50:  # the profile stays flat: no finite endpoint
                    done[b], result_h[b] = True, math.inf
                    continue
                # No further solve when the quadratic through the last three points (the optimum among them)
                # crosses where the secant does, to within a tenth of tol: the crossing is then known to far
                # better than tol (a relative error δ in h is about 2δ in the statistic).
                near = _inverse_quadratic(pts[b][-3:], target) if len(pts[b]) >= 3 else None
                hs = [p[0] for p in pts[b][-3:]]
                if (
                    near is not None
                    and abs(near - new) <= 0.1 * tol * new
                    and 0.8 * min(hs[1:]) <= near <= 1.2 * max(hs)
                ):
                    done[b], result_h[b] = True, near
                    continue
                x, _, i = min(evaluated[b], key=lambda e: abs(e[0] - new))
                row = rows[i] + step[i] + slopes[b] * (new - x)
                row[j] = u_hat[j] + branches[b][1] * new
                next_rows.append(row)
                next_free.append(held[j])
                last_h[b] = new
            rows, free = next_rows, next_free
        out: dict[str, tuple[float, float]] = {}
        for j, n in zip(cols, names):
            unk = problem.unknowns[problem.free[j]]
            ends = []
            for side in (-1.0, 1.0):
                b = branches.index((j, side))
                hb = result_h[b] if done[b] else last_h[b]
                if math.isinf(hb):
                    lo_b, hi_b = unk.transform.bounds
                    ends.append(lo_b if side < 0 else hi_b)
                else:
                    ends.append(float(unk.transform.forward(torch.tensor(float(u_hat[j]) + side * hb))))
            out[n] = (ends[0], ends[1])
        self.profile_ci.update(out)
        self.profile_elapsed += time.perf_counter() - start
        return out

    # --- predictions ---

    def predict(self, times: torch.Tensor) -> torch.Tensor:
        """Predicted means ``(T, K)`` at ``times`` (after the start of the last shooting segment)."""
        times = torch.as_tensor(times, dtype=torch.float64)
        seg = self.problem.segments.n - 1
        with torch.no_grad():
            ev = self.problem.evaluate(self.u, times=times, from_segment=seg)
        return ev.mu[0]

    def forecast(
        self,
        horizon: float,
        *,
        step: float | None = None,
        n_samples: int = 1000,
        level: float = 0.95,
        seed: int = 0,
        resolution: int = 1,
    ) -> Forecast:
        """Predict ``horizon`` time units past the last observation, with bands.

        Parameters are drawn from the Laplace approximation (normal on the internal scale, with the fit's
        covariance; the negative-binomial ``k`` on the log scale too), all draws solved as one batch; then
        observation noise is drawn from the noise model. ``mean_lower/upper`` is the band of the mean
        (parameter uncertainty only); ``lower/upper`` the prediction interval for new observations.

        Args:
            horizon: how far past the last observation time.
            step: spacing of forecast times (default: the median spacing of the observations).
            n_samples: parameter draws.
            level: coverage of the bands.
            seed: seeds the draws.
            resolution: points per step (``> 1`` adds intermediate times for smooth plots; not for incidence).
        """
        if not horizon >= 0:
            raise ValueError(f"horizon must be >= 0; got {horizon}")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1); got {level}")
        problem = self.problem
        times = problem.times
        seg = problem.segments.n - 1
        if step is None:
            step = float(torch.median(torch.diff(times))) if len(times) > 1 else max(horizon, 1.0)
        if not step > 0:
            raise ValueError(f"step must be positive; got {step}")
        if resolution < 1 or int(resolution) != resolution:
            raise ValueError(f"resolution must be a positive int; got {resolution}")
        if resolution > 1 and any(isinstance(o, Incidence) for o in problem.observations):
            raise ValueError("incidence is defined per observation interval: forecast it with resolution=1")
        n_future = math.floor(horizon / step + 1e-9)
        future = times[-1] + step * torch.arange(1, n_future + 1, dtype=torch.float64)
        grid = torch.cat([times, future])
        regular_times = grid
        if resolution > 1:  # intermediate points between the regular ones, for smooth bands in plots
            start_t = torch.tensor([problem.t0], dtype=torch.float64)
            edges = torch.cat([start_t, grid])
            frac = torch.arange(1, resolution, dtype=torch.float64) / resolution
            extra = (edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * frac).reshape(-1)
            grid = torch.sort(torch.cat([grid, extra])).values
        if seg > 0:
            grid = grid[grid > problem.segments.t0[seg]]
        regular = torch.isin(grid, regular_times)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            mean = problem.evaluate(self.u, times=grid, from_segment=seg).mu[0]
            sample_params = self.cov is not None and problem.batchable and n_samples > 1
            if sample_params:
                chol = _psd_sqrt(self.cov)
                z = torch.randn(n_samples, self.u.shape[1], generator=gen, dtype=torch.float64)
                us = self.u + z @ chol.T
                ev = problem.evaluate(us, times=grid, from_segment=seg)
                mus = ev.mu[ev.ok]
            else:
                mus = mean.unsqueeze(0).expand(max(n_samples, 1), -1, -1)
            aux = None
            if self.aux is not None:
                var = problem.noise.aux_log_variance(
                    problem.y_flat(), self.fitted.reshape(1, -1), problem.mask_flat(), self.aux
                )
                sd = float(var.sqrt()) if var is not None and bool(torch.isfinite(var).all()) else 0.0
                log_k = math.log(float(self.aux)) + sd * torch.randn(mus.shape[0], generator=gen, dtype=torch.float64)
                aux = log_k.exp().clamp(1e-3, 1e6)[:, None, None].expand_as(mus)
            sigma2 = self.scale2 if problem.noise.has_scale else 1.0
            noisy = problem.noise.sample(mus, aux, torch.tensor(sigma2, dtype=torch.float64), gen)
        alpha = (1 - level) / 2
        qs = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
        band = torch.quantile(mus, qs, dim=0)
        pred = torch.quantile(noisy, qs, dim=0)
        return Forecast(
            times=grid,
            names=list(self.observed),
            mean=mean,
            mean_lower=band[0],
            mean_upper=band[1],
            lower=pred[0],
            upper=pred[1],
            future=grid > times[-1],
            regular=regular,
            level=level,
            parameter_uncertainty=sample_params,
            n_samples=int(mus.shape[0]),
        )

    # --- reporting ---

    def summary(self) -> str:
        """The tables the command line prints: estimates, derived quantities, goodness of fit, convergence."""
        pct = f"{100 * self.level:g}%"
        has_profile = bool(self.profile_ci)
        head = f"{'parameter':<12} {'estimate':>11} {'std.err':>10}  {pct + ' CI (Wald)':>24}"
        if has_profile:
            head += f"  {pct + ' CI (profile)':>24}"
        head += "  unit"
        lines = [head]
        for table in (self.params, self.derived, self.initial):
            for name, e in table.items():
                fixed = name in self.params and name not in self.names
                ci = "(fixed)" if fixed else f"[{_g(e.lower)}, {_g(e.upper)}]"
                line = f"{name:<12} {_g(e.value, 6):>11} {_g(e.se, 3) if not fixed else '':>10}  {ci:>24}"
                if has_profile:
                    p = self.profile_ci.get(name)
                    line += f"  {f'[{_g(p[0])}, {_g(p[1])}]' if p else '':>24}"
                line += f"  {e.unit}"
                lines.append(line.rstrip())
        noise = self.problem.noise.describe(self.aux, torch.tensor(self.scale2))
        lines += [
            "",
            f"noise: {noise}",
            f"fit: SSR {_g(self.ssr, 7)}, RMSE {_g(self.rmse)}, log-likelihood {_g(self.loglik, 7)}, "
            f"AIC {_g(self.aic, 6)}, BIC {_g(self.bic, 6)}  ({self.n_obs} observations, {self.n_free} estimated, "
            f"{self.dof} residual dof)",
            f"{self.message}; {self.n_iter} iterations, {self.n_solves} batched solves, {self.elapsed:.3f} s"
            + (f" (+ {self.profile_elapsed:.3f} s profile)" if self.profile_ci else ""),
        ]
        if not self.identifiable:
            lines.append(
                "warning: the Fisher information is singular: some parameters are not identifiable from "
                "these data (their standard errors are inf)"
            )
        if len(self.starts) > 1:
            lines.append(
                f"starts: {len(self.starts)}; objectives {', '.join(_g(s, 7) for s in sorted(self.starts)[:5])}"
                + (" ..." if len(self.starts) > 5 else "")
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (what ``dxdt fit --json`` writes)."""

        def table(t: dict[str, Estimate]) -> dict[str, Any]:
            out = {}
            for k, v in t.items():
                d = v.to_dict()
                if k in self.profile_ci:
                    d["profile_lower"], d["profile_upper"] = self.profile_ci[k]
                out[k] = d
            return out

        return _finite(
            {
                "params": table(self.params),
                "derived": table(self.derived),
                "initial": table(self.initial),
                "fixed": [n for n in self.params if n not in self.names],
                "level": self.level,
                "noise": {"model": self.problem.noise.name, **self.noise_params},
                "goodness_of_fit": {
                    "objective": self.objective,
                    "ssr": self.ssr,
                    "rmse": self.rmse,
                    "loglik": self.loglik,
                    "aic": self.aic,
                    "bic": self.bic,
                    "n_obs": self.n_obs,
                    "n_free": self.n_free,
                    "dof": self.dof,
                },
                "convergence": {
                    "converged": self.converged,
                    "message": self.message,
                    "iterations": self.n_iter,
                    "solves": self.n_solves,
                    "seconds": self.elapsed,
                    "optimizer": self.optimizer,
                    "starts": self.starts,
                    "profile_seconds": self.profile_elapsed,
                },
                "times": self.times.tolist(),
                "observed": {
                    name: {"data": self.data[:, k].tolist(), "fitted": self.fitted[:, k].tolist()}
                    for k, name in enumerate(self.observed)
                },
            }
        )


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` with ``L Lᵀ = cov`` that tolerates (near-)singular matrices."""
    vals, vecs = torch.linalg.eigh(cov)
    return vecs * vals.clamp_min(0).sqrt()


# The profile's first round: per branch the Wald endpoint and a point this much closer (with the optimum, three
# points: enough to interpolate the crossing without a second round when the profile is that regular).
FIRST_CLOSER = 0.95


def profile_first_points(u: torch.Tensor, cov: torch.Tensor, q: float, cols: list[int]):
    """The profile's first trial points around ``u`` ``(P,)`` for the unknowns ``cols``: per unknown, per side
    (−, +), the points :data:`FIRST_CLOSER` × and 1 × the Wald half-width ``q·se`` away, the other unknowns on
    the covariance's linear prediction; and each row's free mask (every unknown but the profiled one)."""
    se = torch.sqrt(torch.diagonal(cov)).clamp_min(1e-12)
    rows, free = [], []
    for j in cols:
        mask = torch.ones(u.shape[0], dtype=torch.bool)
        mask[j] = False
        for side in (-1.0, 1.0):
            slope = cov[:, j] / cov[j, j] * side
            for x in (FIRST_CLOSER * q * float(se[j]), q * float(se[j])):
                row = u + slope * x
                row[j] = u[j] + side * x
                rows.append(row)
                free.append(mask)
    return rows, free


def _inverse_quadratic(points: list[tuple[float, float]], target: float) -> float | None:
    """``h`` where ``r(h) = target``, by inverse quadratic interpolation through three ``(h, r)`` points (as in
    Brent's method), or ``None`` when two of their ``r`` coincide."""
    (h0, r0), (h1, r1), (h2, r2) = points
    if r0 == r1 or r1 == r2 or r0 == r2:
        return None
    return (
        h0 * (target - r1) * (target - r2) / ((r0 - r1) * (r0 - r2))
        + h1 * (target - r0) * (target - r2) / ((r1 - r0) * (r1 - r2))
        + h2 * (target - r0) * (target - r1) / ((r2 - r0) * (r2 - r1))
    )
