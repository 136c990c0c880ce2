"""The interface every solver implements: one pure-tensor step, plus optional per-solve state."""

from __future__ import annotations

import abc
import sys
from typing import Any, NamedTuple

import torch

from .._norm import rms_norm
from .._term import Term


class StepResult(NamedTuple):
    """One attempted step, for every sample at once.

    Attributes:
        y1: candidate state at ``t + dt``, ``(B, *S)``.
        f1: ``f(t + dt, y1)``: the next step's first stage when this one is accepted.
        y_err: local error estimate, ``(B, *S)``, or ``None`` for fixed-step methods.
        y_err_low: a second, lower-order estimate (DOP853 only), else ``None``.
        ks: the stage vectors, each ``(B, *S)``: what dense output is built from.
        f0: ``f(t, y)`` at the start of the step.
        state: the solver's state after this attempt (see :meth:`AbstractSolver.commit`).
        failed: ``(B,)`` bool, samples whose step could not be computed (Newton failure, singular matrix), or
            ``None``. Failed steps are rejected and their dt shrunk.
        extra_evals: ``(B,)`` f evaluations beyond ``evals_per_step`` (e.g. Newton iterations), or ``None``.
    """

    y1: torch.Tensor
    f1: torch.Tensor
    y_err: torch.Tensor | None
    y_err_low: torch.Tensor | None
    ks: list[torch.Tensor]
    f0: torch.Tensor
    state: Any = None
    failed: torch.Tensor | None = None
    extra_evals: torch.Tensor | None = None


class AbstractSolver(abc.ABC):
    """A time-stepping method. Per-solve data lives in an explicit state (tensors), never on ``self``."""

    #: classical order of the solution
    order: int
    #: the order that sets the step-size controller's exponent
    error_order: int
    #: whether the method has an error estimate (else it needs a fixed ``dt0``)
    adaptive: bool
    #: order of the dense output; below ``order - 1`` steps land exactly on save times instead
    dense_order: int
    #: f evaluations one attempted step costs (beyond ``StepResult.extra_evals``)
    evals_per_step: int
    #: whether a step is pure tensor code that ``torch.compile`` traces whole (``compile=True``); a method that
    #: decides Newton convergence on the host within a step is not
    compilable: bool = True
    #: whether steps evaluate f's Jacobian (implicit and Rosenbrock methods)
    uses_jacobian: bool = False

    def init_state(self, term: Term, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor) -> Any:
        """Per-solve state (Jacobians, factorizations, counters); ``None`` for stateless methods."""
        return None

    @abc.abstractmethod
    def step(
        self,
        term: Term,
        t: torch.Tensor,
        dt: torch.Tensor,
        y: torch.Tensor,
        f0: torch.Tensor,
        state: Any,
        rtol: torch.Tensor,
        atol: torch.Tensor,
    ) -> StepResult:
        """Attempt a step from ``(t, y)`` of signed size ``dt`` (both float64 ``(B,)``); ``f0 = f(t, y)``."""

    def commit(self, old: Any, new: Any, accept: torch.Tensor, running: torch.Tensor) -> Any:
        """The state to carry on, given which samples were running and which accepted their step."""
        return new

    def enter_graph(self, state: Any) -> tuple[AbstractSolver, Any]:
        """The solver that takes a compiled loop iteration's step (``compile=True``), and the state as that
        iteration sees it. A solver that keeps host-side values in its state which change every iteration (a
        counter) replaces them here by what they decide, so that dynamo does not recompile for each value
        (:meth:`leave_graph` restores them); one that combines methods may hand an iteration to one of them
        outright, so that the iteration is that method's own compiled graph."""
        return self, state

    def leave_graph(self, before: Any, after: Any) -> Any:
        """The state to carry on after a compiled iteration that started from ``before`` and returned ``after``."""
        return after

    def plain_iterations(self, state: Any) -> tuple[AbstractSolver, int]:
        """Compiled: a ``stepper`` and how many iterations, from this one on, the loop may run as that stepper's
        own with no solver state in or out, back to back, without :meth:`enter_graph` and :meth:`leave_graph`
        around each (their host bookkeeping is a few percent of a small system's compiled iteration);
        :meth:`after_plain_iterations` then brings the state up to date. A stateless method: all of them."""
        return self, (sys.maxsize if state is None else 0)

    def after_plain_iterations(self, state: Any, n: int) -> Any:
        """The state after ``n`` iterations run as :meth:`plain_iterations` allowed."""
        return state

    def for_compiled_attempt(self) -> tuple[AbstractSolver, bool]:
        """With ``compile=True`` and a per-step hook, when only the attempted step is compiled: the solver to
        use and whether :func:`_attempt` may be compiled around its step."""
        return self, True

    def statistics(self, state: Any) -> dict[str, torch.Tensor]:
        """Per-sample counters beyond steps and f evaluations (Jacobians, LUs, Newton iterations...)."""
        return {}

    def error_ratio(self, step: StepResult, y0: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
        """Per-sample error of the step relative to the tolerances, ``(B,)``: ``<= 1`` accepts it.

        The weighted RMS norm of ``y_err / (atol + rtol · max(|y0|, |y1|))``.
        """
        return rms_norm(step.y_err / error_scale(step, y0, rtol, atol))

    @abc.abstractmethod
    def dense_coefficients(self, step: StepResult, y0: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Dense output inside the step as a polynomial in θ: ``(B, *S, m + 1)`` with
        ``y(t + θ dt) = Σ_k θ^k P[..., k]`` (so ``P[..., 0] = y0``); ``dt`` is float64 ``(B,)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def error_scale(step: StepResult, y0: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
    """``atol + rtol · max(|y0|, |y1|)``: what the error estimate is measured against."""
    return torch.addcmul(atol, rtol, torch.maximum(y0.abs(), step.y1.abs()))
