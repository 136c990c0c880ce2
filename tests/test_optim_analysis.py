"""dxdt.optim analysis: Hessian-vector products, Lanczos, stochastic Lanczos quadrature, conjugate gradients,
stability bounds (largest stable learning rates, linear rates) checked against what gradient descent and the
heavy ball actually do, PCA by Oja's/Sanger's flow, and the sharpness tracker."""

from __future__ import annotations

import math

import pytest
import torch

from dxdt.optim import (
    HeavyBall,
    HessianOperator,
    SharpnessTracker,
    conjugate_gradient,
    gd_rate,
    heavy_ball_max_stable_lr,
    heavy_ball_rate,
    hvp,
    max_stable_lr,
    oja_pca,
    polyak_heavy_ball,
    sharpness,
    spectral_density,
    top_eigenvalues,
)

F64 = torch.float64


def spd(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(eigenvalues.to(F64)) @ q.T


def mlp_loss(seed: int = 0):
    """A tiny tanh MLP on random data as a function of its flat parameter vector (49 parameters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g, dtype=F64)
    y = torch.sin(x.sum(1, keepdim=True))
    sizes = [(3, 8), (8,), (8, 2), (2,), (2, 1), (1,)]  # 24 + 8 + 16 + 2 + 2 + 1 = 53
    n = sum(math.prod(s) for s in sizes)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for s in sizes:
            parts.append(theta[i : i + math.prod(s)].reshape(s))
            i += math.prod(s)
        w1, b1, w2, b2, w3, b3 = parts
        h = torch.tanh(torch.tanh(x @ w1 + b1) @ w2 + b2)
        return ((h @ w3 + b3 - y) ** 2).mean()

    return loss, 0.5 * torch.randn(n, generator=g, dtype=F64)


def logistic(n: int = 10, m: int = 200, l2: float = 1e-2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=F64)
    y = (torch.rand(m, generator=g, dtype=F64) < torch.sigmoid(x @ torch.randn(n, generator=g, dtype=F64))).to(F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y) + 0.5 * l2 * theta @ theta

    def grad(theta: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n), for batched gradient descent
        return (torch.sigmoid(theta @ x.T) - y) @ x / m + l2 * theta

    return loss, grad


# --- Hessian-vector products and Lanczos ---------------------------------------------------------------


def test_hvp_matches_autograd_hessian():
    loss, theta = mlp_loss()
    H = torch.autograd.functional.hessian(loss, theta)
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(hvp(loss, theta, v), H @ v, rtol=1e-10, atol=1e-12)
    # The closure route (double backward through parameters read in place) agrees.
    p = theta.clone().requires_grad_(True)
    op = HessianOperator.from_closure([p], lambda: loss(p))
    torch.testing.assert_close(op(v), H @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(p.detach(), theta)  # the parameters are left where they were


@pytest.mark.parametrize("route", ["function", "closure"])
def test_lanczos_top_eigenvalues_match_eigvalsh(route):
    loss, theta = mlp_loss()
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta))
    if route == "function":
        op = HessianOperator.from_function(loss, theta)
    else:
        p = theta.clone().requires_grad_(True)
        op = HessianOperator.from_closure([p], lambda: loss(p))
    res = op.eigenvalues(3, "LA", tol=1e-10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.eigenvalues, exact.flip(0)[:3], rtol=1e-6, atol=0)
    # Ritz vectors are eigenvectors: residuals small against λmax.
    H = torch.autograd.functional.hessian(loss, theta)
    for lam, u in zip(res.eigenvalues, res.eigenvectors):
        assert float(torch.linalg.vector_norm(H @ u - lam * u)) < 1e-6 * float(exact[-1])
    assert res.n_matvec < theta.numel()  # converged before building the whole space
    assert sharpness(loss, theta) == pytest.approx(float(exact[-1]), rel=1e-6)


def test_lanczos_smallest_and_largest_magnitude():
    A = spd(40, torch.cat([torch.tensor([-5.0, -0.5]), torch.linspace(0.1, 3.0, 38)]))
    exact = torch.linalg.eigvalsh(A)
    sa = top_eigenvalues(lambda v: A @ v, 40, 2, which="SA", tol=1e-12)
    torch.testing.assert_close(sa.eigenvalues, exact[:2], rtol=1e-8, atol=1e-10)
    lm = top_eigenvalues(lambda v: A @ v, 40, 1, which="LM", tol=1e-12)
    torch.testing.assert_close(lm.eigenvalues, exact[:1], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="which must be"):
        top_eigenvalues(lambda v: A @ v, 40, 1, which="BE")


def test_stochastic_lanczos_quadrature():
    n, m = 60, 12
    lam = torch.cat([torch.linspace(0.0, 1.0, 50), torch.linspace(8.0, 10.0, 10)])
    A = spd(n, lam)
    dens = spectral_density(lambda v: A @ v, n, n_probes=40, n_steps=m, generator=torch.Generator().manual_seed(0))
    assert dens.nodes.shape == (40, m)
    torch.testing.assert_close(dens.weights.sum(1), torch.ones(40, dtype=F64))
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m: every probe reproduces
    # vᵀ A^j v / n (Rademacher v, ‖v‖² = n) for j up to 2m - 1. Rebuild the probes from the same seed.
    g = torch.Generator().manual_seed(0)
    for p in range(3):
        v = torch.randint(0, 2, (n,), generator=g).to(F64) * 2 - 1
        for j in (1, 5, 2 * m - 1):
            exact = v @ torch.linalg.matrix_power(A, j) @ v / n
            quad = (dens.weights[p] * dens.nodes[p] ** j).sum()
            torch.testing.assert_close(quad, exact, rtol=1e-8, atol=0)
    # Averaged over probes: the trace estimate and the eigenvalue distribution (1/6 of them above 5).
    assert abs(float(dens.moment(1)) - float(lam.mean())) < 0.1 * float(lam.mean())
    frac_above = 1 - float(dens.cdf(torch.tensor([5.0]))[0])
    assert abs(frac_above - 10 / 60) < 0.05
    grid = torch.linspace(-1, 11, 1201, dtype=F64)
    density = dens.density(grid, sigma=0.1)
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 1e-3


# --- conjugate gradients ---------------------------------------------------------------------------------


def test_conjugate_gradient_and_recycling():
    A = spd(50, torch.logspace(0, 2, 50))
    g = torch.Generator().manual_seed(3)
    b1, b2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    res = conjugate_gradient(lambda v: A @ v, b1, rtol=1e-10, max_iter=500)
    assert res.converged and not res.negative_curvature
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b1), rtol=1e-8, atol=1e-10)
    # A right-hand side inside the old Krylov space costs (almost) nothing with the old directions.
    b_in = b1 + 0.3 * (A @ b1)
    fresh = conjugate_gradient(lambda v: A @ v, b_in, rtol=1e-9, max_iter=500)
    recycled = conjugate_gradient(lambda v: A @ v, b_in, rtol=1e-9, max_iter=500, recycle=res.space)
    torch.testing.assert_close(recycled.x, torch.linalg.solve(A, b_in), rtol=1e-6, atol=1e-7)
    assert 4 * recycled.n_iter <= fresh.n_iter
    # Any right-hand side: still the exact solution, and never more products than a fresh solve.
    again = conjugate_gradient(lambda v: A @ v, b2, rtol=1e-10, max_iter=500, recycle=res.space)
    torch.testing.assert_close(again.x, torch.linalg.solve(A, b2), rtol=1e-7, atol=1e-9)
    # Indefinite matrix: CG stops at negative curvature and says so.
    indef = spd(10, torch.linspace(-1.0, 1.0, 10))
    neg = conjugate_gradient(lambda v: indef @ v, torch.ones(10, dtype=F64), rtol=1e-12)
    assert neg.negative_curvature and not neg.converged


# --- stability: predicted learning-rate thresholds against observed divergence ---------------------------


def gd_converges(grad, theta0: torch.Tensor, theta_star: torch.Tensor, lrs: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Batched gradient descent, one learning rate per row: which ones end (much) closer to θ* than they began."""
    theta = theta0.expand(lrs.numel(), -1).clone()
    for _ in range(n_iter):
        theta = theta - lrs[:, None] * grad(theta)
        theta = torch.nan_to_num(theta, nan=1e30, posinf=1e30, neginf=-1e30)
    return (theta - theta_star).norm(dim=1) < 1e-3 * (theta0 - theta_star).norm()


def test_gd_on_quadratic_diverges_iff_lr_above_two_over_lambda_max():
    A = spd(20, torch.logspace(-1, 1, 20), seed=1)
    theta_star = torch.ones(20, dtype=F64)
    lam_max = float(top_eigenvalues(lambda v: A @ v, 20, 1, tol=1e-12).eigenvalues[0])
    lr = max_stable_lr(lam_max)
    assert lr == pytest.approx(2 / float(torch.linalg.eigvalsh(A)[-1]), rel=1e-10)
    theta0 = theta_star + torch.randn(20, generator=torch.Generator().manual_seed(2), dtype=F64)
    lrs = lr * torch.tensor([0.5, 0.95, 0.99, 1.01, 1.05, 1.5], dtype=F64)
    ok = gd_converges(lambda th: (th - theta_star) @ A, theta0, theta_star, lrs, 3000)
    assert ok.tolist() == [True, True, True, False, False, False]
    # The observed contraction per step is the predicted rate max|1 − η λ| (here from λmin = 1; next 0.5).
    B = spd(5, torch.tensor([1.0, 4.0, 5.0, 6.0, 10.0]), seed=3)
    eta, theta = 0.15, theta0[:5] - theta_star[:5]
    errs = []
    for _ in range(120):
        theta = theta - eta * (B @ theta)
        errs.append(float(theta.norm()))
    observed = (errs[-1] / errs[-51]) ** (1 / 50)
    assert observed == pytest.approx(gd_rate(eta, 1.0, 10.0), rel=1e-6)


def observed_threshold(grad, theta_star: torch.Tensor, lr_pred: float, n_iter: int = 1500) -> float:
    """The smallest learning rate on a 0.2% grid around 2/λmax at which gradient descent, started next to θ*,
    no longer returns to it."""
    lrs = lr_pred * torch.linspace(0.9, 1.1, 101, dtype=F64)
    start = theta_star + 1e-6 * torch.randn(theta_star.numel(), generator=torch.Generator().manual_seed(5), dtype=F64)
    ok = gd_converges(grad, start, theta_star, lrs, n_iter)
    assert ok[0] and not ok[-1]
    return float(lrs[~ok].min())


def test_predicted_max_stable_lr_matches_divergence_linear_regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 15, generator=g, dtype=F64) * torch.logspace(0, -1, 15, dtype=F64)
    y = x @ torch.randn(15, generator=g, dtype=F64) + 0.1 * torch.randn(100, generator=g, dtype=F64)

    def loss(theta):
        return 0.5 * ((x @ theta - y) ** 2).mean()

    theta_star = torch.linalg.lstsq(x, y).solution
    lam_max = float(HessianOperator.from_function(loss, theta_star).eigenvalues(1, tol=1e-10).eigenvalues[0])
    lr_pred = max_stable_lr(lam_max)
    lr_obs = observed_threshold(lambda th: (th @ x.T - y) @ x / 100, theta_star, lr_pred)
    assert abs(lr_obs / lr_pred - 1) < 0.02


