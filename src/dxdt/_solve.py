"""``dxdt.solve``: validate the input, normalise shapes, run the loop, assemble the solution, fail loudly."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from ._problem import ODEProblem
from ._saveat import SaveAt, as_saveat, check_save_times
from ._solution import Solution, SolveError
from ._term import Term
from .adjoints import AbstractGradient, get_gradient
from .controllers import AbstractController, ConstantStepController, IController, PIController
from .solvers import AbstractSolver, get_solver

DEFAULT_MAX_STEPS = 10_000


def solve(
    f: Callable[..., torch.Tensor],
    y0: torch.Tensor,
    t0: float | torch.Tensor,
    t1: float | torch.Tensor,
    *,
    args: Any = None,
    solver: str | AbstractSolver = "tsit5",
    saveat: SaveAt | torch.Tensor | Sequence[float] | None = None,
    rtol: float | torch.Tensor = 1e-6,
    atol: float | torch.Tensor = 1e-9,
    dt0: float | torch.Tensor | None = None,
    dt_min: float = 0.0,
    dt_max: float = math.inf,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: Literal["pi", "i"] | AbstractController = "pi",
    batch_mode: Literal["per_sample", "joint"] = "per_sample",
    step_past_t1: bool = False,
    compile: bool = False,
    gradient: str | AbstractGradient = "autodiff",
    throw: bool = True,
) -> Solution:
    """Solve the ODE ``dy/dt = f(t, y[, args])`` from ``t0`` to ``t1`` for a batch of initial states.

    Args:
        f: the vector field, ``f(t, y)`` or ``f(t, y, args)``; returns a tensor shaped like ``y``. In
            per-sample mode ``y`` is ``(B, *S)`` and ``t`` is ``(B, 1, ..., 1)`` (broadcastable against
            ``y``, one time per sample); in joint mode ``t`` is a 0-d tensor. ``t`` has ``y``'s dtype.
        y0: ``(B, *S)`` initial states: ``B`` independent problems with state shape ``S`` (at least one
            state dimension: a scalar ODE is ``(B, 1)``).
        t0, t1: start and end times: Python floats, 0-d tensors, or ``(B,)`` tensors (one interval per
            sample; per-sample mode only). ``t1 < t0`` integrates backwards. Times are kept in float64.
        args: passed to ``f`` as its third argument.
        solver: a method name (``"tsit5"``, ``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"heun"``, and the
            fixed-step ``"euler"``, ``"midpoint"``, ``"ralston"``, ``"rk4"``) or a solver instance.
        saveat: :class:`SaveAt`, or a tensor of save times (``(T,)`` shared or ``(B, T)`` per sample).
            Default: ``t1`` only.
        rtol, atol: relative and absolute tolerances: floats, or tensors broadcastable to ``y0``'s shape
            (per component). ``atol`` must be positive.
        dt0: initial step size (its magnitude); default: Hairer's automatic choice. Required, as the
            constant step, for fixed-step methods.
        dt_min: a sample whose step size would fall below this fails with ``DT_UNDERFLOW``.
        dt_max: the largest step size.
        max_steps: the most steps (accepted + rejected) any sample may take; a sample that needs more
            ends with ``MAX_STEPS``. Also bounds the loop: nothing runs forever.
        controller: ``"pi"`` (default), ``"i"``, or a controller instance. Ignored by fixed-step methods.
        batch_mode: ``"per_sample"`` (each sample its own steps) or ``"joint"`` (the batch as one system
            with one step size and one error norm: torchdiffeq's semantics).
        step_past_t1: let the last step overshoot ``t1`` and interpolate back (torchdiffeq's semantics:
            one step fewer, but ``f`` is evaluated beyond ``t1``). Adaptive methods only; not with
            ``SaveAt(steps=True)``.
        compile: compile each loop iteration (all stages, error test, controller, status updates) with
            ``torch.compile``: the first solve pays seconds to minutes of compilation; later solves with the
            same ``f``, solver, shapes and dtypes reuse it (about 3× faster on Lotka–Volterra with Tsit5, 4×
            for Rodas5P on Robertson, on CPU). Only the test whether any sample still runs (and, for "auto", its
            test schedule and switching summary) stays in Python.
            Explicit Runge–Kutta and Rosenbrock methods (the Jacobian is then evaluated inside the graph on
            every attempt, by forward mode for ``jac="autodiff"``) and ``"auto"``; not ESDIRK, which decides
            Newton convergence on the host. With ``gradient="backsolve"`` or ``"interpolate"`` and an explicit
            method, the backward solve's iterations compile too (their vector-Jacobian products included).
        gradient: how gradients flow back through the solve: ``"autodiff"`` (default: backpropagation
            through the loop, the exact gradient of the computed solution), ``"checkpoint"`` (the same
            gradient with memory logarithmic in the number of steps), ``"backsolve"`` (continuous adjoint:
            memory flat in the number of steps), ``"interpolate"`` (continuous adjoint reading y(t) from the
            forward dense solution: stable where backsolve is not), ``"forward"`` (forward sensitivities:
            cheapest for a few parameters), or an instance from :mod:`dxdt.adjoints` with options. See
            ``docs/gradients.md`` for which to pick.
        throw: raise :class:`SolveError` if any sample fails (default); with ``False`` the solution is
            returned with per-sample ``status``.

    Returns:
        :class:`Solution` with ``ts`` and ``ys`` of shape ``(B, T, *S)``.

    Raises:
        TypeError, ValueError: bad input, before any work is done.
        SolveError: some samples did not reach ``t1`` (with ``throw=True``); the partial solution is
            attached.
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y) or f(t, y, args); got {type(f).__name__}")
    y0 = _check_y0(y0)
    if batch_mode not in ("per_sample", "joint"):
        raise ValueError(f"batch_mode must be 'per_sample' or 'joint'; got {batch_mode!r}")
    joint = batch_mode == "joint"
    solver = get_solver(solver)
    strategy = get_gradient(gradient)
    batch = y0.shape[0]
    t0, t1 = _check_times(t0, t1, batch, joint, y0.device)
    rtol_t = _check_tolerance("rtol", rtol, y0, positive=False)
    atol_t = _check_tolerance("atol", atol, y0, positive=True)
    _warn_unresolvable_tolerance(rtol_t, y0)
    _check_int("max_steps", max_steps)
    for name, value in (("dt_min", dt_min), ("dt_max", dt_max)):
        if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number; got {value!r}")
    if not dt_min < dt_max:
        raise ValueError(f"dt_min must be smaller than dt_max; got dt_min={dt_min}, dt_max={dt_max}")
    dt0_t = _check_dt0(dt0, solver, 1 if joint else batch, y0.device)
    if compile:
        _check_compilable(solver)
    controller = _get_controller(controller, solver)
    if controller.accepts_every_step and dt0_t is None:
        raise ValueError(f"{controller!r} takes constant steps and needs their size: pass dt0=...")
    save = as_saveat(saveat)
    direction = torch.where(t1 >= t0, 1.0, -1.0).to(torch.float64)
    ts = None
    if save.ts is not None:
        ts = save.ts
        if not isinstance(ts, torch.Tensor):  # straight to float64, never through float32
            ts = torch.tensor(ts, dtype=torch.float64, device=y0.device)
        if joint and ts.ndim != 1:
            raise ValueError(f"in joint mode save times are shared: ts must have shape (T,), got {tuple(ts.shape)}")
        shared_ts = ts.ndim == 1
        n = 1 if joint else batch
        ts = check_save_times(ts, t0[:n], t1[:n], direction[:n])

    # Joint mode: the batch is one system, i.e. a batch of one whose state is the whole (B, *S) tensor.
    if joint:
        y_loop, rtol_t, atol_t = y0.unsqueeze(0), rtol_t.unsqueeze(0), atol_t.unsqueeze(0)
        t0, t1, direction = t0[:1], t1[:1], direction[:1]
        time_shape: tuple[int, ...] = ()
    else:
        y_loop = y0
        time_shape = (batch,) + (1,) * (y0.ndim - 1)
    term = Term(f, args, time_shape, joint=joint)

    # Dense output of order >= order - 1 is as accurate as the steps themselves; otherwise (Dopri8, Vern7)
    # and for fixed-step methods, steps land exactly on the save times.
    clip = ts is not None and (not solver.adaptive or solver.dense_order < solver.order - 1)
    if step_past_t1 and (not solver.adaptive or save.steps or clip):
        raise ValueError(
            f"step_past_t1=True needs an adaptive method whose dense output matches its order (tsit5, dopri5, "
            f"bosh3, heun) and no SaveAt(steps=True); got solver={solver!r}, steps={save.steps}"
        )
    problem = ODEProblem(
        term=term,
        solver=solver,
        controller=controller,
        y0=y_loop,
        t0=t0,
        t1=t1,
        direction=direction,
        ts=ts,
        shared_ts=ts is not None and shared_ts,
        joint=joint,
        batch=batch,
        rtol=rtol_t,
        atol=atol_t,
        dt0=dt0_t,
        dt_min=float(dt_min),
        dt_max=float(dt_max),
        max_steps=max_steps,
        save=save,
        clip=clip,
        step_past_t1=step_past_t1,
        compile=compile,
    )
    strategy.check(problem)
    solution = strategy.solve(problem)
    if throw and not bool(solution.success.all()):
        raise SolveError(solution)
    return solution


