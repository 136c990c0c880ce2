"""The autograd node of the adjoints and forward sensitivities: a graph-free solve and a custom backward."""

from __future__ import annotations

from typing import Protocol

import torch


class Runner(Protocol):
    def forward(self) -> torch.Tensor:
        """The saved states ``(n, T, *S)`` (loop layout), computed without an autograd graph."""

    def backward(self, grad_ys: torch.Tensor, needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
        """Gradients for ``(y0, t0, ts, *params)``; ``needs`` says which of them are wanted."""


class DifferentiableSolve(torch.autograd.Function):
    """``apply(runner, y0, t0, ts, *params)``: the inputs are listed so that autograd routes their gradients;
    the runner already holds them and does the work."""

    @staticmethod
    def forward(ctx, runner: Runner, y0, t0, ts, *params):
        ctx.runner = runner
        return runner.forward()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        return (None, *ctx.runner.backward(grad_ys, ctx.needs_input_grad[1:]))