def test_predicted_max_stable_lr_matches_divergence_logistic_regression():
    loss, grad = logistic()
    theta = torch.zeros(10, dtype=F64)
    for _ in range(30):  # Newton's method to the minimum, with the dense Hessian (a reference, not dxdt.optim)
        H = torch.autograd.functional.hessian(loss, theta)
        theta = theta - torch.linalg.solve(H, torch.func.grad(loss)(theta))
    assert float(torch.func.grad(loss)(theta).norm()) < 1e-12
    lam_max = float(HessianOperator.from_function(loss, theta).eigenvalues(1, tol=1e-10).eigenvalues[0])
    lr_pred = max_stable_lr(lam_max)
    lr_obs = observed_threshold(grad, theta, lr_pred)
    assert abs(lr_obs / lr_pred - 1) < 0.02


def test_heavy_ball_diverges_iff_lr_above_its_bound():
    A = spd(8, torch.linspace(0.5, 4.0, 8), seed=4)
    lam_max, beta = 4.0, 0.6
    bound = heavy_ball_max_stable_lr(lam_max, beta)
    assert bound == pytest.approx(2 * 1.6 / 4.0)
    for factor, stable in ((0.98, True), (1.02, False)):
        p = torch.ones(8, dtype=F64, requires_grad=True)
        opt = HeavyBall.from_polyak([p], lr=factor * bound, momentum=beta)
        assert HeavyBall.polyak_parameters(opt.param_groups[0]["dt"], opt.param_groups[0]["damping"]) == (
            pytest.approx(factor * bound),
            pytest.approx(beta),
        )
        for _ in range(1500):
            opt.zero_grad()
            (0.5 * p @ (A @ p)).backward()
            opt.step()
        assert (float(p.detach().norm()) < 1e-3) is stable


