"""Hessian-vector products and the Hessian spectrum of a loss.

``hvp`` is forward-over-reverse with ``torch.func`` (``jvp`` of ``grad``): one product costs about two
gradient evaluations and never forms the Hessian. :class:`HessianOperator` wraps a loss as a linear
operator for the matrix-free algorithms of :mod:`dxdt.optim.linalg`, either from a pure function of a flat
parameter vector (``torch.func``) or from parameters and a ``torch.optim``-style closure (double backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._objective import ClosureObjective
from .linalg import EigenResult, SpectralDensity, spectral_density, top_eigenvalues


def hvp(f: Callable[..., torch.Tensor], x: Any, v: Any) -> Any:
    """``∇²f(x) v`` by forward-over-reverse differentiation (``torch.func.jvp`` of ``torch.func.grad``).

    Args:
        f: scalar loss of ``x``.
        x: a tensor or a pytree of tensors (e.g. a dict of parameters for ``torch.func.functional_call``).
        v: a tangent shaped like ``x``.

    Returns:
        ``H v`` shaped like ``x``.
    """
    return torch.func.jvp(torch.func.grad(f), (x,), (v,))[1]


class HessianOperator:
    """``v -> ∇²L(θ) v`` on flat ``(n,)`` vectors, counting products.

    Build it with :meth:`from_function` (a pure ``f(θ)`` of a flat tensor; ``torch.func``) or
    :meth:`from_closure` (parameters plus a closure returning the loss without calling ``backward``).

    Attributes:
        n: the dimension.
        n_matvec: products so far.
    """

    def __init__(self, matvec: Callable[[torch.Tensor], torch.Tensor], n: int, dtype: torch.dtype, device):
        self._matvec = matvec
        self.n = n
        self.dtype = dtype
        self.device = device
        self.n_matvec = 0

    @classmethod
    def from_function(cls, f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> HessianOperator:
        """The Hessian of ``f`` at the flat parameter vector ``theta`` ``(n,)``."""
        theta = theta.detach()
        grad_f = torch.func.grad(f)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(grad_f, (theta,), (v.reshape(theta.shape),))[1].reshape(-1)

        return cls(matvec, theta.numel(), theta.dtype, theta.device)

    @classmethod
    def from_closure(cls, params: Sequence[torch.Tensor], closure: Callable[[], torch.Tensor]) -> HessianOperator:
        """The Hessian of ``closure()`` with respect to ``params`` at their current values (double backward;
        ``torch.func`` cannot see parameters that a closure reads in place). The parameters are unchanged."""
        obj = ClosureObjective(params, closure)
        theta = obj.get_flat()
        op = cls(lambda v: obj.hvp(theta, v), obj.numel, obj.dtype, obj.device)
        op.objective = obj
        return op

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n_matvec += 1
        return self._matvec(v)

    def dense(self) -> torch.Tensor:
        """The full ``(n, n)`` Hessian (``n`` products): for tests and small models only."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        H = torch.stack([self(e) for e in eye])
        return 0.5 * (H + H.T)

    def eigenvalues(self, k: int = 1, which: str = "LA", **kwargs) -> EigenResult:
        """Extreme eigenvalues by Lanczos (:func:`dxdt.optim.linalg.top_eigenvalues`)."""
        kwargs.setdefault("dtype", self.dtype)
        kwargs.setdefault("device", self.device)
        return top_eigenvalues(self, self.n, k, which=which, **kwargs)

    def spectral_density(self, **kwargs) -> SpectralDensity:
        """Stochastic Lanczos quadrature (:func:`dxdt.optim.linalg.spectral_density`)."""
        kwargs.setdefault("dtype", self.dtype)
        kwargs.setdefault("device", self.device)
        return spectral_density(self, self.n, **kwargs)


def sharpness(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, tol: float = 1e-8, **kwargs) -> float:
    """The largest Hessian eigenvalue ``λmax`` of ``f`` at ``theta`` (Lanczos on ``torch.func`` products)."""
    return float(HessianOperator.from_function(f, theta).eigenvalues(1, "LA", tol=tol, **kwargs).eigenvalues[0])
