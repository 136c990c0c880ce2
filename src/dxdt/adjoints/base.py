"""The interface every gradient strategy implements, and the default: backpropagation through the loop."""

from __future__ import annotations

import abc

from .._problem import ODEProblem
from .._solution import Solution


class AbstractGradient(abc.ABC):
    """How gradients flow back through :func:`dxdt.solve`. Instances carry the strategy's options."""

    #: the name ``solve(gradient=...)`` accepts for the default options
    name: str

    def check(self, problem: ODEProblem) -> None:
        """Raise ``ValueError`` for a solve this strategy cannot differentiate, before any work."""
        if problem.t0.requires_grad:
            raise ValueError(
                f"t0 requires grad, but gradient={self.name!r} does not propagate gradients to t0: pass "
                "t0.detach(), or use gradient='backsolve', 'interpolate' or 'forward', which do"
            )

    @abc.abstractmethod
    def solve(self, problem: ODEProblem) -> Solution:
        """Solve ``problem`` so that its ``Solution.ys`` carries gradients the way this strategy computes them."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Autodiff(AbstractGradient):
    """Backpropagation through every operation of the loop: the exact gradient of the computed solution.

    The default. Memory grows linearly with the number of steps (the autograd graph of every stage);
    step-size decisions are not differentiated. Supports higher derivatives (double backward), forward-mode
    AD (``torch.func.jvp``) and gradients of ``Solution.y_final`` and of the dense output.
    """

    name = "autodiff"

    def solve(self, problem: ODEProblem) -> Solution:
        return problem.solve()[0]
