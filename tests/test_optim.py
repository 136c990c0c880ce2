"""dxdt.optim optimizers: GradientFlow (explicit and stiff) against the exact gradient flow and the optimum,
its cost against gradient descent at the best fixed learning rate, the ROS2 step's order, Newton's quadratic
convergence and the Newton flow, Gauss–Newton, heavy ball and Nesterov ODEs against dxdt.solve, and the
proximal steps as implicit Euler."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dxdt
from dxdt.optim import (
    GaussNewton,
    GradientFlow,
    HeavyBall,
    MatrixFreeRosenbrock,
    NesterovODE,
    NewtonFlow,
    ProximalGradient,
    prox_l1,
    prox_l2,
    soft_threshold,
)

F64 = torch.float64


def spd(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(eigenvalues.to(F64)) @ q.T


def quadratic(n: int = 50, kappa: float = 100.0, seed: int = 0):
    A = spd(n, torch.logspace(0, math.log10(kappa), n), seed)
    theta_star = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return A, theta_star


def logistic(n: int = 10, m: int = 200, l2: float = 1e-2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=F64)
    y = (torch.rand(m, generator=g, dtype=F64) < torch.sigmoid(x @ torch.randn(n, generator=g, dtype=F64))).to(F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y) + 0.5 * l2 * theta @ theta

    return loss


def reference_minimum(loss, n: int) -> torch.Tensor:
    """Newton's method with the dense Hessian (torch.autograd.functional), independent of dxdt.optim."""
    theta = torch.zeros(n, dtype=F64)
    for _ in range(40):
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(loss, theta), torch.func.grad(loss)(theta))
    return theta


def run(opt, closure, p, grad_fn, tol: float, max_calls: int) -> int:
    for k in range(max_calls):
        opt.step(closure)
        if float(grad_fn(p.detach()).norm()) <= tol:
            return k + 1
    return max_calls


# --- GradientFlow ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["tsit5", "ros2"])
def test_gradient_flow_follows_the_exact_flow(solver):
    """Linear regression: θ(t) = θ* + exp(−A t)(θ0 − θ*). With tight tolerances GradientFlow is on it."""
    A, theta_star = quadratic(n=8, kappa=10.0)
    p = torch.zeros(8, dtype=F64, requires_grad=True)
    tols = dict(rtol=1e-5) if solver == "tsit5" else dict(rtol=1e-4, atol=1e-6, linear_rtol=1e-8)
    opt = GradientFlow([p], solver=solver, steps_per_call=20, **tols)

    def closure():
        d = p - theta_star
        return 0.5 * d @ (A @ d)

    while opt.stats["t"] < 0.5:
        opt.step(closure)
    t = opt.stats["t"]
    exact = theta_star + torch.linalg.matrix_exp(-A * t) @ (torch.zeros(8, dtype=F64) - theta_star)
    err = float((p.detach() - exact).norm() / exact.norm())
    assert err < 3e-4


@pytest.mark.parametrize("solver", ["tsit5", "bosh3", "ros2"])
def test_gradient_flow_reaches_convex_optimum(solver):
    loss = logistic()
    theta_star = reference_minimum(loss, 10)
    p = torch.zeros(10, dtype=F64, requires_grad=True)
    opt = GradientFlow([p], solver=solver, steps_per_call=10)
    n_calls = run(opt, lambda: loss(p), p, lambda th: torch.func.grad(loss)(th), 1e-10, 500)
    assert n_calls < 500
    assert float((p.detach() - theta_star).norm()) < 1e-8
    assert opt.stats["n_accepted"] > 0 and opt.stats["t"] > 0
    assert (opt.stats["n_hvp"] > 0) == (solver == "ros2")


