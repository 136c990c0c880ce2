"""torchdiffeq's ``odeint`` on :func:`dxdt.solve`: port torchdiffeq code by changing one import.

``from dxdt.compat.torchdiffeq import odeint`` accepts torchdiffeq's arguments (``func(t, y)``, ``y0`` of any
shape or a tuple of tensors, a 1-D ``t`` whose first entry is the initial time, ``rtol``/``atol``, ``method``,
``options``) and returns what torchdiffeq returns; ``odeint_adjoint`` likewise, with the continuous adjoint
of :class:`dxdt.adjoints.BacksolveAdjoint`. ``odeint_event`` is not provided (yet).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import ButcherTableau, Dopri5, Euler, ExplicitRungeKutta, Midpoint, PIController, SaveAt, solve
from ..adjoints import BacksolveAdjoint

TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]

# torchdiffeq's "rk4" is Kutta's 3/8 rule (its ``rk4_alt_step_func``), not the classical RK4 that dxdt's
# "rk4" is; the compat layer uses the same method so that fixed-grid results agree to rounding.
RK4_38 = ButcherTableau(
    name="RK4 (3/8 rule)",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=(
        (),
        (1 / 3,),
        (-1 / 3, 1.0),
        (1.0, -1.0, 1.0),
    ),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
    reference="Kutta (1901); Hairer, Nørsett & Wanner, Solving ODEs I (1993), Table II.1.2 (right)",
)

# torchdiffeq's "dopri5" estimates its error with Shampine's alternative embedded weights (b_hat ending in
# 1/60, its _DORMAND_PRINCE_SHAMPINE_TABLEAU), not Dormand and Prince's (ending in 1/40, as in dopri5.f,
# scipy and dxdt's "dopri5"). Same solution, different step sizes; the compat layer uses torchdiffeq's.
_B_HAT_SHAMPINE = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
# Its dense output is the quartic through y0, y1, the slopes f0 = k1, f1 = k7, and Shampine's midpoint value
# y0 + dt Σ m_i k_i (torchdiffeq's _interp_fit with DPS_C_MID); in stage weights per power of θ:
_MID = tuple(
    w / 2
    for w in (
        6025192743 / 30085553152, 0.0, 51252292925 / 65400821598, -2691868925 / 45128329728,
        187940372067 / 1594534317056, -1776094331 / 19743644256, 11237099 / 235043384,
    )
)  # fmt: skip


def _quartic_rows(b: tuple[float, ...], m: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    e1 = (1.0, 0, 0, 0, 0, 0, 0.0)
    e7 = (0.0, 0, 0, 0, 0, 0, 1.0)
    powers = [  # coefficients of θ, θ², θ³, θ⁴ as combinations of (e1, e7, b, m)
        (1, 0, 0, 0),
        (-4, 1, -5, 16),
        (5, -3, 14, -32),
        (-2, 2, -8, 16),
    ]
    per_power = [
        [c1 * x + c7 * z + cb * bi + cm * mi for x, z, bi, mi in zip(e1, e7, b, m)] for c1, c7, cb, cm in powers
    ]
    return tuple(tuple(row[i] for row in per_power) for i in range(len(b)))


DOPRI5_SHAMPINE = dataclasses.replace(
    Dopri5.tableau,
    name="Dopri5 (torchdiffeq: Shampine's error estimate and midpoint interpolant)",
    b_err=tuple(b - bh for b, bh in zip(Dopri5.tableau.b, _B_HAT_SHAMPINE)),
    dense=_quartic_rows(Dopri5.tableau.b, _MID),
    reference=Dopri5.tableau.reference + "; error weights and dense output: Shampine (1986), as in torchdiffeq",
)


@dataclasses.dataclass(frozen=True)
class TorchdiffeqController(PIController):
    """torchdiffeq's step-size rule: ``dt · clip(0.9 · err^(−1/k), 0.2, 10)`` (an I controller), except
    that an accepted step never shrinks the next one (its ``dfactor`` is 1 when ``err < 1``)."""

    beta1: float = 1.0
    beta2: float = 0.0

    def propose(self, dt, err, err_prev, accept, error_order):
        dt_new, err_prev = super().propose(dt, err, err_prev, accept, error_order)
        return torch.where(accept, torch.maximum(dt_new, dt), dt_new), err_prev


# torchdiffeq method name -> dxdt solver (adaptive methods) or tableau (fixed-grid methods).
ADAPTIVE_METHODS: dict[str, Any] = {
    "dopri5": ExplicitRungeKutta(DOPRI5_SHAMPINE),
    "dopri8": "dopri8",
    "tsit5": "tsit5",
    "bosh3": "bosh3",
    "adaptive_heun": "heun",
}
FIXED_METHODS: dict[str, ButcherTableau] = {
    "euler": Euler.tableau,
    "midpoint": Midpoint.tableau,
    "rk4": RK4_38,
}
METHODS: tuple[str, ...] = (*ADAPTIVE_METHODS, *FIXED_METHODS)
# Methods that dxdt interpolates at save times: like torchdiffeq, their last step may overshoot t[-1].
_STEP_PAST_T1 = ("dopri5", "tsit5", "bosh3", "adaptive_heun")
# torchdiffeq methods without a counterpart here, named in the error so that users know it is deliberate.
_UNSUPPORTED = ("fehlberg2", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver")
_ADAPTIVE_OPTIONS = ("first_step", "max_num_steps")
_FIXED_OPTIONS = ("step_size", "max_num_steps")


def odeint(
    func: Callable[[torch.Tensor, TensorOrTuple], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    rtol: float | torch.Tensor | Sequence[float | torch.Tensor] = 1e-7,
    atol: float | torch.Tensor | Sequence[float | torch.Tensor] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
) -> TensorOrTuple:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint`` (0.2.x), computed by :func:`dxdt.solve` (the whole
    state as one system with one step size, like torchdiffeq; gradients by backpropagation through the
    solver's operations).

    Args:
        func: ``func(t, y)`` with ``t`` a 0-d tensor (in ``y``'s dtype) and ``y`` shaped like ``y0`` (a tuple
            of tensors when ``y0`` is a tuple); returns ``dy/dt`` of the same shape(s) and dtype.
        y0: the initial state: a tensor of any shape (0-d included), or a tuple of tensors.
        t: 1-D floating tensor of times, strictly increasing or strictly decreasing (integrating backwards);
            ``t[0]`` is the initial time. May require grad (see Gradients).
        rtol, atol: relative and absolute tolerances (adaptive methods): floats, or tensors broadcastable to
            ``y0`` (per component); for a tuple ``y0``, also a tuple/list with one entry per tensor.
            They may not require grad. Fixed-grid methods ignore them.
        method: ``"dopri5"`` (default), ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"`` and ``"tsit5"``
            (adaptive; ``tsit5`` is an extension, torchdiffeq has none), or ``"euler"``, ``"midpoint"``,
            ``"rk4"`` (fixed grid).
        options: adaptive methods: ``first_step`` (initial step size) and ``max_num_steps``; fixed-grid
            methods: ``step_size`` and ``max_num_steps``. Any other key raises ``ValueError`` (torchdiffeq
            warns about some and ignores them).

    Returns:
        ``(len(t), *y0.shape)``, with ``out[0] == y0``; for a tuple ``y0`` a tuple of such tensors.

    Raises:
        ValueError: an unknown method or option, a bad ``t`` or tolerance (torchdiffeq raises
            ``AssertionError`` for some of these).
        dxdt.SolveError: the solve failed: more than ``max_num_steps`` steps (torchdiffeq raises
            ``AssertionError``), a step size underflow, or a non-finite state. The partial solution is
            attached as ``error.solution``.

    Methods and where they differ from torchdiffeq's:
        - Adaptive methods use the classical (I) step-size controller, Hairer's initial step and an RMS error
          norm over the whole state, as torchdiffeq does; step sequences still differ in details, so results
          agree to the tolerances, not bitwise. For a tuple ``y0`` the norm is the RMS over all components
          (torchdiffeq takes the largest per-tensor RMS).
        - ``"dopri8"`` is Hairer's DOP853 (Dormand–Prince 8(5,3)); torchdiffeq's ``"dopri8"`` is the
          Prince–Dormand RK8(7)13M pair. Both are eighth order. DOP853 has no dense output of its own
          here, so its steps land on every time in ``t`` (torchdiffeq interpolates).
        - The other adaptive methods interpolate at the times in ``t`` (``"dopri5"`` and ``"tsit5"`` with
          their own dense output, ``"bosh3"`` and ``"adaptive_heun"`` with cubic Hermite) and, as in
          torchdiffeq, the last step may overshoot ``t[-1]`` (``func`` is evaluated beyond it).
        - ``max_num_steps`` defaults to dxdt's 10 000 (torchdiffeq: unbounded), so that nothing runs forever.
        - Fixed grid, as in torchdiffeq: without ``step_size`` one step per interval of ``t``; with
          ``step_size`` the grid ``t[0] + k * step_size`` (the last step shortened to end on ``t[-1]``) with
          linear interpolation at the times in ``t``. ``"rk4"`` is Kutta's 3/8 rule, like torchdiffeq's
          (dxdt's own ``"rk4"`` is the classical one). A non-finite state raises ``SolveError``
          instead of filling the output with NaN.

    Gradients:
        Backpropagation through the solve reaches ``y0``, parameters used by ``func`` and ``t[1:]``.
        ``t[0]`` is detached (no gradient; ``dxdt.solve`` does not propagate gradients to the initial
        time yet). For ``t[1:]`` the gradient is that of the returned output as a function of the save
        time with the steps held fixed: the derivative of the dense output (adaptive methods, as in
        torchdiffeq), of the linear interpolant (fixed grid with ``step_size``; at ``t[-1]`` its slope
        over the last step, and at a time on the grid the slope of the step ending there, where torchdiffeq
        gives 0), or ``func(t_i, y_i)`` (fixed grid without ``step_size``, where torchdiffeq
        differentiates the grid itself; the two agree to the discretisation error).
    """
    return _odeint(func, y0, t, rtol, atol, method, options, gradient=None)


