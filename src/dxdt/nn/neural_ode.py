"""Neural ODE (Chen et al., NeurIPS 2018) and augmented neural ODE (Dupont et al., NeurIPS 2019) as modules.

A :class:`NeuralODE` maps an input ``y0`` to the solution of ``dy/dt = func(t, y)`` at the end of its time
span (or at given save times), solved by :func:`dxdt.solve`. Augmentation pads the state with zeros first,
so that the flow lives in a larger space where trajectories that would have to cross no longer need to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .. import Stats, solve
from ..solvers import AbstractSolver, get_solver

__all__ = ["NeuralODE"]

GRADIENTS = ("autodiff", "checkpoint", "backsolve", "interpolate", "forward")
# The arguments NeuralODE sets itself; solve_kwargs may not repeat them.
_OWN_KWARGS = ("args", "solver", "saveat", "rtol", "atol", "max_steps", "batch_mode", "gradient")


class _Counter:
    """How often the vector field was called (a plain object: not a module, not part of any state dict)."""

    def __init__(self) -> None:
        self.calls = 0


class _CountedModule(nn.Module):
    """A module ``func`` with a call counter, itself a module whose parameters are ``func``'s: the gradient
    strategies read a module's parameters (``gradient="forward"`` substitutes them by name)."""

    def __init__(self, func: nn.Module, counter: _Counter):
        super().__init__()
        self.func = func
        self.counter = counter

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.counter.calls += 1
        return self.func(t, y)


def _counted(func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], counter: _Counter) -> Callable:
    """``func`` with a call counter: a module for a module, else a closure (the adjoint strategies find the
    tensors a plain function uses by looking through its closure, so they still find those ``func`` uses)."""
    if isinstance(func, nn.Module):
        return _CountedModule(func, counter)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        counter.calls += 1
        return func(t, y)

    return field