def test_stiff_gradient_flow_beats_best_gradient_descent():
    """Acceptance (quadratic, κ = 100, n = 50): stiff GradientFlow needs <= 0.5x the gradient + HVP
    evaluations of gradient descent at its best fixed learning rate to reach ‖∇L‖ <= 1e-8, and its steps
    grow far beyond any stable explicit step (Newton-like)."""
    A, theta_star = quadratic()
    lam = torch.linalg.eigvalsh(A)
    # Gradient descent on a grid of fixed learning rates around 2/(λmin + λmax), all at once.
    lrs = torch.linspace(0.9, 1.0, 11, dtype=F64) * 2 / float(lam[-1])
    theta = torch.zeros(lrs.numel(), 50, dtype=F64)
    needed = torch.full((lrs.numel(),), math.inf, dtype=F64)
    for k in range(3000):
        g = (theta - theta_star) @ A
        needed = torch.where(torch.isinf(needed) & (g.norm(dim=1) <= 1e-8), float(k + 1), needed)
        theta = theta - lrs[:, None] * g
    gd_best = float(needed.min())
    assert 800 < gd_best < 1100  # ≈ ln(‖g0‖/1e-8)·(κ + 1)/2

    p = torch.zeros(50, dtype=F64, requires_grad=True)
    opt = GradientFlow([p], solver="ros2")

    def closure():
        d = p - theta_star
        return 0.5 * d @ (A @ d)

    run(opt, closure, p, lambda th: A @ (th - theta_star), 1e-8, 200)
    assert float((A @ (p.detach() - theta_star)).norm()) <= 1e-8
    cost = opt.stats["n_grad"] + opt.stats["n_hvp"]
    assert cost <= 0.5 * gd_best, (cost, gd_best)
    assert opt.stats["dt"] > 100 * 2 / float(lam[-1])


@pytest.mark.slow
def test_stiff_gradient_flow_beats_best_gradient_descent_logistic():
    """Acceptance, logistic regression (n = 50, L2 = 5e-4, condition number ≈ 124 at the optimum)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 50, generator=g, dtype=F64) * torch.logspace(0, -1.5, 50, dtype=F64)
    y = torch.rand(500, generator=g, dtype=F64) < torch.sigmoid(x @ (3 * torch.randn(50, generator=g, dtype=F64)))
    y = y.to(F64)

    def loss(theta):
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y) + 2.5e-4 * theta @ theta

    def grad(theta):
        return (torch.sigmoid(theta @ x.T) - y) @ x / 500 + 5e-4 * theta

    theta_star = reference_minimum(loss, 50)
    lam = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta_star))
    assert float(lam[-1] / lam[0]) >= 100
    lrs = torch.linspace(0.5, 1.0, 26, dtype=F64) * 2 / float(lam[-1])
    theta = torch.zeros(lrs.numel(), 50, dtype=F64)
    needed = torch.full((lrs.numel(),), math.inf, dtype=F64)
    for k in range(3000):
        gr = grad(theta)
        needed = torch.where(torch.isinf(needed) & (gr.norm(dim=1) <= 1e-8), float(k + 1), needed)
        theta = theta - lrs[:, None] * gr
    gd_best = float(needed.min())
    p = torch.zeros(50, dtype=F64, requires_grad=True)
    opt = GradientFlow([p], solver="ros2")
    run(opt, lambda: loss(p), p, grad, 1e-8, 300)
    assert float(grad(p.detach()).norm()) <= 1e-8
    assert opt.stats["n_grad"] + opt.stats["n_hvp"] <= 0.5 * gd_best


def test_rosenbrock_step_is_second_order():
    """ROS2 with exact linear solves on y' = −A y: global error ∝ dt² (slope of log error vs log dt)."""
    A = spd(6, torch.linspace(0.5, 3.0, 6))
    ros = MatrixFreeRosenbrock(lambda y, v: -(A @ v), linear_rtol=1e-13)
    y0 = torch.ones(6, dtype=F64)
    exact = torch.linalg.matrix_exp(-A) @ y0
    errors = []
    for n in (64, 128, 256):
        y = y0
        for _ in range(n):
            y, _, _ = ros.step(lambda x: -(A @ x), y, -(A @ y), 1.0 / n)
        errors.append(float((y - exact).norm()))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(s - 2) < 0.1 for s in slopes), slopes
    # L-stable: one huge step on a linear problem lands on the equilibrium.
    y1, _, _ = ros.step(lambda x: -(A @ x), y0, -(A @ y0), 1e8)
    assert float(y1.norm()) < 1e-6


def test_gradient_flow_errors():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="no error estimate"):
        GradientFlow([p], solver="euler")
    with pytest.raises(ValueError, match="single parameter group"):
        GradientFlow([{"params": [p]}, {"params": [torch.zeros(2, requires_grad=True)]}])
    with pytest.raises(ValueError, match="steps_per_call"):
        GradientFlow([p], steps_per_call=0)

    def calls_backward():
        loss = (p**2).sum()
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"must return the loss without calling loss\.backward"):
        GradientFlow([p], solver="ros2").step(calls_backward)
    # Explicit solvers accept the usual closure that calls backward() itself.
    q = torch.ones(3, dtype=F64, requires_grad=True)

    def quad_backward():
        q.grad = None
        loss = (q**2).sum()
        loss.backward()
        return loss

    opt = GradientFlow([q], steps_per_call=50)
    for _ in range(10):
        opt.step(quad_backward)
    assert float(q.detach().abs().max()) < 1e-6


