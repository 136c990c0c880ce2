"""Recursive checkpointing: backpropagation through the loop with memory logarithmic in the number of steps."""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .._loop import Carry, IterationOutput, Loop, LoopResult, Tally
from .._problem import ODEProblem
from .._solution import Solution
from .base import AbstractGradient


class Checkpointed(AbstractGradient):
    """The gradient of :class:`Autodiff` (the same operations, bit for bit) with bounded memory.

    The loop runs in segments whose autograd graphs are not kept: only the carry at their start is
    (``t``, ``y``, ``f(t, y)``, step size, solver state). The backward pass re-runs each segment to rebuild
    its graph. Segments nest: the top level runs segments of ``c, c², c³, ...`` iterations (``c =
    checkpoints``, since the number of steps is not known in advance) and each segment splits into ``c``
    checkpointed children until ``c`` iterations are left. With ``N`` iterations there are ``L ≈ log_c N``
    levels: peak memory is about ``c · L`` carries plus the graph of ``c`` iterations, and each iteration
    is recomputed up to ``L`` times.

    Args:
        checkpoints: the branching factor ``c`` (at least 2): fewer means less memory and more recomputation.

    The dense output and save times are interpolated from per-step records that are kept (small: the
    state and the interpolation coefficients of each step, no graph of ``f``); with only ``t1`` saved
    nothing grows with the number of steps but the carries.
    """

    name = "checkpoint"

    def __init__(self, checkpoints: int = 16):
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 2:
            raise ValueError(f"checkpoints must be an int >= 2; got {checkpoints!r}")
        self.checkpoints = checkpoints

    def solve(self, problem: ODEProblem) -> Solution:
        if not torch.is_grad_enabled():  # nothing to checkpoint
            return problem.solve()[0]
        return problem.solve(run=self._run)[0]

    def _run(self, loop: Loop, y0: torch.Tensor) -> LoopResult:
        c = self.checkpoints
        carry = loop.start(y0)
        tally = Tally(y0.shape[0], y0.device)
        size = c
        while tally.n_iterations < loop.max_steps and loop.running(carry):
            n = min(size, loop.max_steps - tally.n_iterations)
            carry, done = checkpoint(self._segment, loop, carry, n, use_reentrant=False)
            for out in done:
                tally.add(out)
            size *= c
        return loop.finish(carry, tally)

    def _segment(self, loop: Loop, carry: Carry, n: int) -> tuple[Carry, list[IterationOutput]]:
        """Up to ``n`` iterations: plainly if ``n <= c``, else as ``c`` checkpointed children."""
        outputs: list[IterationOutput] = []
        if n <= self.checkpoints:
            for _ in range(n):
                if not loop.running(carry):
                    break
                carry, out = loop.iterate(carry)
                outputs.append(out)
            return carry, outputs
        child = math.ceil(n / self.checkpoints)
        while len(outputs) < n and loop.running(carry):
            carry, done = checkpoint(self._segment, loop, carry, min(child, n - len(outputs)), use_reentrant=False)
            outputs += done
        return carry, outputs