class NeuralODE(nn.Module):
    """``y0 ↦ y(t1)`` (or the trajectory at save times) for ``dy/dt = func(t, y)``.

    Args:
        func: the vector field, called as ``func(t, y)`` with ``y`` of shape ``(B, *S)`` and returning
            ``dy/dt`` of the same shape. In ``batch_mode="joint"`` (default) ``t`` is a 0-d tensor; in
            ``"per_sample"`` mode it is ``(B, 1, ..., 1)``. Usually an ``nn.Module`` (its parameters become
            this module's); any callable works.
        t_span: ``(t0, t1)``, default ``(0, 1)``. Give either ``t_span`` or ``t``.
        t: save times, a strictly monotone 1-D tensor of at least two times; the solve runs from ``t[0]``
            to ``t[-1]``. Stored as a buffer (moves with ``.to(device)``); it may require grad.
        solver: a dxdt method name or instance (default ``"tsit5"``; ``"dopri5"`` is torchdiffeq's).
        rtol, atol: tolerances. The defaults (``1e-3``, ``1e-6``) suit training, where the network's own
            error dwarfs a solver error of ``1e-3``; tighten them to use the model as an accurate ODE.
        gradient: how gradients flow through the solve (see :func:`dxdt.solve`): ``"autodiff"``
            (backpropagate through the solver's operations: the exact gradient of the computed solution),
            ``"checkpoint"``, ``"backsolve"``, ``"interpolate"``, ``"forward"``, or a ``dxdt.adjoints``
            instance.
        batch_mode: ``"joint"`` (default: the batch is one system with one step size, what neural networks
            want: one call of ``func`` per stage for the whole batch, and the adjoint is cheaper) or
            ``"per_sample"`` (every sample its own step sizes: its output does not depend on the batch).
        max_steps: the most steps one solve may take; beyond it the solve raises ``dxdt.SolveError`` (the
            dynamics became stiff or the tolerances are too tight) instead of hanging.
        return_trajectory: ``True``: return the states at every save time, ``(B, T, *S)`` (needs ``t``);
            ``False``: return the final state ``(B, *S)``. Default: ``True`` when ``t`` is given.
        augment_dim: pad the state with this many zero channels (dimension 1 of ``(B, C, ...)``: features
            of a vector state, channels of an image) before integrating (Dupont et al., 2019). ``func`` then
            sees and returns ``(B, C + augment_dim, ...)``.
        return_augmented: with ``augment_dim > 0``, return the full augmented state (default, as Dupont et
            al. do: the next layer reads all ``C + augment_dim`` channels) or, if ``False``, only the first
            ``C`` channels, the original state's own.
        solve_kwargs: further keyword arguments of :func:`dxdt.solve` (``controller``, ``dt0``, ``dt_max``,
            ``step_past_t1``, ``compile``, ``throw``, ...).

    Attributes:
        nfe_forward: calls of ``func`` during the last forward pass (each call evaluates the whole batch).
        nfe_backward: calls of ``func`` during the backward pass of the last forward call, read after
            ``backward()``. Always 0 for ``gradient="autodiff"``, which replays the recorded operations and
            never calls ``func`` (and for ``"forward"``, whose sensitivities are computed in the forward
            pass); ``"checkpoint"`` re-runs the forward steps, and the adjoints (``"backsolve"``,
            ``"interpolate"``) evaluate ``func`` to solve their backward equation.
        stats: the last solve's :class:`dxdt.Stats` (per-sample step counts; no autograd graph attached).

    Raises:
        TypeError, ValueError: bad arguments, at construction.
        dxdt.SolveError: a solve that did not reach its end time (unless ``solve_kwargs={"throw": False}``).
    """

    def __init__(
        self,
        func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        t_span: Sequence[float] | None = None,
        *,
        t: torch.Tensor | None = None,
        solver: str | AbstractSolver = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-6,
        gradient: Any = "autodiff",
        batch_mode: Literal["joint", "per_sample"] = "joint",
        max_steps: int = 10_000,
        return_trajectory: bool | None = None,
        augment_dim: int = 0,
        return_augmented: bool = True,
        solve_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not callable(func):
            raise TypeError(
                f"func must be a callable vector field func(t, y) (an nn.Module); got {type(func).__name__}"
            )
        if t_span is not None and t is not None:
            raise ValueError("give either t_span=(t0, t1) or save times t, not both")
        if t is not None:
            t = _check_save_times(t)
            self.t_span = None
        else:
            self.t_span = _check_span((0.0, 1.0) if t_span is None else t_span)
        if return_trajectory is None:
            return_trajectory = t is not None
        if return_trajectory and t is None:
            raise ValueError(
                "return_trajectory=True needs save times: pass t=torch.linspace(t0, t1, T) instead of t_span"
            )
        get_solver(solver)  # a bad name fails here, not at the first forward pass
        for name, value in (("rtol", rtol), ("atol", atol)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number; got {value!r}")
        if isinstance(gradient, str) and gradient not in GRADIENTS:
            raise ValueError(
                f"gradient must be one of {', '.join(GRADIENTS)} or a dxdt.adjoints instance; got {gradient!r}"
            )
        if batch_mode not in ("joint", "per_sample"):
            raise ValueError(f"batch_mode must be 'joint' or 'per_sample'; got {batch_mode!r}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int; got {max_steps!r}")
        if isinstance(augment_dim, bool) or not isinstance(augment_dim, int) or augment_dim < 0:
            raise ValueError(f"augment_dim must be a non-negative int; got {augment_dim!r}")
        solve_kwargs = dict(solve_kwargs or {})
        clash = sorted(set(solve_kwargs) & set(_OWN_KWARGS))
        if clash:
            raise ValueError(f"solve_kwargs may not contain {', '.join(clash)}: pass them as NeuralODE's own arguments")

        self.func = func
        self.register_buffer("t", t, persistent=False)
        self.solver = solver
        self.rtol, self.atol = float(rtol), float(atol)
        self.gradient = gradient
        self.batch_mode = batch_mode
        self.max_steps = max_steps
        self.return_trajectory = bool(return_trajectory)
        self.augment_dim = augment_dim
        self.return_augmented = bool(return_augmented)
        self.solve_kwargs = solve_kwargs
        self.stats: Stats | None = None
        self._counter: _Counter | None = None
        self._nfe_forward = 0

    @property
    def nfe_forward(self) -> int:
        return self._nfe_forward

    @property
    def nfe_backward(self) -> int:
        # The counted field is used by nothing but the last solve; calls after it returned are its backward pass.
        return 0 if self._counter is None else self._counter.calls - self._nfe_forward

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        """Integrate ``y0`` of shape ``(B, *S)``; returns ``(B, *S')`` or, with a trajectory, ``(B, T, *S')``.

        ``S'`` is ``S`` with ``augment_dim`` more channels in its first dimension when the augmented state is
        returned, else ``S``.
        """
        if not isinstance(y0, torch.Tensor) or y0.ndim < 2:
            shape = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
            raise ValueError(f"y0 must be a tensor of shape (B, *S) with at least one state dimension; got {shape}")
        channels = y0.shape[1]
        if self.augment_dim:
            pad = y0.new_zeros((y0.shape[0], self.augment_dim, *y0.shape[2:]))
            y0 = torch.cat([y0, pad], dim=1)

        counter = _Counter()
        field = _counted(self.func, counter)
        kwargs = dict(self.solve_kwargs)
        # Save times may require grad (solve differentiates the saved states with respect to them); the
        # interval itself is taken from their values.
        t0, t1 = self.t_span if self.t is None else (self.t[0].detach(), self.t[-1].detach())
        if self.return_trajectory:
            kwargs["saveat"] = self.t
        solution = solve(
            field,
            y0,
            t0,
            t1,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            batch_mode=self.batch_mode,
            gradient=self.gradient,
            **kwargs,
        )
        self._counter, self._nfe_forward, self.stats = counter, counter.calls, solution.stats
        out = solution.ys if self.return_trajectory else solution.ys[:, -1]
        if self.augment_dim and not self.return_augmented:
            out = out[:, :, :channels] if self.return_trajectory else out[:, :channels]
        return out

    def extra_repr(self) -> str:
        span = f"t_span={self.t_span}" if self.t is None else f"t=<{len(self.t)} times>"
        extra = f", augment_dim={self.augment_dim}" if self.augment_dim else ""
        return f"{span}, solver={self.solver!r}, rtol={self.rtol}, atol={self.atol}, gradient={self.gradient!r}{extra}"


def _check_span(t_span: Any) -> tuple[float, float]:
    try:
        t0, t1 = (float(x) for x in t_span)
    except (TypeError, ValueError):
        raise ValueError(f"t_span must be a pair of numbers (t0, t1); got {t_span!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"t_span must be two different finite times (t0, t1); got {t_span!r}")
    return t0, t1


def _check_save_times(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of save times; got {type(t).__name__}")
    if t.ndim != 1 or t.shape[0] < 2 or not t.is_floating_point():
        raise ValueError(
            f"t must be a 1-D floating tensor of at least two save times (t[0] is the start); got shape "
            f"{tuple(t.shape)} and dtype {t.dtype}"
        )
    steps = t.detach().diff()
    if not torch.isfinite(t.detach()).all() or not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError(f"t must be finite and strictly increasing or strictly decreasing; got {t.detach().tolist()}")
    return t
