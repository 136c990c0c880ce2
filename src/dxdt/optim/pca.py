"""PCA as a flow: Oja's and Sanger's rules in the mean-field limit, integrated by ``dxdt.solve``.

Oja's rule (Oja 1982) for a neuron ``y = wᵀx`` is the stochastic update ``Δw = η y (x − y w)``; averaged
over the data (covariance ``C``) it is the ODE ``w' = C w − (wᵀ C w) w``, whose stable equilibria are the
unit top eigenvectors ``±v1`` of ``C``. Sanger's generalised Hebbian algorithm (1989) extends it to ``k``
ordered components, ``W' = C W − W triu(Wᵀ C W)`` for ``W`` of shape ``(n, k)``: column ``i`` converges to
``±v_i``. Oja's subspace rule ``W' = C W − W Wᵀ C W`` converges to an orthonormal basis of the top-``k``
subspace, without order. Convergence is exponential at rates set by the eigenvalue gaps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import dxdt


def sanger_field(C: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``C W − W triu(Wᵀ C W)``: Sanger's rule (ordered components); batched over ``W``'s leading dims."""
    CW = C @ W
    return CW - W @ torch.triu(W.mT @ CW)


def oja_subspace_field(C: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``C W − W Wᵀ C W``: Oja's subspace rule (top-``k`` subspace, any basis)."""
    CW = C @ W
    return CW - W @ (W.mT @ CW)


class OjaResult(NamedTuple):
    """Result of :func:`oja_pca`.

    Attributes:
        components: ``(n, k)`` the columns converged to (unit eigenvectors up to sign for ``"sanger"``).
        eigenvalues: ``(k,)`` Rayleigh quotients ``w_iᵀ C w_i``.
        t: the flow time reached.
        residual: ``‖W'‖`` there (0 at an equilibrium).
        solution: the last :class:`dxdt.Solution` (its ``ys`` hold the trajectory of that chunk).
    """

    components: torch.Tensor
    eigenvalues: torch.Tensor
    t: float
    residual: float
    solution: dxdt.Solution


def oja_pca(
    C: torch.Tensor,
    k: int,
    *,
    rule: str = "sanger",
    W0: torch.Tensor | None = None,
    tol: float = 1e-8,
    t_max: float | None = None,
    solver: str = "tsit5",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    generator: torch.Generator | None = None,
) -> OjaResult:
    """The top ``k`` principal components of the covariance ``C`` by integrating Oja's/Sanger's flow.

    The flow is integrated in chunks of doubling length until ``‖W'‖ <= tol · ‖C‖₂`` (an equilibrium), the
    residual stops shrinking (the solver's tolerances set its floor: tighten ``rtol``/``atol``), or ``t_max``
    (default ``10⁴/‖C‖₂``).

    Args:
        C: ``(n, n)`` symmetric positive semi-definite covariance.
        k: number of components.
        rule: ``"sanger"`` (ordered eigenvectors) or ``"subspace"`` (Oja's subspace rule).
        W0: ``(n, k)`` start (default: random with orthonormal columns).
        solver, rtol, atol: passed to :func:`dxdt.solve`.
    """
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"C must be a square (n, n) covariance; got shape {tuple(C.shape)}")
    n = C.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n = {n}; got {k}")
    fields = {"sanger": sanger_field, "subspace": oja_subspace_field}
    if rule not in fields:
        raise ValueError(f"rule must be 'sanger' or 'subspace'; got {rule!r}")
    field = fields[rule]
    if W0 is None:
        W0 = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=C.dtype).to(C.device))[0]
    scale = max(float(torch.linalg.matrix_norm(C, ord=2)), 1e-300)
    t_max = 1e4 / scale if t_max is None else t_max

    def f(t: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return field(C, W)

    W, t, span, previous = W0[None], 0.0, 1.0 / scale, float("inf")
    for _ in range(64):
        t1 = min(t + span, t_max)
        sol = dxdt.solve(
            f,
            W,
            torch.tensor(t, dtype=torch.float64),
            torch.tensor(t1, dtype=torch.float64),
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=100_000,
        )
        W, t = sol.y_final, t1
        residual = float(torch.linalg.matrix_norm(field(C, W[0])))
        stalled = residual > 0.5 * previous and residual < 1e-4 * scale  # at the solver's accuracy floor
        if residual <= tol * scale or t >= t_max or stalled:
            break
        previous = residual
        span *= 2
    comps = W[0]
    return OjaResult(comps, torch.einsum("ik,ij,jk->k", comps, C, comps), t, residual, sol)
