"""Tracking the sharpness ``λmax(∇²L)`` during training against the stability limit ``2/η``.

Gradient descent with learning rate ``η`` is stable near a minimum only if ``λmax < 2/η``. In full-batch
training of neural networks the sharpness typically rises ("progressive sharpening") until it reaches
``2/η`` and then hovers there while the loss keeps decreasing, non-monotonically: the edge of stability
(Cohen, Kaur, Li, Kolter & Talwalkar, ICLR 2021). :class:`SharpnessTracker` measures it every few steps by
Lanczos on Hessian-vector products, warm-started from the last top eigenvector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .hessian import HessianOperator


@dataclass
class SharpnessTracker:
    """A training callback: every ``every`` steps, the top Hessian eigenvalue of the loss.

    Args:
        params: the model's parameters.
        lr: the learning rate ``η`` of the (full-batch) gradient descent being tracked; the plot draws ``2/η``.
        every: measure at steps that are multiples of this.
        max_iter, tol: Lanczos steps and relative residual per measurement.

    Call :meth:`update` with the step number and a closure returning the loss *without* calling
    ``backward()``. ``steps``, ``sharpness`` and ``losses`` hold the history; :meth:`plot` draws it.
    """

    params: Sequence[torch.Tensor]
    lr: float
    every: int = 10
    max_iter: int = 30
    tol: float = 1e-4
    steps: list[int] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    n_hvp: int = 0
    _v0: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.params = list(self.params)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"every must be a positive int; got {self.every!r}")

    @property
    def threshold(self) -> float:
        """``2/η``: the sharpness above which gradient descent is locally unstable."""
        return 2.0 / self.lr

    def measure(self, closure: Callable[[], torch.Tensor]) -> float:
        """``λmax`` of the Hessian of ``closure()`` at the current parameters."""
        op = HessianOperator.from_closure(self.params, closure)
        res = op.eigenvalues(1, "LA", tol=self.tol, max_iter=self.max_iter, v0=self._v0)
        self._v0 = res.eigenvectors[0]
        self.n_hvp += op.n_matvec
        self.last_loss = float(op.objective.loss_grad(op.objective.get_flat())[0])
        return float(res.eigenvalues[0])

    def update(self, step: int, closure: Callable[[], torch.Tensor]) -> float | None:
        """Measure at multiples of ``every``; returns the sharpness, or ``None`` on other steps."""
        if step % self.every:
            return None
        lam = self.measure(closure)
        self.steps.append(step)
        self.sharpness.append(lam)
        self.losses.append(self.last_loss)
        return lam

    def plot(self, axes: Any = None, title: str | None = None) -> Any:
        """Loss (top) and sharpness with the ``2/η`` line (bottom); returns the figure."""
        from ..plot import _pyplot

        plt = _pyplot()
        if axes is None:
            fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        else:
            fig = axes[0].figure
        ax_loss, ax_sharp = axes
        ax_loss.semilogy(self.steps, self.losses, color="C0")
        ax_loss.set_ylabel("training loss")
        if title:
            ax_loss.set_title(title)
        ax_sharp.plot(self.steps, self.sharpness, color="C1", label="sharpness λmax(∇²L)")
        ax_sharp.axhline(self.threshold, color="k", ls="--", label=f"2/η = {self.threshold:.3g}")
        ax_sharp.set_xlabel("step")
        ax_sharp.set_ylabel("λmax")
        ax_sharp.legend(loc="lower right")
        fig.tight_layout()
        return fig
