"""``fit``: estimate a model's parameters from data, with uncertainty."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..models.base import FunctionModel, MechanisticModel
from ._problem import (
    F64,
    Evaluation,
    Problem,
    Transform,
    Unknown,
    _MechanisticDynamics,
    _ModuleDynamics,
    coarse_options,
)
from ._stats import normal_quantile, t_quantile
from .noise import NoiseModel, get_noise
from .observe import Observation, parse
from .optimizers import OptResult, adam, lbfgs, levenberg_marquardt
from .result import Estimate, FitResult, profile_first_points

__all__ = ["fit"]

OPTIMIZERS = ("lm", "lbfgs", "adam")
# Above this many free unknowns no covariance is formed (neural terms: the Laplace approximation of an
# over-parameterised network says little, and the Jacobian would be large).
MAX_COV_PARAMS = 200


def _as_float_tensor(name: str, x: Any) -> torch.Tensor:
    try:
        t = torch.as_tensor(x, dtype=F64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be numbers (an array or tensor); {err}") from None
    return t.detach().clone()


def _check_times(times: torch.Tensor) -> torch.Tensor:
    if times.ndim != 1 or times.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D array; got shape {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()):
        raise ValueError("times must be finite (no NaN or inf)")
    d = torch.diff(times)
    if bool((d <= 0).any()):
        i = int((d <= 0).nonzero()[0]) + 1
        kind = "duplicate" if float(d[i - 1]) == 0 else "decreasing"
        raise ValueError(
            f"times must be strictly increasing; times[{i}] = {float(times[i]):g} is {kind} "
            f"(after {float(times[i - 1]):g}): sort them and remove duplicates"
        )
    return times


# The tolerance of the batched solve that screens candidate starts (see fit).
SCREEN_RTOL = 1e-2


def fit(
    model: MechanisticModel | nn.Module | Callable,
    times: Any,
    data: Any,
    *,
    observe: str | Observation | Sequence[str | Observation] | None = None,
    y0: Any = None,
    population: float | None = None,
    t0: float = 0.0,
    params: Mapping[str, float] | None = None,
    fixed: Sequence[str] | Mapping[str, float] = (),
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    estimate_initial: Sequence[str] = (),
    states: Sequence[str] | None = None,
    noise: str | NoiseModel = "gaussian",
    optimizer: str = "lm",
    n_starts: int = 1,
    screen: int | str = 0,
    seed: int = 0,
    shooting: int = 1,
    continuity: float = 1e-3,
    solver: Any = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 10_000,
    solve_options: Mapping[str, Any] | None = None,
    max_iter: int | None = None,
    ftol: float | None = None,
    lr: float = 1e-2,
    level: float = 0.95,
    covariance: bool = True,
    profile: bool | Sequence[str] = False,
    callback: Callable[[int, float], None] | None = None,
    _replicates: Any = None,
) -> FitResult:
    """Fit a model's parameters (and optionally initial states) to observations.

    Args:
        model: a :class:`~dxdt.models.MechanisticModel` (parameters per sample: starts, profiles and forecast
            draws are batched into single solves), any ``nn.Module`` vector field ``f(t, y)`` (its trainable
            parameters are fitted; e.g. a universal differential equation), or a function ``f(t, y, p)`` with
            ``params={name: initial value}`` (wrapped in :class:`~dxdt.models.FunctionModel`).
        times: ``(T,)`` observation times, strictly increasing, all ``>= t0``.
        data: ``(T,)`` or ``(T, K)`` observations, one column per observed series; NaN marks a missing value.
        observe: what each column measures: a state name (``"I"``), a sum (``"I+R"``), a scaled state
            (``"0.3*I"``), ``"incidence"`` / ``"cumulative"`` (see :mod:`dxdt.fit.observe`), or an
            :class:`~dxdt.fit.observe.Observation`; a list for several columns. Default: every state, when the
            data have one column per state.
        y0: the initial state at ``t0``: ``(n,)`` values, or ``{state: value}`` (other states at their defaults;
            with ``population`` the susceptible compartment is the remainder). Default: the model's default,
            or ``model.initial_state(population=...)``.
        population: epidemic models: the susceptible compartment is ``population`` minus the others, also
            while initial states are estimated.
        t0: the time of the initial state.
        params: starting values by name (default: the model's current values).
        fixed: names of parameters held at their starting values, or ``{name: value}``.
        bounds: ``{name: (lower, upper)}`` (either may be ``None``); enforced by a sigmoid transform.
        estimate_initial: states whose initial values are estimated too (named ``"<state>0"`` in the result).
        states: state names for an ``nn.Module`` or function model without a ``states`` attribute.
        noise: ``"gaussian"`` (least squares), ``"poisson"``, ``"negbin"``, ``"lognormal"`` or a
            :class:`~dxdt.fit.noise.NoiseModel`.
        optimizer: ``"lm"`` (Levenberg–Marquardt / Gauss–Newton with Fisher scoring; default), ``"lbfgs"``,
            ``"adam"`` (for neural terms).
        n_starts: how many optimizations to run (the best is kept); batched for mechanistic models.
        screen: evaluate this many quasi-random candidates (one decade around the starting values, or within
            the bounds) in one batched solve and start from the best ``n_starts`` of them (with the given
            start). Makes the fit robust to poor starting values for the price of about one solve (the
            batch runs until its slowest candidate is done). ``"auto"``: 16 per free unknown, at least 32
            (the command line's default).
        seed: seeds the candidates and starts.
        shooting: number of multiple-shooting segments (``1``: single shooting). Each segment starts from its
            own estimated state and a continuity penalty ties the segments together: for long or chaotic
            series where a single trajectory from ``t0`` is too sensitive to the parameters.
        continuity: the continuity defect, relative to each state's size, that costs as much as one unit of the
            objective (smaller: tighter continuity).
        solver, rtol, atol, max_steps, solve_options: passed to :func:`dxdt.solve` (``solver`` may be any
            method name, including stiff ones where available).
        max_iter: iteration limit (default: 100 for ``lm``, 500 for ``lbfgs``, 2000 for ``adam``).
        ftol: convergence tolerance. Levenberg–Marquardt stops when the Gauss–Newton decrement (the decrease of the
            objective a full step predicts) is below ``ftol`` times the objective; default ``1e-6``, which leaves
            the estimates within ~0.01 standard errors of the optimum (``z² ≈ 2 · ftol · dof``). L-BFGS stops
            when the objective changes by less than ``ftol`` (default ``1e-10``), Adam when it has not improved
            by ``ftol`` (default ``1e-6``) in 100 iterations.
        lr: Adam's learning rate (on the internal scale: log for positive parameters).
        level: coverage of the intervals.
        covariance: compute standard errors and intervals (Gauss–Newton/Laplace covariance).
        profile: also profile-likelihood intervals (:meth:`FitResult.profile`) for these free parameters (a
            name or a list; ``True``: every free model parameter), when the fit converged, the covariance exists
            and the model has per-sample parameters. With Levenberg–Marquardt the profile's first trial points are
            solved in the batch of its final solve at the requested tolerance, so they cost no solve of their own.
        callback: ``callback(iteration, objective)`` after each iteration (progress display).

    Returns:
        :class:`~dxdt.fit.FitResult`. The fitted values are also written back into ``model``.

    Raises:
        TypeError, ValueError: bad input, before any solve; the message names the argument.
    """
    start_time = time.perf_counter()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    for name, value in (("n_starts", n_starts), ("shooting", shooting)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if screen != "auto" and (isinstance(screen, bool) or not isinstance(screen, int) or screen < 0):
        raise ValueError(f"screen must be a non-negative int or 'auto'; got {screen!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    noise_model = get_noise(noise)

    # --- the model ---
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"model must be a MechanisticModel, an nn.Module or a function; got {type(model).__name__}")
        if not params:
            raise ValueError("a function model needs its parameters: params={'name': starting value, ...}")
        if states is None and y0 is not None:
            states = [f"y{i}" for i in range(torch.as_tensor(y0).reshape(-1).numel())]
        if states is None:
            raise ValueError("a function model needs states=('S', 'I', ...) or y0 to know its state size")
        model = FunctionModel(model, params, states=tuple(states))
        params = None
    mechanistic = isinstance(model, MechanisticModel)
    if mechanistic:
        dynamics: Any = _MechanisticDynamics(model)
        state_names = list(model.states)
    else:
        state_names = list(states or getattr(model, "states", []) or [])
        if not state_names:
            if y0 is None:
                raise ValueError("give states=(...) or y0 for an nn.Module model")
            state_names = [f"y{i}" for i in range(torch.as_tensor(y0).reshape(-1).numel())]
        dynamics = _ModuleDynamics(model, state_names)
    n_states = len(state_names)

    # --- data ---
    times_t = _check_times(_as_float_tensor("times", times))
    data_t = _as_float_tensor("data", data)
    if data_t.ndim == 1:
        data_t = data_t.unsqueeze(1)
    if data_t.ndim != 2 or data_t.shape[0] != times_t.shape[0]:
        raise ValueError(
            f"data must have shape (T,) or (T, K) with T = len(times) = {times_t.shape[0]}; got {tuple(data_t.shape)}"
        )
    if bool(torch.isinf(data_t).any()):
        raise ValueError("data contain inf: use NaN for missing values")
    for k in range(data_t.shape[1]):
        if bool(torch.isnan(data_t[:, k]).all()):
            raise ValueError(f"data column {k} has no observations (all NaN)")
    if not math.isfinite(t0) or float(times_t[0]) < t0:
        raise ValueError(f"the first observation time {float(times_t[0]):g} is before t0 = {t0:g}: pass t0 <= times[0]")
    problem_msg = noise_model.check(data_t)
    if problem_msg:
        raise ValueError(problem_msg)

    # --- observations ---
    if observe is None:
        if data_t.shape[1] != n_states:
            raise ValueError(
                f"say which states the {data_t.shape[1]} data column(s) observe: observe='I' or observe=['I', 'R'] "
                f"(states: {', '.join(state_names)})"
            )
        observe = state_names
    obs_list = [observe] if isinstance(observe, (str, Observation)) else list(observe)
    if len(obs_list) != data_t.shape[1]:
        raise ValueError(f"observe has {len(obs_list)} entries for {data_t.shape[1]} data column(s)")
    observations = [parse(o).bind(state_names) for o in obs_list]

    # --- initial state ---
    susceptible = None
    if mechanistic and population is not None and model.susceptible is not None:
        susceptible = model.state_index(model.susceptible)
    if isinstance(y0, Mapping):
        if not mechanistic:
            raise ValueError("y0 as {state: value} needs a MechanisticModel; give a tensor of shape (n,)")
        y0_t = model.initial_state(population=population, **{k: float(v) for k, v in y0.items()})
    elif y0 is None:
        if not mechanistic:
            raise ValueError("give the initial state y0 for an nn.Module model")
        y0_t = model.initial_state(population=population)
    else:
        y0_t = _as_float_tensor("y0", y0).reshape(1, -1)
        if population is not None and susceptible is not None:
            raise ValueError("give either y0 as a full state or population=, not both")
    if y0_t.shape[1] != n_states:
        raise ValueError(f"y0 has {y0_t.shape[1]} values for {n_states} states ({', '.join(state_names)})")
    if not bool(torch.isfinite(y0_t).all()):
        raise ValueError("y0 must be finite")

    # --- unknowns ---
    fixed_values = dict(fixed) if isinstance(fixed, Mapping) else {n: None for n in fixed}
    bounds = dict(bounds or {})
    param_names = list(dynamics.names)
    known = set(param_names) | {f"{s}0" for s in estimate_initial}
    for label, names in (("fixed", fixed_values), ("bounds", bounds), ("params", params or {})):
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"{label}: unknown parameter {bad[0]!r}; the parameters are {', '.join(param_names)}")
    unknowns: list[Unknown] = []
    for i, name in enumerate(param_names):
        value = dynamics.values[i]
        if params and name in params:
            value = float(params[name])
        if fixed_values.get(name) is not None:
            value = float(fixed_values[name])
        lo, hi = bounds.get(name, (None, None))
        tr = Transform(positive=dynamics.positive[i], lo=lo, hi=hi)
        try:
            tr.inverse(value)
        except ValueError as err:
            raise ValueError(f"starting value of {name}: {err}") from None
        unknowns.append(Unknown(name, "param", i, tr, value, fixed=name in fixed_values))
    for s in estimate_initial:
        if s not in state_names:
            raise ValueError(f"estimate_initial: {s!r} is not a state (states: {', '.join(state_names)})")
        idx = state_names.index(s)
        if susceptible is not None and idx == susceptible:
            raise ValueError(f"{s} is the remainder of the population and cannot be estimated with population= given")
        value = float(y0_t[0, idx])
        if params and f"{s}0" in params:
            value = float(params[f"{s}0"])
        positive = mechanistic and model.nonnegative
        lo, hi = bounds.get(f"{s}0", (None, None))
        tr = Transform(positive=positive, lo=lo, hi=hi)
        try:
            tr.inverse(value)
        except ValueError as err:
            raise ValueError(f"starting value of {s}0: {err} (estimated amounts start from a positive value)") from None
        unknowns.append(Unknown(f"{s}0", "y0", idx, tr, value, fixed=f"{s}0" in fixed_values))
    if not any(not u.fixed for u in unknowns) and shooting == 1:
        raise ValueError("every parameter is fixed: nothing to fit")

    options = {"solver": solver, "rtol": rtol, "atol": atol, "max_steps": max_steps, **(solve_options or {})}
    problem = Problem(
        dynamics,
        unknowns,
        y0_t,
        population if susceptible is not None else None,
        susceptible,
        t0,
        times_t,
        data_t,
        observations,
        noise_model,
        options,
        segments=shooting,
        continuity=continuity,
    )
    if not problem.batchable and shooting > 1 and n_starts > 1:
        raise ValueError("multi-start with multiple shooting needs a MechanisticModel")

    if _replicates is not None:
        reps = _as_float_tensor("data", _replicates)
        reps = reps.reshape(reps.shape[0], *data_t.shape)
        if bool(torch.isinf(reps).any()):
            raise ValueError("data contain inf: use NaN for missing values")
        problem_msg = noise_model.check(reps)
        if problem_msg:
            raise ValueError(problem_msg)
        if n_starts != 1 or screen or shooting != 1 or optimizer != "lm":
            raise ValueError("fit_many uses Levenberg-Marquardt from one start, with single shooting")
        problem.set_replicates(reps)

    profiled = _profiled(problem, profile, replicates=_replicates is not None)
    if not (covariance and problem.batchable):  # documented: no profile without a covariance or per-sample params
        profiled = []

    # --- starting points and optimization ---
    if max_iter is None:
        max_iter = {"lm": 100, "lbfgs": 500, "adam": 2000}[optimizer]
    if ftol is None:
        ftol = {"lm": 1e-6, "lbfgs": 1e-10, "adam": 1e-6}[optimizer]
    fine = dict(problem.solve_options)
    # Levenberg–Marquardt's tolerance schedule: rtol 1e-3 while the predicted decrease exceeds 1% of the
    # objective, 1e-4 down to 1e-4 of it, then the requested tolerance (which then confirms convergence).
    levels = [(d, o) for d, o in ((1e-2, coarse_options(fine, 1e-3)), (1e-4, coarse_options(fine, 1e-4))) if o]
    levels.append((0.0, fine))
    gen = torch.Generator().manual_seed(seed)
    if screen == "auto":
        # Sixteen candidates per unknown: on the README's SIR fit (two unknowns) 32 led Levenberg–Marquardt to
        # the optimum in 5–6 solves from every start tried, as 64 did, 16 once needed 24; fewer candidates
        # mean fewer extreme ones, whose solves set the length of the batched screening solve.
        screen = max(32, 16 * len(problem.free))
    # Screening only ranks candidates, spread over a decade or more: rtol 1e-2 does (their Jacobians seed
    # Levenberg–Marquardt, whose first level then re-solves at 1e-3). On the README's fit, from eight starts and
    # with three noise models, it led to the same optima in the same number of solves as 1e-3 (one more in 2 of
    # the 24 runs), its batched solve taking 18 steps instead of 22.
    problem.solve_options = coarse_options(fine, SCREEN_RTOL) or levels[0][1]
    # Levenberg–Marquardt on complex-step Jacobians differentiates nothing, so its own many small tensor
    # operations run in inference mode like its solves (each about a fifth cheaper than with autograd's
    # bookkeeping); what it returns is cloned into ordinary tensors.
    fast = optimizer == "lm" and problem.complex_step
    with torch.inference_mode(fast):
        starts, start_eval = _starting_points(problem, n_starts, screen, gen, with_jacobian=optimizer == "lm")
    starts = starts.clone()
    problem.solve_options = fine

    planner = functools.partial(_profile_trial_rows, problem, profiled, level) if profiled else None

    def run(u0: torch.Tensor, start_eval=None) -> OptResult:
        if optimizer == "lm":
            with torch.inference_mode(fast):
                out = levenberg_marquardt(
                    problem,
                    u0,
                    max_iter=max_iter,
                    ftol=ftol,
                    levels=levels,
                    start=start_eval,
                    callback=callback,
                    extra=planner,
                )
            return _ordinary(out)
        if optimizer == "lbfgs":
            return lbfgs(problem, u0, max_iter=max_iter, ftol=ftol, callback=callback)
        return adam(problem, u0, lr=lr, max_iter=max_iter, ftol=ftol, callback=callback)

    if _replicates is not None:
        out = run(problem.u0().expand(problem.replicates.shape[0], -1).clone())
        return [
            _result(
                model,
                dynamics,
                problem.row(r),
                out,
                r,
                [float(out.objective[r])],
                optimizer,
                level,
                covariance,
                start_time,
                write_back=False,
            )
            for r in range(out.u.shape[0])
        ]
    if shooting > 1:
        # Penalty continuation: loose continuity first, so that every segment can follow its own data, then
        # tighter (x10 per stage) until the requested weight; each stage starts from the last one's optimum.
        target = continuity
        stages = [c for c in (1.0, 0.1, 0.01) if c > 10 * target] + [target]
        u_stage, iterations = starts, 0
        for c in stages[:-1]:
            problem.set_continuity(c)
            first = run(u_stage)
            iterations += first.n_iter
            u_stage = torch.where(torch.isfinite(first.objective).unsqueeze(1), first.u, u_stage)
        problem.set_continuity(target)
        last = run(u_stage)
        last.n_iter += iterations
        runs = [last]
    elif problem.batchable or starts.shape[0] == 1:
        runs = [run(starts, start_eval)]
    else:
        runs = [run(starts[i : i + 1]) for i in range(starts.shape[0])]
    flat = [(r, i) for r in runs for i in range(r.u.shape[0])]
    objectives = [float(r.objective[i]) for r, i in flat]
    best_run, best_i = flat[
        min(range(len(flat)), key=lambda j: objectives[j] if math.isfinite(objectives[j]) else math.inf)
    ]
    result = _result(model, dynamics, problem, best_run, best_i, objectives, optimizer, level, covariance, start_time)
    if profiled and result.cov is not None and result.converged:
        first = None
        if best_run.extra is not None:
            (rows, free, names), ev, jac = best_run.extra
            first = (rows, free, ev, jac) if names == profiled else None
        result.profile(profiled, first_round=first)
    return result


def _covariance(problem: Problem, ev: Evaluation, jac: torch.Tensor | None, aux: torch.Tensor | None, level: float):
    """At one point (a batch of one): the Gauss–Newton/Laplace covariance of the free unknowns (``None`` without
    a Jacobian), the intervals' quantile, the dispersion and whether every direction is identifiable."""
    noise, mask, y = problem.noise, problem.mask_flat(), problem.y_flat()
    n_free = len(problem.free_names)
    n_seg_unknowns = sum(1 for j in problem.free if problem.unknowns[j].kind == "segment")
    dof = max(problem.n_obs - (n_free - n_seg_unknowns) - (1 if aux is not None else 0), 1)
    mu = ev.mu.detach()
    scale2 = noise.dispersion(torch.where(mask, y, 0.0), mu.flatten(1), mask, aux, dof)
    p_q = 0.5 + level / 2
    q = t_quantile(p_q, dof) if noise.t_intervals else normal_quantile(p_q)
    if jac is None:
        return None, q, scale2, True
    _, h = problem.gradient_and_fisher(ev, jac, aux)
    h = h[0]
    vals, vecs = torch.linalg.eigh(0.5 * (h + h.T))
    tiny = vals.abs().max().clamp_min(1e-300) * 1e-12
    identifiable = bool((vals > tiny).all())
    inv_vals = torch.where(vals > tiny, 1.0 / vals.clamp_min(1e-300), torch.inf)
    cov = (vecs * torch.where(torch.isinf(inv_vals), 0.0, inv_vals)) @ vecs.T * scale2
    # Directions without information get infinite variance on the unknowns they involve.
    null = vecs[:, torch.isinf(inv_vals)]
    if null.numel():
        bad = null.abs().amax(1) > 1e-6
        cov[bad, :] = torch.nan
        cov[:, bad] = torch.nan
        cov[bad, bad] = torch.inf
    return cov, q, scale2, identifiable


def _profiled(problem: Problem, profile: Any, replicates: bool) -> list[str]:
    """The names ``fit(profile=...)`` asks to profile, checked before any solve."""
    if profile is False:
        return []
    if replicates:
        raise ValueError("fit_many computes no profile likelihoods: drop profile=, and call .profile() on a result")
    if isinstance(profile, str):
        profile = [profile]
    if profile is not True and not (isinstance(profile, Sequence) and all(isinstance(n, str) for n in profile)):
        raise TypeError(f"profile must be True, False or a list of parameter names; got {profile!r}")
    return problem.profiled_names(None if profile is True else profile)


def _profile_trial_rows(problem: Problem, names: list[str], level: float, u, ev, jac, aux):
    """Levenberg–Marquardt's ``extra`` rows for a later :meth:`FitResult.profile`: its first round's trial
    points (:func:`profile_first_points`), placed from the current point and its covariance, with the names."""
    cov, q, _, _ = _covariance(problem, ev, jac, aux, level)
    if cov is None or not bool(torch.isfinite(cov).all()):
        return None
    cols = [problem.free_names.index(n) for n in names]
    rows, free = profile_first_points(u, cov, q, cols)
    return torch.stack(rows), torch.stack(free), names


def _ordinary(opt: OptResult) -> OptResult:
    """``opt`` with its tensors as ordinary tensors (inference-mode tensors refuse in-place updates and autograd),
    those of its ``extra`` rows included."""
    fields = {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt)}
    return dataclasses.replace(opt, **{k: _cloned(v) for k, v in fields.items()})


def _cloned(x: Any) -> Any:
    """``x`` with every tensor in it (through tuples, lists and dataclasses) cloned."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_cloned(v) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _cloned(getattr(x, f.name)) for f in dataclasses.fields(x)})
    return x


def fit_many(model: MechanisticModel, times: Any, data: Any, **kwargs: Any) -> list[FitResult]:
    """Fit the same model to ``R`` data sets at once (replicates, regions, bootstrap samples).

    All data sets share the times, observation and noise models, starting values and options (the keyword
    arguments of :func:`fit`, except ``n_starts``, ``screen`` and ``shooting``); each gets its own estimates,
    intervals and convergence test, but every iteration solves all of them in one batched solve, so ``R``
    fits cost little more than one.

    Args:
        data: ``(R, T)`` or ``(R, T, K)``.

    Returns:
        One :class:`FitResult` per data set (the model itself is not modified).
    """
    reps = _as_float_tensor("data", data)
    if reps.ndim not in (2, 3):
        raise ValueError(f"fit_many: data must have shape (R, T) or (R, T, K); got {tuple(reps.shape)}")
    if not isinstance(model, MechanisticModel):
        raise ValueError("fit_many needs a MechanisticModel (parameters per sample)")
    return fit(model, times, reps[0], _replicates=reps, **kwargs)  # type: ignore[return-value]


def _starting_points(
    problem: Problem, n_starts: int, screen: int, gen: torch.Generator, with_jacobian: bool
) -> tuple[torch.Tensor, tuple | None]:
    """``(n_starts, P)`` internal starting points, and their evaluation and Jacobian when screening computed them.

    Without screening: the given start, then quasi-random points. With screening: ``screen`` quasi-random
    candidates (and the given start) are evaluated in one batched solve, capped in steps so that a few extreme
    candidates cannot make it slow, and the best ``n_starts`` are kept.
    """
    u0 = problem.u0()
    p = u0.shape[1]
    if (n_starts == 1 and screen == 0) or p == 0:
        return u0, None
    n_cand = max(screen, n_starts - 1)
    lo, hi = [], []
    for j in problem.free:
        unk = problem.unknowns[j]
        u = float(problem.u_all0[j])
        if unk.transform.scale == "bounded":  # anywhere inside the bounds (sigmoid domain)
            lo.append(-4.0), hi.append(4.0)
        elif unk.transform.positive:  # one decade either way
            lo.append(u - math.log(10)), hi.append(u + math.log(10))
        else:
            w = max(abs(u), 1.0)
            lo.append(u - w), hi.append(u + w)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    sobol = torch.quasirandom.SobolEngine(p, scramble=True, seed=seed)
    lo_t, hi_t = torch.tensor(lo, dtype=F64), torch.tensor(hi, dtype=F64)
    cand = lo_t + sobol.draw(n_cand).to(F64) * (hi_t - lo_t)
    if screen == 0:
        return torch.cat([u0, cand[: n_starts - 1]]), None
    cand = torch.cat([u0, cand])
    saved = problem.solve_options
    problem.solve_options = {**saved, "max_steps": min(int(saved.get("max_steps", 10_000)), 200)}
    try:
        if problem.batchable:
            if with_jacobian and problem.complex_step:
                ev, jac = problem.evaluate_jac(cand)
            else:
                with torch.no_grad():
                    ev, jac = problem.evaluate(cand), None
            f = problem.objective(ev, _init_aux(problem, ev))
        else:
            fs, ev, jac = [], None, None
            with torch.no_grad():
                for i in range(cand.shape[0]):
                    ev_i = problem.evaluate(cand[i : i + 1])
                    fs.append(problem.objective(ev_i, _init_aux(problem, ev_i)))
            f = torch.cat(fs)
    finally:
        problem.solve_options = saved
    order = torch.argsort(torch.nan_to_num(f, nan=math.inf))[:n_starts]
    order = order[torch.isfinite(f[order])]
    if order.numel() == 0:
        return u0, None
    if ev is None or jac is None:
        return cand[order], None
    sub = Evaluation(ev.mu[order], ev.pen[order], ev.ok[order], ev.out[order])
    return cand[order], (sub, jac[order])


def _init_aux(problem: Problem, ev) -> torch.Tensor | None:
    aux = problem.noise.init_aux(problem.y_flat(), ev.mu.flatten(1), problem.mask_flat())
    if aux is None:
        return None
    return problem.noise.fit_aux(
        problem.y_flat(), torch.nan_to_num(ev.mu.flatten(1), nan=1.0), problem.mask_flat(), aux
    )


def _result(
    model,
    dynamics,
    problem: Problem,
    opt: OptResult,
    i: int,
    objectives: list[float],
    optimizer: str,
    level: float,
    covariance: bool,
    start_time: float,
    write_back: bool = True,
) -> FitResult:
    u = opt.u[i : i + 1].detach()
    aux = None if opt.aux is None else opt.aux[i : i + 1].detach()
    names = problem.free_names
    n_free = len(names)
    noise = problem.noise
    # Goodness of fit and covariance at the optimum (the Levenberg–Marquardt Jacobian is already there).
    need_jac = covariance and 0 < n_free <= MAX_COV_PARAMS
    if opt.jac is not None and opt.mu is not None:
        ev = Evaluation(opt.mu[i : i + 1], opt.pen[i : i + 1], torch.ones(1, dtype=torch.bool), opt.mu[i : i + 1])
        jac = opt.jac[i : i + 1] if need_jac else None
    elif need_jac:
        ev, jac = problem.evaluate_jac(u)
        jac = jac if bool(ev.ok.all()) else None
    else:
        with torch.no_grad():
            ev = problem.evaluate(u)
        jac = None
    mu = ev.mu.detach()
    mask = problem.mask_flat()
    y = problem.y_flat()
    n_obs = problem.n_obs
    n_seg_unknowns = sum(1 for j in problem.free if problem.unknowns[j].kind == "segment")
    n_eff = n_free - n_seg_unknowns + (1 if aux is not None else 0)
    dof = max(n_obs - (n_free - n_seg_unknowns) - (1 if aux is not None else 0), 1)
    resid = torch.where(mask, y - mu.flatten(1), 0.0)
    ssr = float((resid * resid).sum())
    loglik = float(noise.loglik(y, mu.flatten(1), mask, aux)[0])
    n_par_ll = n_eff + (1 if noise.has_scale else 0)
    aic = 2 * n_par_ll - 2 * loglik
    bic = n_par_ll * math.log(max(n_obs, 1)) - 2 * loglik
    cov, q, scale2, identifiable = _covariance(problem, ev, jac, aux, level)

    # Estimates on the natural scale.
    u_all = problem.full(u)[0]
    x_all = problem.natural(u_all.unsqueeze(0))[0]
    free_pos = {j: k for k, j in enumerate(problem.free)}
    params: dict[str, Estimate] = {}
    initial: dict[str, Estimate] = {}
    units = getattr(model, "param_info", {}) if isinstance(model, MechanisticModel) else {}
    for j, unk in enumerate(problem.unknowns):
        value = float(x_all[j])
        est = Estimate(value, 0.0 if unk.fixed else math.nan)
        if unk.kind == "param" and unk.name in units:
            est.unit = units[unk.name].unit
        if j in free_pos and cov is not None:
            k = free_pos[j]
            var = float(cov[k, k])
            if math.isfinite(var):
                se_u = math.sqrt(max(var, 0.0))
                uj = float(u_all[j])
                tr = unk.transform
                xs = tr.forward(torch.tensor([uj - q * se_u, uj + q * se_u], dtype=F64))
                dxdu = (
                    tr.forward(torch.complex(torch.tensor(uj, dtype=F64), torch.tensor(1e-20, dtype=F64))).imag / 1e-20
                )
                est.se = abs(float(dxdu)) * se_u
                est.lower, est.upper = float(xs[0]), float(xs[1])
            else:  # no information (or an estimate against a bound): the interval is the whole range
                est.se = math.inf
                est.lower, est.upper = unk.transform.bounds
        (params if unk.kind == "param" else initial)[unk.name] = est

    derived = _derived(model, problem, u, cov, q) if isinstance(model, MechanisticModel) else {}
    noise_params: dict[str, float] = {}
    if noise.has_scale:
        noise_params["sigma"] = math.sqrt(scale2)
    if aux is not None:
        noise_params[noise.aux_name or "aux"] = float(aux[0])
        noise_params["dispersion"] = scale2
    if write_back:
        dynamics.write_back(x_all[: problem.n_params].detach())

    return FitResult(
        model=model,
        problem=problem,
        names=names,
        u=u,
        aux=aux,
        cov=cov,
        scale2=scale2,
        level=level,
        params=params,
        initial=initial,
        derived=derived,
        noise_params=noise_params,
        objective=float(opt.objective[i]),
        ssr=ssr,
        loglik=loglik,
        aic=aic,
        bic=bic,
        rmse=math.sqrt(ssr / max(n_obs, 1)),
        n_obs=n_obs,
        n_free=n_free,
        dof=dof,
        converged=bool(opt.converged[i]),
        message=opt.reasons[i],
        n_iter=opt.n_iter,
        n_solves=problem.n_solves,
        elapsed=time.perf_counter() - start_time,
        optimizer=optimizer,
        starts=objectives,
        fitted=mu[0],
        observed=[o.name for o in problem.observations],
        identifiable=identifiable,
    )


def _derived(model: MechanisticModel, problem: Problem, u: torch.Tensor, cov: torch.Tensor | None, q: float):
    """Derived quantities with delta-method intervals (on the log scale when positive)."""

    def compute(uu: torch.Tensor) -> dict[str, torch.Tensor]:
        x = problem.natural(problem.full(uu.unsqueeze(0)))[0]
        p = {unk.name: x[j] for j, unk in enumerate(problem.unknowns) if unk.kind == "param"}
        return model.derived(p)

    values = compute(u[0].detach())
    out: dict[str, Estimate] = {}
    for name, v in values.items():
        value = float(v)
        est = Estimate(value)
        if cov is not None and u.shape[1] > 0:
            uu = u[0].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(compute(uu)[name], uu, allow_unused=True)
            grad = torch.zeros_like(uu) if grad is None else grad
            var = float(grad @ torch.nan_to_num(cov, nan=0.0, posinf=1e300) @ grad)
            if math.isfinite(var) and var >= 0:
                se = math.sqrt(var)
                est.se = se
                if value > 0:
                    w = min(q * se / value, 700.0)
                    est.lower, est.upper = value * math.exp(-w), value * math.exp(w)
                else:
                    est.lower, est.upper = value - q * se, value + q * se
        out[name] = est
    return out