def odeint_adjoint(
    func: Callable[[torch.Tensor, TensorOrTuple], TensorOrTuple],
    y0: TensorOrTuple,
    t: torch.Tensor,
    rtol: float | torch.Tensor | Sequence[float | torch.Tensor] = 1e-7,
    atol: float | torch.Tensor | Sequence[float | torch.Tensor] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> TensorOrTuple:
    """torchdiffeq's ``odeint_adjoint``: :func:`odeint` whose gradients come from the continuous adjoint.

    The backward pass solves the adjoint equation backwards in time (:class:`dxdt.adjoints.BacksolveAdjoint`),
    so memory does not grow with the number of steps. Same arguments as :func:`odeint`, plus:

    Args:
        adjoint_rtol, adjoint_atol: tolerances of the backward solve (default: ``rtol``, ``atol``).
        adjoint_method: its method (default: ``method``).
        adjoint_options: ``{"norm": "seminorm"}`` leaves the parameter gradients out of the backward error
            norm (fewer steps; torchdiffeq's recommendation); ``max_num_steps`` bounds the backward solve.
        adjoint_params: the tensors to compute gradients for; default ``tuple(func.parameters())``, which
            needs ``func`` to be an ``nn.Module`` (as in torchdiffeq).

    Gradients reach ``y0``, ``adjoint_params`` and every entry of ``t`` (``t[0]`` included). Only first
    derivatives: a double backward raises. ``event_fn`` (event handling) is not supported yet and raises.
    """
    if event_fn is not None:
        raise ValueError("event_fn is not supported by dxdt.compat.torchdiffeq.odeint_adjoint yet")
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError(
                "func must be an instance of nn.Module to specify the adjoint parameters; alternatively they can be "
                "specified explicitly via the `adjoint_params` argument. If there are no parameters then it is "
                "allowable to set `adjoint_params=()`."
            )
        adjoint_params = tuple(func.parameters())
    extra = set(adjoint_options or {}) - {"norm", "max_num_steps"}
    if extra:
        raise ValueError(f"adjoint_options supports 'norm' and 'max_num_steps'; got {sorted(extra)}")
    norm = (adjoint_options or {}).get("norm", "default")
    if norm not in ("default", "seminorm"):
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or 'default'; got {norm!r}")
    if adjoint_method is not None and adjoint_method not in ADAPTIVE_METHODS:
        raise ValueError(f"adjoint_method must be one of {', '.join(ADAPTIVE_METHODS)}; got {adjoint_method!r}")
    if options and options.get("step_size") is not None:
        raise ValueError(
            "options['step_size'] (a fixed grid with interpolation) is not supported by odeint_adjoint: use odeint, "
            "or a fixed-grid method with the grid as t"
        )
    gradient = BacksolveAdjoint(
        params=[p for p in adjoint_params if p.requires_grad],
        solver=ADAPTIVE_METHODS[adjoint_method] if adjoint_method is not None else None,
        rtol=adjoint_rtol,
        atol=adjoint_atol,
        seminorm=norm == "seminorm",
        max_steps=(adjoint_options or {}).get("max_num_steps"),
    )
    return _odeint(func, y0, t, rtol, atol, method, options, gradient=gradient)


def _odeint(func, y0, t, rtol, atol, method, options, gradient: BacksolveAdjoint | None) -> TensorOrTuple:
    if method is None:
        method = "dopri5"
    if method not in METHODS:
        extra = (
            f" (torchdiffeq's {method!r} has no counterpart in dxdt.compat.torchdiffeq)"
            if method in _UNSUPPORTED
            else ""
        )
        raise ValueError(f"Invalid method {method!r}{extra}. Must be one of {', '.join(METHODS)}.")
    opts = _check_options(method, options)

    is_tuple = not isinstance(y0, torch.Tensor)
    if is_tuple:
        if not isinstance(y0, tuple) or not y0 or not all(isinstance(y, torch.Tensor) for y in y0):
            raise TypeError(f"y0 must be a torch.Tensor or a non-empty tuple of tensors; got {type(y0).__name__}")
        shapes = [y.shape for y in y0]
        y_flat = torch.cat([y.reshape(-1) for y in y0])
    else:
        shapes = [y0.shape]
        y_flat = y0.reshape(-1)
    t = _check_t(t)
    rtol_flat = _flat_tolerance("rtol", rtol, shapes, is_tuple)
    atol_flat = _flat_tolerance("atol", atol, shapes, is_tuple)
    f = _FlatFunc(func, shapes, is_tuple)

    if len(t) == 1:
        ys = y_flat.unsqueeze(0).clone()
    elif method in ADAPTIVE_METHODS:
        ys = _solve_adaptive(f, y_flat, t, method, rtol_flat, atol_flat, opts, gradient)
    elif opts.get("step_size") is None:
        ys = _solve_on_t(f, y_flat, t, ExplicitRungeKutta(FIXED_METHODS[method]), opts, gradient)
    else:
        ys = _solve_step_size(f, y_flat, t, ExplicitRungeKutta(FIXED_METHODS[method]), opts)

    if not is_tuple:
        return ys.reshape(len(t), *shapes[0])
    parts = torch.split(ys, [s.numel() for s in shapes], dim=1)
    return tuple(p.reshape(len(t), *s) for p, s in zip(parts, shapes))


class _FlatFunc:
    """The user's ``func`` as dxdt's joint mode calls it: ``f(t, y)`` with 0-d ``t`` and ``y`` of shape ``(1, N)``."""

    def __init__(self, func: Callable, shapes: list[torch.Size], is_tuple: bool):
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y); got {type(func).__name__}")
        self.func = func
        self.shapes = shapes
        self.sizes = [s.numel() for s in shapes]
        self.is_tuple = is_tuple

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if t.is_complex():  # dxdt gives t in y's dtype; torchdiffeq gives real times
            t = t.real
        if not self.is_tuple:
            out = self.func(t, y.reshape(self.shapes[0]))
            self._check(out, self.shapes[0], "")
            return out.reshape(1, -1)
        ys = tuple(p.reshape(s) for p, s in zip(torch.split(y[0], self.sizes), self.shapes))
        out = self.func(t, ys)
        if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
            raise TypeError(
                f"y0 is a tuple of {len(self.shapes)} tensors, so func must return a tuple of {len(self.shapes)} "
                f"tensors; it returned {type(out).__name__}"
            )
        for i, (o, s) in enumerate(zip(out, self.shapes)):
            self._check(o, s, f"[{i}]")
        return torch.cat([o.reshape(-1) for o in out]).unsqueeze(0)

    @staticmethod
    def _check(out: Any, shape: torch.Size, index: str) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"func must return a tensor{index} of shape {tuple(shape)}; got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(
                f"func returned{index} shape {tuple(out.shape)} but y0{index} has shape {tuple(shape)}: "
                "func(t, y) must return dy/dt with y's shape"
            )