def test_heavy_ball_rate_polyak():
    lam_min, lam_max = 0.5, 50.0
    lr, beta = polyak_heavy_ball(lam_min, lam_max)
    kappa = lam_max / lam_min
    predicted = heavy_ball_rate(lr, beta, lam_min, lam_max)
    assert predicted == pytest.approx((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1), rel=1e-6)
    assert predicted < gd_rate(2 / (lam_min + lam_max), lam_min, lam_max)
    # Observed on a quadratic with those extreme eigenvalues: the error decays at the predicted rate
    # (up to the polynomial factor of the double root: compare over a long window).
    A = spd(6, torch.tensor([lam_min, 1.0, 3.0, 10.0, 30.0, lam_max]), seed=2)
    p = torch.ones(6, dtype=F64, requires_grad=True)
    opt = HeavyBall.from_polyak([p], lr=lr, momentum=beta)
    norms = []
    for _ in range(300):
        opt.zero_grad()
        (0.5 * p @ (A @ p)).backward()
        opt.step()
        norms.append(float(p.detach().norm()))
    observed = (norms[-1] / norms[-201]) ** (1 / 200)
    assert observed == pytest.approx(predicted, abs=0.01)


# --- PCA as a flow -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["sanger", "subspace"])
def test_oja_flow_matches_eigh(rule):
    C = spd(12, torch.tensor([5.0, 4.0, 3.0, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]), seed=7)
    evals, evecs = torch.linalg.eigh(C)
    top = evecs[:, -3:].flip(1)
    res = oja_pca(C, 3, rule=rule, generator=torch.Generator().manual_seed(0))
    assert res.residual <= 1e-8 * 5.0
    if rule == "sanger":  # ordered eigenvectors, up to sign
        signs = torch.sign((res.components * top).sum(0))
        torch.testing.assert_close(res.components * signs, top, rtol=0, atol=1e-7)
        torch.testing.assert_close(res.eigenvalues, evals.flip(0)[:3], rtol=1e-10, atol=0)
    # Both rules: the same subspace (projectors agree) with orthonormal columns.
    W = res.components
    torch.testing.assert_close(W.T @ W, torch.eye(3, dtype=F64), rtol=0, atol=1e-7)
    torch.testing.assert_close(W @ W.T, top @ top.T, rtol=0, atol=1e-7)


# --- sharpness tracking ------------------------------------------------------------------------------------


def test_sharpness_tracker_measures_lambda_max():
    A = spd(10, torch.linspace(0.1, 3.0, 10))
    p = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_(True)

    def loss():
        return 0.5 * p @ (A @ p) + 0.1 * (p**4).sum()

    tracker = SharpnessTracker([p], lr=0.2, every=5, tol=1e-10, max_iter=10)
    opt = torch.optim.SGD([p], lr=0.2)
    for step in range(11):
        lam = tracker.update(step, loss)
        H = torch.autograd.functional.hessian(lambda q: 0.5 * q @ (A @ q) + 0.1 * (q**4).sum(), p.detach())
        if step % 5 == 0:
            assert lam == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
        else:
            assert lam is None
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert tracker.steps == [0, 5, 10]
    assert tracker.losses[0] > tracker.losses[-1]
    assert tracker.threshold == 10.0
    pytest.importorskip("matplotlib")
    fig = tracker.plot()
    line = next(ln for ln in fig.axes[1].lines if "2/η" in ln.get_label())
    assert list(line.get_ydata()) == [10.0, 10.0]
