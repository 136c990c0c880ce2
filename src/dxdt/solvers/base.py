"""The interface every solver implements: one pure-tensor step."""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch

from .._term import Term


class StepResult(NamedTuple):
    """One attempted step, for every sample at once.

    Attributes:
        y1: candidate state at ``t + dt``, ``(B, *S)``.
        f1: ``f(t + dt, y1)``: the next step's first stage when this one is accepted.
        y_err: local error estimate, ``(B, *S)``, or ``None`` for fixed-step methods.
        y_err_low: a second, lower-order estimate (DOP853 only), else ``None``.
        ks: the stages, each ``(B, *S)`` (the last one is ``f1``): what dense output is built from.
    """

    y1: torch.Tensor
    f1: torch.Tensor
    y_err: torch.Tensor | None
    y_err_low: torch.Tensor | None
    ks: list[torch.Tensor]


class AbstractSolver(abc.ABC):
    """A time-stepping method. Subclasses hold no per-solve state: ``step`` is a pure function of tensors."""

    #: classical order of the solution
    order: int
    #: the order that sets the step-size controller's exponent
    error_order: int
    #: whether the method has an error estimate (else it needs a fixed ``dt0``)
    adaptive: bool
    #: order of the dense output (``Solution.evaluate``); when lower than ``order``, steps are clipped to
    #: land exactly on requested save times instead of interpolating there
    dense_order: int
    #: number of f evaluations one attempted step costs
    evals_per_step: int

    @abc.abstractmethod
    def step(self, term: Term, t: torch.Tensor, dt: torch.Tensor, y: torch.Tensor, f0: torch.Tensor) -> StepResult:
        """Attempt a step from ``(t, y)`` of signed size ``dt`` (both float64 ``(B,)``); ``f0 = f(t, y)``."""

    @abc.abstractmethod
    def error_ratio(self, step: StepResult, y0: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor) -> torch.Tensor:
        """Per-sample error of the step relative to the tolerances, ``(B,)``: ``<= 1`` accepts it."""

    @abc.abstractmethod
    def interpolate(
        self, theta: torch.Tensor, dt: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, ks: torch.Tensor
    ) -> torch.Tensor:
        """Dense output inside a step: ``y(t + θ dt)``.

        ``ks`` stacks the stages on a last dimension: ``(..., *S, n_k)``; ``theta`` and ``dt`` broadcast
        against ``y0`` (singleton state dimensions).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