def _solve_adaptive(
    f: _FlatFunc,
    y_flat: torch.Tensor,
    t: torch.Tensor,
    method: str,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    opts: dict[str, Any],
    gradient: BacksolveAdjoint | None,
) -> torch.Tensor:
    sol = solve(
        f,
        y_flat.unsqueeze(0),
        t[0] if gradient is not None else t[0].detach(),
        t[-1].detach(),
        solver=ADAPTIVE_METHODS[method],
        # t[1:] keeps t's graph (gradients reach the save times); just [t0, t1] without one needs no trajectory.
        saveat=t[1:] if len(t) > 2 or t.requires_grad else None,
        rtol=rtol,
        atol=atol,
        dt0=opts.get("first_step"),
        **({"max_steps": opts["max_num_steps"]} if "max_num_steps" in opts else {}),  # else dxdt's default
        controller=TorchdiffeqController(),
        batch_mode="joint",
        step_past_t1=method in _STEP_PAST_T1,
        gradient=gradient or "autodiff",
    )
    return torch.cat([y_flat.unsqueeze(0), sol.ys[0]])


def _solve_on_t(
    f: _FlatFunc, y_flat: torch.Tensor, t: torch.Tensor, solver: Any, opts: dict, gradient: BacksolveAdjoint | None
) -> torch.Tensor:
    """torchdiffeq's fixed grid without ``step_size``: the grid is ``t``, one step per interval."""
    t64 = t.detach().to(torch.float64)
    sol = solve(
        f,
        y_flat.unsqueeze(0),
        t[0].to(torch.float64) if gradient is not None else t64[0],
        t64[-1],
        solver=solver,
        # Fixed-step methods end a step on every save time; a step as long as the whole interval makes each
        # step end on the next one. The outputs carry d y(t_i) / d t_i = f(t_i, y_i) (the interpolant's slope).
        saveat=t[1:],
        dt0=(t64[-1] - t64[0]).abs(),
        max_steps=opts.get("max_num_steps", len(t) - 1),
        batch_mode="joint",
        gradient=gradient or "autodiff",
    )
    return torch.cat([y_flat.unsqueeze(0), sol.ys[0]])


