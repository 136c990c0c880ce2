"""Proximal steps: regularisers integrated implicitly.

For a regulariser ``R`` the gradient flow of ``L + R`` is ``θ' ∈ −∇L(θ) − ∂R(θ)``. Splitting it, an explicit
Euler step on ``L`` followed by an *implicit* Euler step on ``R``,

    θ_{k+1} = z − η s,  s ∈ ∂R(θ_{k+1}),  z = θ_k − η ∇L(θ_k),

is the proximal gradient method, ``θ_{k+1} = prox_{ηR}(z) = argmin_x R(x) + ‖x − z‖²/(2η)``:

* ``R = λ1 ‖θ‖₁``: the implicit step is soft-thresholding, ``sign(z) max(|z| − η λ1, 0)``. It sets
  coordinates exactly to zero, which no explicit subgradient step does (it oscillates around zero).
* ``R = λ2/2 ‖θ‖²``: the implicit step is ``z/(1 + η λ2)``, linear damping: stable for every ``η``, and
  to first order the decoupled weight decay ``(1 − η λ2) z`` (its explicit Euler step), while the exact
  flow of the damping term is ``e^{−η λ2} z``.
* both (elastic net): soft-threshold, then divide by ``1 + η λ2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def soft_threshold(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """``sign(x) · max(|x| − threshold, 0)``: the proximal map of ``threshold · ‖·‖₁``."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0)


def prox_l1(x: torch.Tensor, lr: float, l1: float) -> torch.Tensor:
    """Implicit Euler step of size ``lr`` on ``θ' ∈ −l1 ∂‖θ‖₁`` from ``x``: soft-thresholding at ``lr · l1``."""
    return soft_threshold(x, lr * l1)


def prox_l2(x: torch.Tensor, lr: float, l2: float) -> torch.Tensor:
    """Implicit Euler step of size ``lr`` on the linear damping ``θ' = −l2 θ`` from ``x``: ``x/(1 + lr l2)``."""
    return x / (1 + lr * l2)


def prox_elastic_net(x: torch.Tensor, lr: float, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """The proximal map of ``lr (l1 ‖θ‖₁ + l2/2 ‖θ‖²)``: soft-threshold, then shrink."""
    if l1:
        x = soft_threshold(x, lr * l1)
    if l2:
        x = x / (1 + lr * l2)
    return x


def _check_reg(lr: float, l1: float, l2: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}")
    if not (l1 >= 0 and l2 >= 0):
        raise ValueError(f"l1 and l2 must be non-negative; got l1={l1}, l2={l2}")


def _closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class ProximalGradient(torch.optim.Optimizer):
    """Gradient descent on the smooth loss with the L1/L2 penalties stepped implicitly (ISTA).

    ``θ ← prox_{η R}(θ − η ∇L(θ))`` with ``R = l1 ‖θ‖₁ + l2/2 ‖θ‖²``. With ``l1 = l2 = 0`` it is plain
    gradient descent: explicit Euler on the gradient flow, stable for ``η < 2/λmax`` of the smooth part (the
    implicit penalty steps add no constraint). Per parameter group: ``lr``, ``l1``, ``l2``.

    Gradients come from ``p.grad`` as in :class:`torch.optim.SGD`: call ``loss.backward()`` first, or pass
    a closure that does.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float, l1: float = 0.0, l2: float = 0.0):
        _check_reg(lr, l1, l2)
        super().__init__(params, dict(lr=lr, l1=l1, l2=l2))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, l1, l2 = group["lr"], group["l1"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.copy_(prox_elastic_net(p - lr * p.grad, lr, l1, l2))
        return loss