def _check_y0(y0: Any) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor of shape (B, *S); got {type(y0).__name__}")
    if not (y0.is_floating_point() or y0.is_complex()):
        raise TypeError(f"y0 must have a floating dtype; got {y0.dtype}. Convert it, e.g. y0.double()")
    if y0.ndim < 2:
        raise ValueError(
            f"y0 must have shape (B, *S): a batch dimension and at least one state dimension; got shape "
            f"{tuple(y0.shape)}. For a single system use y0[None]; for a batch of scalar ODEs use y0[:, None]"
        )
    if y0.shape[0] == 0:
        raise ValueError("y0 has an empty batch (shape[0] == 0)")
    if not torch.isfinite(y0.detach()).all():
        bad = (~torch.isfinite(y0.detach())).flatten(1).any(1).nonzero().flatten()[:8].tolist()
        raise ValueError(f"y0 contains NaN or inf (samples {bad}): every initial state must be finite")
    return y0


def _as_time(name: str, t: Any, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor; got {type(t).__name__}")
    # Python numbers go straight to float64: a detour through float32 would move t1 = 1.2 by 5e-8.
    t = t.to(device) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64, device=device)
    if t.is_complex() or t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"{name} must be a scalar or a ({batch},) tensor (one per sample); got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t.detach()).all():
        raise ValueError(f"{name} must be finite; got {t.detach().tolist()}")
    return t.reshape(-1).expand(batch)