def _solve_step_size(f: _FlatFunc, y_flat: torch.Tensor, t: torch.Tensor, solver: Any, opts: dict) -> torch.Tensor:
    """torchdiffeq's fixed grid with ``step_size``: steps from ``t[0]``, linear interpolation at ``t``."""
    step = opts["step_size"]
    t64 = t.detach().to(torch.float64)
    n_steps = math.ceil(abs(float(t64[-1] - t64[0])) / step)
    sol = solve(
        f,
        y_flat.unsqueeze(0),
        t64[0],
        t64[-1],
        solver=solver,
        saveat=SaveAt(steps=True),
        dt0=step,
        max_steps=opts.get("max_num_steps", n_steps + 2),
        batch_mode="joint",
    )
    grid, ys = sol.ts, sol.ys[0]  # (G,) float64 and (G, N)
    direction = 1.0 if t64[-1] > t64[0] else -1.0
    tau_grid = (grid - grid[0]) * direction
    tq = t[1:].to(torch.float64)
    tau_q = (tq.detach() - grid[0]) * direction
    # The step (g_k, g_k+1] holding each t_j, so that theta is in (0, 1] and theta == 1 returns y_k+1 exactly.
    k = torch.searchsorted(tau_grid[1:].contiguous(), tau_q, side="left").clamp_max(len(grid) - 2)
    theta_m1 = ((tq - grid[k]) / (grid[k + 1] - grid[k]) - 1).to(ys.dtype).unsqueeze(1)
    out = ys[k + 1] + theta_m1 * (ys[k + 1] - ys[k])
    return torch.cat([y_flat.unsqueeze(0), out])