# --- Newton and Gauss–Newton -----------------------------------------------------------------------------


def test_newton_converges_quadratically():
    loss = logistic(n=10, l2=1e-3)
    theta_star = reference_minimum(loss, 10)
    p = torch.zeros(10, dtype=F64, requires_grad=True)
    opt = NewtonFlow([p], linear_rtol=1e-14, linear_max_iter=100)
    errors = [float((p.detach() - theta_star).norm())]
    for _ in range(8):
        opt.step(lambda: loss(p))
        errors.append(float((p.detach() - theta_star).norm()))
    # In the quadratic regime e_{k+1} <= C e_k²: the log error doubles from step to step.
    tail = [e for e in errors if 1e-13 < e < 1e-1]
    assert len(tail) >= 3, errors
    for e0, e1 in itertools.pairwise(tail):
        assert math.log(e1) / math.log(e0) > 1.8, errors
        assert e1 / e0**2 < 10
    assert errors[-1] < 1e-12


def test_newton_one_step_on_quadratic_and_newton_flow():
    A, theta_star = quadratic(n=20, kappa=1e3)
    p = torch.zeros(20, dtype=F64, requires_grad=True)

    def closure():
        d = p - theta_star
        return 0.5 * d @ (A @ d)

    NewtonFlow([p], linear_rtol=1e-13, linear_max_iter=200).step(closure)
    torch.testing.assert_close(p.detach(), theta_star, rtol=1e-8, atol=1e-9)
    # Damped Newton = explicit Euler on the Newton flow, along which ∇L(θ(t)) = e^{−t} ∇L(θ0) for any loss.
    loss = logistic(n=5, l2=1e-2)
    q = torch.full((5,), 2.0, dtype=F64, requires_grad=True)
    g0 = torch.func.grad(loss)(q.detach())
    opt = NewtonFlow([q], dt=0.01, line_search=False, linear_rtol=1e-13)
    for _ in range(100):  # t = 1
        opt.step(lambda: loss(q))
    g1 = torch.func.grad(loss)(q.detach())
    assert float((g1 - math.exp(-1) * g0).norm()) < 0.02 * math.exp(-1) * float(g0.norm())


def test_gauss_newton():
    g = torch.Generator().manual_seed(0)
    # Linear least squares: one Gauss–Newton step is the least-squares solution.
    X, y = torch.randn(30, 6, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    w = torch.zeros(6, dtype=F64, requires_grad=True)
    GaussNewton([w]).step(lambda: X @ w - y)
    torch.testing.assert_close(w.detach(), torch.linalg.lstsq(X, y).solution, rtol=1e-8, atol=1e-10)
    # Zero-residual nonlinear fit y = a exp(−b t): converges to the true parameters.
    t = torch.linspace(0, 3, 40, dtype=F64)
    data = 2.0 * torch.exp(-1.3 * t)
    ab = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    opt = GaussNewton([ab])
    losses = [float(opt.step(lambda: ab[0] * torch.exp(-ab[1] * t) - data)) for _ in range(12)]
    torch.testing.assert_close(ab.detach(), torch.tensor([2.0, 1.3], dtype=F64), rtol=1e-9, atol=0)
    assert losses[-1] < 1e-20 and all(b <= a for a, b in itertools.pairwise(losses))


def test_newton_rejects_backward_closure():
    p = torch.ones(3, dtype=F64, requires_grad=True)

    def closure():
        loss = (p**4).sum()
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"without calling loss\.backward"):
        NewtonFlow([p]).step(closure)
    with pytest.raises(ValueError, match="dt must be in"):
        NewtonFlow([p], dt=1.5)


# --- heavy ball and Nesterov ODE against dxdt.solve ---------------------------------------------------------


def test_heavy_ball_converges_to_its_ode_at_first_order():
    A = spd(4, torch.tensor([0.5, 1.0, 2.0, 3.0]))
    a, T = 1.5, 2.0
    x0 = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)

    def f(t, y):  # y = (θ, v)
        th, v = y[:, :4], y[:, 4:]
        return torch.cat([v, -a * v - th @ A], dim=1)

    ref = dxdt.solve(f, torch.cat([x0, torch.zeros(4, dtype=F64)])[None], 0.0, T, rtol=1e-12, atol=1e-12)
    ref = ref.y_final[0, :4]
    errors = []
    for n in (50, 100, 200):
        p = x0.clone().requires_grad_(True)
        opt = HeavyBall([p], dt=T / n, damping=a)
        for _ in range(n):
            opt.zero_grad()
            (0.5 * p @ (A @ p)).backward()
            opt.step()
        errors.append(float((p.detach() - ref).norm()))
    assert all(0.8 < math.log2(errors[i] / errors[i + 1]) < 1.2 for i in range(2)), errors


