"""Matrix-free linear algebra on Hessian-vector products: conjugate gradients, Lanczos, and stochastic
Lanczos quadrature.

Everything here takes a ``matvec(v) -> A v`` on flat ``(n,)`` vectors of a symmetric ``A`` (a Hessian, a
Gauss–Newton matrix, ``I + γ dt H``), never the matrix itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


class KrylovSpace(NamedTuple):
    """Search directions kept from a conjugate-gradient run, to reuse with the same ``A``.

    Attributes:
        P: ``(m, n)`` directions ``p_j`` (rows), ``A``-conjugate up to rounding.
        AP: ``(m, n)`` their products ``A p_j``.
        pAp: ``(m,)`` the values ``p_jᵀ A p_j``.
    """

    P: torch.Tensor
    AP: torch.Tensor
    pAp: torch.Tensor


class CGResult(NamedTuple):
    """Result of :func:`conjugate_gradient`.

    Attributes:
        x: the approximate solution ``(n,)``.
        n_iter: matrix-vector products used.
        residual_norm: ``‖b − A x‖`` (the recurrence's value).
        converged: the tolerance was met.
        negative_curvature: a direction with ``pᵀAp <= 0`` was met and the iteration stopped there
            (``A`` is not positive definite: a saddle or a maximum of the loss).
        space: the conjugate directions used (recycled ones included), for a later solve with the same ``A``.
    """

    x: torch.Tensor
    n_iter: int
    residual_norm: float
    converged: bool
    negative_curvature: bool
    space: KrylovSpace | None


def conjugate_gradient(
    matvec: MatVec,
    b: torch.Tensor,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    recycle: KrylovSpace | None = None,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` by conjugate gradients (Hestenes & Stiefel 1952).

    Stops when ``‖r‖ <= max(rtol ‖b‖, atol)``, after ``max_iter`` products (default ``2 n``: ``n`` suffice in
    exact arithmetic), or at negative curvature (Steihaug 1983: the iterate so far is returned, or ``b`` itself if
    that is zero, a descent direction for Newton-type uses).

    With ``recycle`` (the :attr:`CGResult.space` of an earlier solve with the same ``A``), the solve starts
    from the Galerkin solution in those directions, which costs no product, and keeps its new directions
    ``A``-conjugate to them (augmented CG, Saad, Yeung, Erhel & Guyomarc'h 2000). A second right-hand side
    that lies mostly in the old Krylov space, as in the second stage of a Rosenbrock step, is then nearly free.

    Args:
        matvec: ``v -> A v`` on ``(n,)`` vectors.
        b: right-hand side ``(n,)``.
        rtol, atol: relative and absolute residual tolerances.
        max_iter: the most new products (default ``2 n``).
        recycle: conjugate directions of ``A`` from an earlier solve.
    """
    n = b.numel()
    max_iter = 2 * n if max_iter is None else max_iter
    target = max(rtol * float(torch.linalg.vector_norm(b)), atol)
    P: list[torch.Tensor] = []
    AP: list[torch.Tensor] = []
    pAp: list[torch.Tensor] = []
    if recycle is not None and recycle.P.shape[0]:
        # Galerkin solution in span(P), with no new products: an orthonormal basis U of the span (SVD, which
        # drops the directions that rounding made dependent) and A U from the stored products.
        norms = torch.linalg.vector_norm(recycle.P, dim=1, keepdim=True)
        u_full, sing, vh = torch.linalg.svd((recycle.P / norms).T, full_matrices=False)
        keep = sing > 1e-8 * sing[0]
        U = u_full[:, keep]  # (n, r)
        AU = (recycle.AP / norms).T @ (vh[keep].T / sing[keep])  # (n, r)
        gram = U.T @ AU
        gram_inv = torch.linalg.inv(0.5 * (gram + gram.T))
        coef = gram_inv @ (U.T @ b)
        x = U @ coef
        r = b - AU @ coef
        P0 = U
    else:
        x, r = torch.zeros_like(b), b.clone()
        P0 = None
    rr = float(r @ r)
    p = r.clone()
    n_iter = 0
    negative = False
    while math.sqrt(rr) > target and n_iter < max_iter:
        if P0 is not None:  # keep p A-conjugate to the recycled directions
            p_conj = p - P0 @ (gram_inv @ (AU.T @ p))
            # Nothing left outside the old space (it spans everything, up to rounding): plain CG from here.
            if float(torch.linalg.vector_norm(p_conj)) > 1e-8 * float(torch.linalg.vector_norm(p)):
                p = p_conj
            else:
                P0 = None
        ap = matvec(p)
        n_iter += 1
        pap_t = p @ ap
        pap = float(pap_t)
        if not pap > 0:
            negative = True
            if not bool(x.any()):
                x = b.clone()
            break
        P.append(p)
        AP.append(ap)
        pAp.append(pap_t)
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    res = math.sqrt(rr)
    space = recycle
    if P:
        new = KrylovSpace(torch.stack(P), torch.stack(AP), torch.stack(pAp))
        space = new if P0 is None else KrylovSpace(*(torch.cat([a, c]) for a, c in zip(recycle, new)))
    return CGResult(x, n_iter, res, res <= target, negative, space)


@dataclass
class LanczosResult:
    """A Lanczos tridiagonalisation ``Qᵀ A Q = T`` (Lanczos 1950).

    Attributes:
        alpha: diagonal of ``T``, ``(m,)``.
        beta: off-diagonal of ``T``, ``(m - 1,)``.
        Q: the orthonormal Krylov basis, ``(m, n)`` (rows).
        beta_last: the residual norm ``β_m`` that would continue ``T`` (0 if the Krylov space is invariant).
        n_matvec: matrix-vector products used.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    Q: torch.Tensor
    beta_last: float
    n_matvec: int

    def tridiagonal(self) -> torch.Tensor:
        return torch.diag(self.alpha) + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values ``(m,)`` ascending and the eigenvectors of ``T`` as columns ``(m, m)``."""
        return torch.linalg.eigh(self.tridiagonal())


def lanczos(
    matvec: MatVec,
    v0: torch.Tensor,
    n_steps: int,
    *,
    reorthogonalize: bool = True,
    stop: Callable[[LanczosResult], bool] | None = None,
    check_every: int = 5,
) -> LanczosResult:
    """Run up to ``n_steps`` Lanczos iterations from ``v0``.

    Full reorthogonalisation (two Gram–Schmidt passes) keeps ``Q`` orthonormal in floating point, without
    which converged Ritz values reappear as spurious copies (Paige 1971); it costs ``O(m n)`` per step, far
    less than a Hessian-vector product for a model.

    Args:
        stop: optional test, called every ``check_every`` steps on the partial result, to stop early.
    """
    n = v0.numel()
    n_steps = min(n_steps, n)
    q = v0.reshape(-1) / torch.linalg.vector_norm(v0)
    Q = [q]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    beta_last = 0.0
    n_matvec = 0
    for j in range(n_steps):
        w = matvec(Q[j])
        n_matvec += 1
        a = Q[j] @ w
        alphas.append(a)
        w = w - a * Q[j] - (betas[-1] * Q[j - 1] if j > 0 else 0.0)
        if reorthogonalize:
            basis = torch.stack(Q)
            for _ in range(2):
                w = w - basis.T @ (basis @ w)
        b = torch.linalg.vector_norm(w)
        beta_last = float(b)
        scale = float(torch.linalg.vector_norm(torch.stack(alphas), ord=math.inf)) or 1.0
        if j == n_steps - 1 or beta_last <= 1e-14 * scale:  # done, or an invariant subspace was found
            if beta_last <= 1e-14 * scale:
                beta_last = 0.0
            break
        betas.append(b)
        Q.append(w / b)
        if stop is not None and (j + 1) % check_every == 0:
            partial = LanczosResult(
                torch.stack(alphas),
                torch.stack(betas[:-1]) if len(betas) > 1 else torch.zeros(0, dtype=w.dtype, device=w.device),
                torch.stack(Q[:-1]),
                beta_last,
                n_matvec,
            )
            if stop(partial):
                return partial
    m = len(alphas)
    beta_t = torch.stack(betas[: m - 1]) if m > 1 else torch.zeros(0, dtype=v0.dtype, device=v0.device)
    return LanczosResult(torch.stack(alphas), beta_t, torch.stack(Q[:m]), beta_last, n_matvec)


class EigenResult(NamedTuple):
    """Extreme eigenpairs from :func:`top_eigenvalues`.

    Attributes:
        eigenvalues: ``(k,)`` in the requested order (largest first for ``"LA"`` and ``"LM"``).
        eigenvectors: ``(k, n)`` unit Ritz vectors.
        residuals: ``(k,)`` bounds ``‖A u − λ u‖``.
        n_matvec: matrix-vector products used.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    n_matvec: int


def top_eigenvalues(
    matvec: MatVec,
    n: int,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-10,
    max_iter: int = 200,
    v0: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
        matvec: ``v -> A v`` on ``(n,)`` vectors.
        n: the dimension.
        k: how many eigenvalues.
        which: ``"LA"`` largest algebraic (the sharpness λmax of a Hessian), ``"SA"`` smallest algebraic,
            ``"LM"`` largest magnitude.
        tol: stop when every wanted Ritz pair has residual ``<= tol · max|λ|``.
        max_iter: the most Lanczos steps (``n`` suffices in exact arithmetic).
        v0: starting vector (default: random normal from ``generator``).

    Returns:
        :class:`EigenResult`.
    """
    if which not in ("LA", "SA", "LM"):
        raise ValueError(f"which must be 'LA', 'SA' or 'LM'; got {which!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n = {n}; got {k}")
    if v0 is None:
        v0 = torch.randn(n, dtype=dtype, device=device, generator=generator)

    def pick(res: LanczosResult):
        theta, s = res.ritz()
        if which == "LA":
            idx = torch.argsort(theta, descending=True)
        elif which == "SA":
            idx = torch.argsort(theta)
        else:
            idx = torch.argsort(theta.abs(), descending=True)
        idx = idx[: min(k, theta.numel())]
        resid = res.beta_last * s[-1, idx].abs()
        return theta[idx], s[:, idx], resid

    def converged(res: LanczosResult) -> bool:
        if res.alpha.numel() < k:
            return False
        theta, _, resid = pick(res)
        return bool((resid <= tol * theta.abs().max().clamp_min(1e-300)).all())

    res = lanczos(matvec, v0, max_iter, stop=converged, check_every=1 if n <= 64 else 3)
    theta, s, resid = pick(res)
    vecs = (s.T @ res.Q).to(v0.dtype)
    return EigenResult(theta, vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True), resid, res.n_matvec)


