"""Recursive checkpointing: backpropagation through the loop with memory logarithmic in the number of steps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .._loop import Carry, IterationOutput, Loop, LoopResult, Tally
from .._problem import ODEProblem
from .._solution import Solution
from ._params import check_tracked, find_params, param_list, unique_requiring_grad
from .base import AbstractGradient


class Checkpointed(AbstractGradient):
    """The gradient of :class:`Autodiff` (the same operations, bit for bit) with bounded memory.

    The loop runs in segments, each one autograd node that keeps only the carry at its start (``t``, ``y``,
    ``f(t, y)``, step size, solver state); the backward pass re-runs the segment with gradients on to
    rebuild its graph. Segments nest: the top level runs segments of ``c, c², c³, ...`` iterations (``c =
    checkpoints``, since the number of steps is not known in advance) and a segment re-run in the backward
    pass splits into ``c`` checkpointed children until ``c`` iterations are left. With ``N`` iterations
    there are ``L ≈ log_c N`` levels: peak memory is about ``c · L`` carries plus the graph of ``c``
    iterations, and each iteration is recomputed up to ``L`` times.

    Args:
        checkpoints: the branching factor ``c`` (at least 2): fewer means less memory and more recomputation.
        params: the tensors to compute gradients for, as for the adjoints. Default: the parameters of ``f``
            if it is an ``nn.Module`` (or a callable holding modules), modules and tensors it closes over or
            names as globals, and the tensors in ``args``; a tensor requiring grad that ``f`` reads but that
            was not found is an error, not a silently missing gradient.

    Save times and the dense output are interpolated from per-step records that are kept (small: the
    state and the interpolation coefficients of each step); with only ``t1`` saved nothing grows with
    the number of steps but the carries.
    """

    name = "checkpoint"

    def __init__(self, checkpoints: int = 16, *, params: Sequence[torch.Tensor] | None = None):
        if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 2:
            raise ValueError(f"checkpoints must be an int >= 2; got {checkpoints!r}")
        self.checkpoints = checkpoints
        self.params = param_list(params)

    def solve(self, problem: ODEProblem) -> Solution:
        if not torch.is_grad_enabled():  # nothing to checkpoint
            return problem.solve()[0]
        found = self.params is None
        params = find_params(problem.term.f, problem.term.args) if found else unique_requiring_grad(self.params)
        recursion = _Recursion(self.checkpoints, params, check=found)
        return problem.solve(run=recursion.run)[0]


class _Recursion:
    """The segment tree of one solve."""

    def __init__(self, branching: int, params: list[torch.Tensor], check: bool):
        self.c, self.params, self.check = branching, params, check

    def run(self, loop: Loop, y0: torch.Tensor) -> LoopResult:
        self.loop = loop
        carry = loop.start(y0)
        if self.check and carry.f.requires_grad:  # f(t0, y0), with its graph: were all its inputs found?
            check_tracked(carry.f, [*self.params, y0], Checkpointed.name)
        tally = Tally(y0.shape[0], y0.device)
        size = self.c
        while tally.n_iterations < loop.max_steps and loop.running(carry):
            carry, outputs = self.segment(carry, min(size, loop.max_steps - tally.n_iterations))
            for out in outputs:
                tally.add(out)
            size *= self.c
        return loop.finish(carry, tally)

    def segment(self, carry: Carry, n: int) -> tuple[Carry, list[IterationOutput]]:
        """Up to ``n`` iterations as one autograd node (or plainly, when nothing needs a gradient)."""
        leaves, spec = tree_flatten(carry)
        tracked = [isinstance(x, torch.Tensor) and x.requires_grad for x in leaves]
        if not torch.is_grad_enabled() or not (any(tracked) or any(p.requires_grad for p in self.params)):
            return self.iterations(carry, n, nested=False)
        node = _Segment(self, spec, leaves, n)
        flat_out = _SegmentFunction.apply(node, *[x for x, t in zip(leaves, tracked) if t], *self.params)
        return node.unflatten(flat_out)

    def iterations(self, carry: Carry, n: int, nested: bool) -> tuple[Carry, list[IterationOutput]]:
        """``n`` iterations: plainly if ``n <= c`` (or not ``nested``), else as ``c`` checkpointed children."""
        loop, outputs = self.loop, []
        if n <= self.c or not nested:
            for _ in range(n):
                if not loop.running(carry):
                    break
                carry, out = loop.advance(carry)
                outputs.append(out)
            return carry, outputs
        child = math.ceil(n / self.c)
        while len(outputs) < n and loop.running(carry):
            carry, done = self.segment(carry, min(child, n - len(outputs)))
            outputs += done
        return carry, outputs


class _Segment:
    """One checkpointed segment: its input carry (kept) and how to rebuild its outputs from flat tensors."""

    def __init__(self, recursion: _Recursion, spec, leaves: list, n: int):
        self.recursion, self.spec, self.leaves, self.n = recursion, spec, leaves, n

    def run(self, leaves: list, nested: bool) -> list[torch.Tensor]:
        """Run the segment from ``leaves`` (the flat carry); its tensor outputs, in order."""
        result = self.recursion.iterations(tree_unflatten(leaves, self.spec), self.n, nested)
        flat, self.out_spec = tree_flatten(result)
        self.is_tensor = [isinstance(x, torch.Tensor) for x in flat]
        # Python values (None, flags in solver states) travel outside autograd; tensors are the node's outputs.
        self.constants = [None if t else x for x, t in zip(flat, self.is_tensor)]
        differentiable = tree_flatten(_differentiable(result))[0]
        self.differentiable = [d for d, t in zip(differentiable, self.is_tensor) if t]
        return [x for x in flat if isinstance(x, torch.Tensor)]

    def unflatten(self, tensors) -> tuple[Carry, list[IterationOutput]]:
        it = iter(tensors)
        flat = [next(it) if t else c for t, c in zip(self.is_tensor, self.constants)]
        return tree_unflatten(flat, self.out_spec)


def _differentiable(result: tuple[Carry, list[IterationOutput]]):
    """The result's structure with True where a tensor may carry a gradient (states, never times or masks)."""
    carry, outputs = result
    keep = lambda x: True  # noqa: E731
    drop = lambda x: False  # noqa: E731
    mask_carry = Carry(*(tree_map(drop, x) for x in carry[:-1]), state=tree_map(keep, carry.state))
    mask_carry = mask_carry._replace(y=True, f=True)
    mask_outputs = [
        IterationOutput(
            running=False,
            accept=False,
            extra_evals=tree_map(drop, out.extra_evals),
            row=None if out.row is None else (False, False, False, False, True, True),
        )
        for out in outputs
    ]
    return mask_carry, mask_outputs