def test_nesterov_ode_limit_and_rate():
    A = spd(4, torch.tensor([0.2, 0.5, 1.0, 2.0]))
    x0 = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)
    T = 3.0
    # Su–Boyd–Candès: X(t) with X(0) = x0, X'(0) = 0; start just after the singular t = 0 from the series
    # X(t) ≈ x0 − t² ∇f(x0)/8.
    eps = 1e-4
    g0 = A @ x0

    def f(t, y):
        th, v = y[:, :4], y[:, 4:]
        return torch.cat([v, -3.0 / t * v - th @ A], dim=1)

    y0 = torch.cat([x0 - eps**2 / 8 * g0, -eps / 4 * g0])[None]
    ref = dxdt.solve(f, y0, eps, T, rtol=1e-12, atol=1e-12).y_final[0, :4]
    errors = []
    for s in (1e-3, 2.5e-4, 6.25e-5):
        p = x0.clone().requires_grad_(True)
        opt = NesterovODE([p], lr=s)
        while opt.t < T - 1e-9:
            opt.zero_grad()
            (0.5 * p @ (A @ p)).backward()
            opt.step()
        assert opt.t == pytest.approx(T, abs=math.sqrt(s))
        errors.append(float((opt.iterate()[0] - ref).norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors  # → the ODE as s → 0
    # Nesterov's bound f(x_k) − f* <= 2‖x0 − x*‖² / (s (k + 1)²) with s = 1/λmax.
    p = x0.clone().requires_grad_(True)
    opt = NesterovODE([p], lr=0.5)
    for k in range(1, 60):
        opt.zero_grad()
        (0.5 * p @ (A @ p)).backward()
        opt.step()
        x = opt.iterate()[0]
        assert float(0.5 * x @ (A @ x)) <= 2 * float(x0 @ x0) / (0.5 * (k + 1) ** 2)


# --- proximal steps -----------------------------------------------------------------------------------------


def test_soft_threshold_is_implicit_euler_on_the_subgradient_flow():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.1, 0.5, 3.0], dtype=F64)
    lr, l1 = 0.5, 0.8
    y = prox_l1(x, lr, l1)
    torch.testing.assert_close(y, soft_threshold(x, lr * l1))
    # y = x − lr·l1·s with s ∈ ∂|y|: s = sign(y) where y ≠ 0, |s| <= 1 where y = 0.
    s = (x - y) / (lr * l1)
    nz = y != 0
    torch.testing.assert_close(s[nz], torch.sign(y[nz]))
    assert bool((s[~nz].abs() <= 1).all())
    # L2: implicit Euler on θ' = −l2 θ.
    z = prox_l2(x, lr, 2.0)
    torch.testing.assert_close((x - z) / lr, 2.0 * z)


def test_proximal_gradient_solves_lasso():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 8, generator=g, dtype=F64)
    y = X @ torch.tensor([3.0, 0, 0, -2.0, 0, 0, 0, 1.0], dtype=F64) + 0.1 * torch.randn(40, generator=g, dtype=F64)
    l1 = 0.5
    lr = 1 / float(torch.linalg.eigvalsh(X.T @ X / 40)[-1])
    results = []
    for make in (lambda p: ProximalGradient([p], lr=lr, l1=l1), lambda p: NesterovODE([p], lr=lr, l1=l1)):
        w = torch.zeros(8, dtype=F64, requires_grad=True)
        opt = make(w)
        for _ in range(2000):
            opt.zero_grad()
            (0.5 * ((X @ w - y) ** 2).mean()).backward()
            opt.step()
        sol = opt.iterate()[0] if isinstance(opt, NesterovODE) else w.detach()
        # KKT: the smooth gradient is −l1·sign(w) on the support and within [−l1, l1] off it.
        grad = X.T @ (X @ sol - y) / 40
        nz = sol != 0
        torch.testing.assert_close(grad[nz], -l1 * torch.sign(sol[nz]), rtol=0, atol=1e-8)
        assert bool((grad[~nz].abs() <= l1 + 1e-8).all()) and int((~nz).sum()) >= 3  # sparse
        results.append(sol)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-7)