def _check_options(method: str, options: dict[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict; got {type(options).__name__}")
    fixed = method in FIXED_METHODS
    allowed = _FIXED_OPTIONS if fixed else _ADAPTIVE_OPTIONS
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        kind = "fixed-grid" if fixed else "adaptive"
        raise ValueError(
            f"unsupported option(s) {', '.join(map(repr, unknown))} for the {kind} method {method!r}: "
            f"dxdt.compat.torchdiffeq supports {', '.join(map(repr, allowed))} here"
        )
    opts = dict(options)
    for name in ("first_step", "step_size"):
        if opts.get(name) is not None:
            value = opts[name]
            value = float(value.detach()) if isinstance(value, torch.Tensor) and value.numel() == 1 else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"option {name} must be a positive finite number; got {opts[name]!r}")
            opts[name] = float(value)
    if "max_num_steps" in opts:
        value = opts["max_num_steps"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option max_num_steps must be a positive int; got {value!r}")
    return opts


def _check_t(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        what = f"a {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"t must be a 1-D floating point torch.Tensor of times; got {what}")
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"t must be one dimensional and non-empty; got shape {tuple(t.shape)}")
    values = t.detach()
    if not torch.isfinite(values).all():
        raise ValueError(f"t must be finite; got {values.tolist()}")
    diff = values[1:] - values[:-1]
    if not ((diff > 0).all() or (diff < 0).all()):
        raise ValueError(f"t must be strictly increasing or strictly decreasing; got {values.tolist()}")
    return t


def _flat_tolerance(name: str, tol: Any, shapes: list[torch.Size], is_tuple: bool) -> float | torch.Tensor:
    """A tolerance as ``dxdt.solve`` takes it for the flattened ``(1, N)`` state."""
    if is_tuple and isinstance(tol, (tuple, list)):
        if len(tol) != len(shapes):
            raise ValueError(f"a tuple {name} must have one entry per tensor of y0 ({len(shapes)}); got {len(tol)}")
        parts = [_broadcast_tolerance(name, x, s) for x, s in zip(tol, shapes)]
        return torch.cat([p.reshape(-1) for p in parts]).unsqueeze(0)
    if isinstance(tol, torch.Tensor):
        if not is_tuple:
            return _broadcast_tolerance(name, tol, shapes[0]).reshape(1, -1)
        if tol.numel() != 1:
            raise ValueError(f"for a tuple y0, {name} must be a scalar or a tuple with one entry per tensor")
        return _broadcast_tolerance(name, tol.reshape(()), torch.Size()).reshape(1, 1)
    return tol  # a number: dxdt.solve validates it


def _broadcast_tolerance(name: str, tol: Any, shape: torch.Size) -> torch.Tensor:
    if isinstance(tol, torch.Tensor) and tol.requires_grad:
        raise ValueError(f"{name} cannot require gradient")
    tol_t = torch.as_tensor(tol)
    try:
        return torch.broadcast_to(tol_t, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(tol_t.shape)} does not broadcast to y0's shape {tuple(shape)}"
        ) from None