class _SegmentFunction(torch.autograd.Function):
    """Forward: the segment without a graph. Backward: re-run it with gradients on and differentiate."""

    @staticmethod
    def forward(ctx, node: _Segment, *inputs):
        ctx.node = node
        ctx.set_materialize_grads(False)
        outputs = node.run(node.leaves, nested=False)
        # A tensor the segment passed through unchanged (e.g. an unused solver state) would become this node's
        # output in place, and the kept input carry with it: return views instead.
        kept = {id(x) for x in node.leaves}
        outputs = [x.view_as(x) if id(x) in kept else x for x in outputs]
        frozen = [x for x, d in zip(outputs, node.differentiable) if not (d and x.is_floating_point())]
        ctx.mark_non_differentiable(*frozen)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        node = ctx.node
        # The tracked carry tensors become fresh leaves; everything else is re-used as it was.
        leaves = [
            x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and x.requires_grad else x
            for x in node.leaves
        ]
        inputs = [x for x, old in zip(leaves, node.leaves) if isinstance(old, torch.Tensor) and old.requires_grad]
        wrt = inputs + list(node.recursion.params)
        with torch.enable_grad():
            outputs = node.run(leaves, nested=True)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        if not pairs:
            return (None, *([None] * len(wrt)))
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        return (None, *got)