@dataclass
class SpectralDensity:
    """A spectral density estimated by stochastic Lanczos quadrature (Golub & Meurant; Ubaru, Chen & Saad
    2017; Ghorbani, Krishnan & Xiao 2019 for neural-network Hessians).

    For each probe ``v`` (unit norm), Lanczos gives a Gauss quadrature rule with nodes ``θ_i`` (the Ritz
    values) and weights ``w_i`` (squared first components of ``T``'s eigenvectors) that integrates
    polynomials of degree ``< 2m`` exactly against the measure ``vᵀ δ(λ − A) v``. Its average over probes
    estimates the eigenvalue density ``(1/n) Σ_j δ(λ − λ_j)``.

    Attributes:
        nodes: ``(P, m)`` Ritz values per probe.
        weights: ``(P, m)`` quadrature weights per probe (each row sums to 1).
    """

    nodes: torch.Tensor
    weights: torch.Tensor

    def moment(self, j: int) -> torch.Tensor:
        """The estimate of ``(1/n) tr(A^j)``."""
        return (self.weights * self.nodes**j).sum(1).mean()

    def density(self, grid: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """The density on ``grid`` smoothed by a Gaussian of width ``sigma`` (default: 1% of the spread)."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        if sigma is None:
            sigma = 0.01 * max(hi - lo, 1e-12)
        g = grid.to(self.nodes.dtype)[:, None, None]
        kern = torch.exp(-0.5 * ((g - self.nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kern * self.weights).sum(-1).mean(-1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """The estimated fraction of eigenvalues ``<= x``."""
        xx = x.to(self.nodes.dtype)[:, None, None]
        return ((self.nodes <= xx) * self.weights).sum(-1).mean(-1)


def spectral_density(
    matvec: MatVec,
    n: int,
    *,
    n_probes: int = 10,
    n_steps: int = 30,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of a symmetric operator: ``n_probes`` Rademacher probes, ``n_steps``
    Lanczos steps each (``n_probes · n_steps`` matrix-vector products)."""
    nodes, weights = [], []
    for _ in range(n_probes):
        v = torch.randint(0, 2, (n,), generator=generator, device=device).to(dtype) * 2 - 1
        res = lanczos(matvec, v, n_steps)
        theta, s = res.ritz()
        w = s[0] ** 2
        pad = n_steps - theta.numel()  # an invariant subspace ended the run early: zero-weight padding
        if pad > 0:
            theta = torch.cat([theta, theta[-1:].expand(pad)])
            w = torch.cat([w, torch.zeros(pad, dtype=w.dtype, device=w.device)])
        nodes.append(theta)
        weights.append(w)
    return SpectralDensity(torch.stack(nodes), torch.stack(weights))
