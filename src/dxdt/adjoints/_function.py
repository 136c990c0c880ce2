"""The autograd node of the adjoints and forward sensitivities: a graph-free solve and a custom backward."""

from __future__ import annotations

from typing import Protocol

import torch

from .._term import Term


class Runner(Protocol):
    #: the gradient strategy's name, for messages
    name: str

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
        # Kept for the message on second derivatives only (not save_for_backward: modifying an input in place
        # after the solve must not make the first derivative fail a version check).
        ctx.tracked = [x for x in (y0, t0, ts, *params) if isinstance(x, torch.Tensor) and x.requires_grad]
        return runner.forward()

    @staticmethod
    def backward(ctx, grad_ys):
        second = torch.is_grad_enabled()  # create_graph=True: these gradients may be differentiated again
        with torch.no_grad():
            grads = ctx.runner.backward(grad_ys.detach(), ctx.needs_input_grad[1:])
        if second:
            # The gradients carry no graph; tie them to what they depend on, so that differentiating them says why
            # it cannot work instead of failing with torch's "not used in the graph".
            message = (
                f"gradient={ctx.runner.name!r} gives first derivatives only: it computes the gradient without an "
                "autograd graph. For second derivatives (create_graph=True, then another backward pass) use "
                "gradient='autodiff' or 'checkpoint'"
            )
            depends_on = [x for x in (grad_ys, *ctx.tracked) if x.requires_grad]
            grads = tuple(None if g is None else _FirstDerivativeOnly.apply(message, g, *depends_on) for g in grads)
        return (None, *grads)


class _FirstDerivativeOnly(torch.autograd.Function):
    """The identity on a gradient, raising ``RuntimeError(message)`` if it is differentiated."""

    @staticmethod
    def forward(ctx, message: str, grad: torch.Tensor, *depends_on: torch.Tensor) -> torch.Tensor:
        ctx.message = message
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(ctx.message)


def save_time_gradients(term: Term, ts: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor) -> torch.Tensor:
    """``∂L/∂t_k = ∂L/∂y_k · f(t_k, y_k)`` for save times ``ts (n, T)``: moving a save time moves the saved
    state along ``f``."""
    return torch.stack(
        [(grad_ys[:, k] * term(ts[:, k], ys[:, k])).flatten(1).sum(1) for k in range(ts.shape[1])], dim=1
    )


def initial_time_gradient(term: Term, t0: torch.Tensor, y0: torch.Tensor, grad_y0: torch.Tensor) -> torch.Tensor:
    """``∂L/∂t0 = −∂L/∂y0 · f(t0, y0)``: moving ``t0`` shifts the whole solution by ``−Φ f(t0, y0)``."""
    return -(grad_y0 * term(t0, y0)).flatten(1).sum(1)