def _check_times(t0: Any, t1: Any, batch: int, joint: bool, device: torch.device):
    t0 = _as_time("t0", t0, batch, device)
    t1 = _as_time("t1", t1, batch, device)
    if joint and ((t0 != t0[0]).any() or (t1 != t1[0]).any()):
        raise ValueError(
            f"in joint mode the batch shares one interval: t0 and t1 must be scalars; got t0={t0.tolist()}, "
            f"t1={t1.tolist()}. Use batch_mode='per_sample' for per-sample intervals"
        )
    return t0, t1


def _check_compilable(solver: AbstractSolver) -> None:
    """compile=True needs a loop iteration that torch.compile can trace as a whole."""
    if solver.compilable:
        return
    raise ValueError(
        f"compile=True compiles explicit Runge-Kutta, Rosenbrock and automatic-switching steps; {solver!r} decides "
        "Newton convergence on the host within a step, which torch.compile cannot capture: pass compile=False"
    )


def _check_tolerance(name: str, tol: Any, y0: torch.Tensor, positive: bool) -> torch.Tensor:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor broadcastable to y0; got {type(tol).__name__}")
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    tol_t = torch.as_tensor(tol, dtype=real, device=y0.device).detach()
    try:
        tol_t = torch.broadcast_to(tol_t, y0.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(tol_t.shape)} does not broadcast to y0's shape {tuple(y0.shape)}"
        ) from None
    bad = ~torch.isfinite(tol_t) | (tol_t <= 0 if positive else tol_t < 0)
    if bad.any():
        need = "positive" if positive else "non-negative"
        hint = " (a zero atol divides by zero where y = 0: use a small value such as 1e-12)" if positive else ""
        raise ValueError(f"{name} must be {need} and finite; got {tol_t[bad].flatten()[0].item()}{hint}")
    return tol_t


def _warn_unresolvable_tolerance(rtol: torch.Tensor, y0: torch.Tensor) -> None:
    """Below the unit roundoff of y0's dtype a relative tolerance cannot be met: steps shrink to rounding noise
    (float32 at rtol=1e-10 took 60× the steps of float64 and still reported success)."""
    if not y0.is_floating_point() or y0.dtype == torch.float64:
        return
    roundoff = torch.finfo(y0.dtype).eps / 2
    if float(rtol.max()) < roundoff:
        warnings.warn(
            f"rtol={float(rtol.max()):.3g} is below the unit roundoff of {y0.dtype} ({roundoff:.3g}): the solver "
            f"cannot meet it and will take needlessly many steps. Use float64 (y0.double()) or rtol >= "
            f"{100 * roundoff:.1g}",
            stacklevel=3,
        )


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def _check_dt0(dt0: Any, solver: AbstractSolver, batch: int, device: torch.device) -> torch.Tensor | None:
    if dt0 is None:
        if not solver.adaptive:
            raise ValueError(
                f"{solver!r} is a fixed-step method and needs a step size: pass dt0=... "
                "(or use an adaptive method such as 'tsit5')"
            )
        return None
    dt0_t = torch.as_tensor(dt0, dtype=torch.float64, device=device).detach()
    if dt0_t.ndim > 1 or (dt0_t.ndim == 1 and dt0_t.shape[0] not in (1, batch)):
        raise ValueError(
            f"dt0 must be a number or a ({batch},) tensor (one per sample); got shape {tuple(dt0_t.shape)}"
        )
    if not torch.isfinite(dt0_t).all() or (dt0_t <= 0).any():
        raise ValueError(f"dt0 must be a positive finite number (its sign is taken from t0 -> t1); got {dt0!r}")
    return dt0_t.reshape(-1)


def _get_controller(controller: Any, solver: AbstractSolver) -> AbstractController:
    if not solver.adaptive:
        return ConstantStepController()
    if isinstance(controller, AbstractController):
        return controller
    if controller == "pi":
        return PIController()
    if controller == "i":
        return IController()
    raise ValueError(f"controller must be 'pi', 'i' or an AbstractController instance; got {controller!r}")
