"""Gradient descent at its best fixed learning rate against GradientFlow (explicit and stiff) and Newton, on
ill-conditioned problems of dimension 50: a quadratic and an L2-regularised logistic regression.

Cost is counted as gradient evaluations plus Hessian-vector products, until ‖∇L‖ <= 1e-8. Gradient descent's
best fixed learning rate is found by a grid search over ``c · 2/λmax(θ*)`` (all rates run at once, batched).
Also checks the predicted largest stable learning rate 2/λmax (Lanczos) against the observed divergence
threshold.

    python benchmarks/bench_optim.py
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from dxdt.optim import GradientFlow, HessianOperator, NewtonFlow, max_stable_lr

F64 = torch.float64
TOL = 1e-8


def quadratic(n: int = 50, kappa: float = 100.0, seed: int = 0):
    """``½ (θ − θ*)ᵀ A (θ − θ*)`` with eigenvalues log-spaced in ``[1, κ]`` and a random eigenbasis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    a = q @ torch.diag(torch.logspace(0, math.log10(kappa), n, dtype=F64)) @ q.T
    theta_star = torch.randn(n, generator=g, dtype=F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        d = theta - theta_star
        return 0.5 * (d @ (a @ d.T)).diagonal() if d.ndim == 2 else 0.5 * d @ (a @ d)

    def grad(theta: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n)
        return (theta - theta_star) @ a

    return loss, grad, torch.zeros(n, dtype=F64)


def logistic(n: int = 50, m: int = 500, l2: float = 5e-4, seed: int = 0):
    """L2-regularised logistic regression with features scaled over 1.5 decades (an ill-conditioned Hessian)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=F64) * torch.logspace(0, -1.5, n, dtype=F64)
    w_true = torch.randn(n, generator=g, dtype=F64) * 3
    y = (torch.rand(m, generator=g, dtype=F64) < torch.sigmoid(x @ w_true)).to(F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        z = x @ theta
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y) + 0.5 * l2 * theta @ theta

    def grad(theta: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n)
        return (torch.sigmoid(theta @ x.T) - y) @ x / m + l2 * theta

    return loss, grad, torch.zeros(n, dtype=F64)


def newton_minimum(loss, theta0: torch.Tensor) -> torch.Tensor:
    theta = theta0.clone().requires_grad_(True)
    opt = NewtonFlow([theta], linear_rtol=1e-12)
    for _ in range(50):
        opt.step(lambda: loss(theta))
        if torch.func.grad(loss)(theta.detach()).norm() < 1e-13:
            break
    return theta.detach()


def gd_iterations(grad, theta0: torch.Tensor, lrs: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Gradient evaluations each learning rate needs to reach ‖∇L‖ <= TOL (inf if never), all at once."""
    theta = theta0.expand(lrs.numel(), -1).clone()
    done = torch.full((lrs.numel(),), math.inf, dtype=F64)
    for k in range(max_iter):
        g = grad(theta)
        norm = g.norm(dim=1)
        done = torch.where(torch.isinf(done) & (norm <= TOL), torch.tensor(k + 1.0, dtype=F64), done)
        if not torch.isinf(done).any():
            break
        theta = theta - lrs[:, None] * g
        theta = torch.where(torch.isfinite(theta), theta, torch.tensor(1e30, dtype=F64))
    return done


def observed_threshold(grad, theta_star: torch.Tensor, lr_pred: float, n_iter: int = 2000) -> float:
    """The smallest learning rate (on a 0.1% grid around 2/λmax) at which gradient descent started next to
    the minimum does not converge back to it."""
    lrs = lr_pred * torch.linspace(0.95, 1.05, 101, dtype=F64)
    g = torch.Generator().manual_seed(1)
    theta = theta_star + 1e-6 * torch.randn(lrs.numel(), theta_star.numel(), generator=g, dtype=F64)
    for _ in range(n_iter):
        theta = theta - lrs[:, None] * grad(theta)
        theta = torch.where(torch.isfinite(theta), theta, torch.tensor(1e30, dtype=F64))
    converged = (theta - theta_star).norm(dim=1) < 1e-7  # started 1e-6·√n away
    return float(lrs[~converged].min())


def run_flow(loss, grad, theta0: torch.Tensor, max_calls: int = 5000, **kwargs) -> tuple[int, int, float]:
    theta = theta0.clone().requires_grad_(True)
    opt = GradientFlow([theta], **kwargs)
    for _ in range(max_calls):
        opt.step(lambda: loss(theta))
        if grad(theta.detach()[None]).norm() <= TOL:
            break
    return opt.stats["n_grad"], opt.stats["n_hvp"], float(grad(theta.detach()[None]).norm())


def run_newton(loss, grad, theta0: torch.Tensor, **kwargs) -> tuple[int, int, float]:
    theta = theta0.clone().requires_grad_(True)
    opt = NewtonFlow([theta], **kwargs)
    for _ in range(200):
        opt.step(lambda: loss(theta))
        if grad(theta.detach()[None]).norm() <= TOL:
            break
    return opt.stats["n_grad"], opt.stats["n_hvp"], float(grad(theta.detach()[None]).norm())


def main() -> None:
    torch.set_num_threads(1)  # tiny problems: threads only add overhead
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-iter", type=int, default=50000, help="gradient descent iteration cap")
    args = parser.parse_args()
    rows = []
    problems = (
        ("quadratic κ=100", quadratic()),
        ("logistic, L2 5e-4", logistic()),
        ("quadratic κ=1000", quadratic(kappa=1000.0)),
        ("logistic, L2 5e-5", logistic(l2=5e-5)),
    )
    for name, problem in problems:
        loss, grad, theta0 = problem
        theta_star = newton_minimum(loss, theta0)
        hess = HessianOperator.from_function(loss, theta_star)
        eig = torch.linalg.eigvalsh(hess.dense())
        lam_max = float(hess.eigenvalues(1, tol=1e-10).eigenvalues[0])
        lr_pred = max_stable_lr(lam_max)
        lr_obs = observed_threshold(grad, theta_star, lr_pred)
        print(
            f"{name}: dim {theta0.numel()}, cond(H*) = {float(eig[-1] / eig[0]):.0f}; predicted max stable lr "
            f"{lr_pred:.5g}, observed divergence at {lr_obs:.5g} ({100 * (lr_obs / lr_pred - 1):+.2f}%)"
        )
        start = time.perf_counter()
        lrs = lr_pred * torch.linspace(0.5, 1.0, 51, dtype=F64)
        iters = gd_iterations(grad, theta0, lrs, args.max_iter)
        best = int(torch.argmin(iters))
        gd_cost = float(iters[best])
        rows.append((name, f"GD, best fixed lr = {float(lrs[best] / lr_pred):.2f}·2/λmax", gd_cost, 0, gd_cost, 1.0))
        print(f"  gradient descent grid search: {time.perf_counter() - start:.1f}s")
        for label, kwargs in (
            ("GradientFlow ros2 (stiff)", dict(solver="ros2")),
            ("GradientFlow tsit5", dict(solver="tsit5", steps_per_call=20)),
            ("GradientFlow bosh3", dict(solver="bosh3", steps_per_call=20)),
        ):
            start = time.perf_counter()
            n_grad, n_hvp, gnorm = run_flow(loss, grad, theta0, **kwargs)
            ok = gnorm <= TOL
            rows.append((name, label, n_grad, n_hvp, n_grad + n_hvp if ok else math.inf, (n_grad + n_hvp) / gd_cost))
            print(f"  {label}: {time.perf_counter() - start:.1f}s, final ‖∇L‖ = {gnorm:.1e}")
        n_grad, n_hvp, gnorm = run_newton(loss, grad, theta0)
        rows.append((name, "Newton (CG)", n_grad, n_hvp, n_grad + n_hvp, (n_grad + n_hvp) / gd_cost))
    print()
    print(f"{'problem':<18} {'method':<38} {'grads':>7} {'HVPs':>7} {'total':>8} {'vs GD':>7}")
    for name, label, n_grad, n_hvp, total, ratio in rows:
        print(f"{name:<18} {label:<38} {n_grad:>7.0f} {n_hvp:>7} {total:>8.0f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
