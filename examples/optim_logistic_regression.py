"""Logistic regression with L2 and L1 penalties: gradient descent vs GradientFlow vs Newton.

L2 (smooth, ill-conditioned: condition number ≈ 120 at the optimum, 50 features): gradient descent at its best
fixed learning rate (grid search, all rates at once), GradientFlow with an explicit solver (no learning rate)
and with the stiff matrix-free Rosenbrock solver (its steps grow into Newton steps), and damped Newton with
conjugate gradients. Cost = gradient evaluations + Hessian-vector products until ‖∇L‖ <= 1e-8. The predicted
largest stable learning rate 2/λmax(∇²L(θ*)) is checked against the observed divergence threshold.

L1 (nonsmooth): the penalty is integrated implicitly, as soft-thresholding (the proximal step = implicit Euler
on the subgradient flow): proximal gradient descent (ISTA) and Nesterov's ODE with the same proximal step
(FISTA, with gradient restarts). GradientFlow and Newton need a smooth loss and are not applied to it.

    python examples/optim_logistic_regression.py --out optim_logistic_regression.png
"""

from __future__ import annotations

import argparse
import math

import torch

from dxdt.optim import GradientFlow, HessianOperator, NesterovODE, NewtonFlow, ProximalGradient, max_stable_lr

F64 = torch.float64
TOL = 1e-8


def make_problem(n: int = 50, m: int = 500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=F64) * torch.logspace(0, -1.5, n, dtype=F64)
    w_true = torch.randn(n, generator=g, dtype=F64) * 3
    y = (torch.rand(m, generator=g, dtype=F64) < torch.sigmoid(x @ w_true)).to(F64)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="optim_logistic_regression.png", help="where to write the plot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = make_problem()
    m, n = x.shape
    l2 = 5e-4

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y) + 0.5 * l2 * theta @ theta

    def grad(theta: torch.Tensor) -> torch.Tensor:  # (..., n)
        return (torch.sigmoid(theta @ x.T) - y) @ x / m + l2 * theta

    # The minimum, by Newton to machine precision.
    p = torch.zeros(n, dtype=F64, requires_grad=True)
    newton = NewtonFlow([p], linear_rtol=1e-12)
    for _ in range(30):
        newton.step(lambda: loss(p))
    theta_star = p.detach().clone()
    op = HessianOperator.from_function(loss, theta_star)
    lam_max = float(op.eigenvalues(1, "LA", tol=1e-12).eigenvalues[0])
    lam_min = float(op.eigenvalues(1, "SA", tol=1e-12).eigenvalues[0])
    lr_max = max_stable_lr(lam_max)
    print(f"L2 = {l2}: ∇²L(θ*) eigenvalues in [{lam_min:.3g}, {lam_max:.3g}], condition number {lam_max / lam_min:.0f}")

    # Predicted vs observed divergence threshold (gradient descent restarted next to θ*).
    lrs = lr_max * torch.linspace(0.95, 1.05, 101, dtype=F64)
    start = theta_star + 1e-6 * torch.randn(lrs.numel(), n, generator=torch.Generator().manual_seed(1), dtype=F64)
    th = start.clone()
    for _ in range(3000):
        th = th - lrs[:, None] * grad(th)
    ok = (th - theta_star).norm(dim=1) < 0.5 * (start - theta_star).norm(dim=1)
    lr_obs = float(lrs[~ok].min())
    print(f"predicted max stable lr 2/λmax = {lr_max:.4f}, observed {lr_obs:.4f} ({100 * (lr_obs / lr_max - 1):+.2f}%)")

    # Gradient descent, best fixed learning rate: every rate of a grid at once, recording ‖∇L‖ per iteration.
    grid = lr_max * torch.linspace(0.5, 1.0, 26, dtype=F64)
    th = torch.zeros(grid.numel(), n, dtype=F64)
    history = []
    for _ in range(5000):
        gr = grad(th)
        history.append(gr.norm(dim=1))
        th = th - grid[:, None] * gr
    history = torch.stack(history)  # (iterations, rates)
    reached = (history <= TOL).to(torch.int64)
    first = torch.where(reached.any(0), reached.argmax(0) + 1, 10**9)
    best = int(first.argmin())
    curves = {
        f"GD, best fixed η = {float(grid[best] / lr_max):.2f}·2/λmax": (list(range(1, 5001)), history[:, best].tolist())
    }
    costs = {"gradient descent (best fixed lr)": (int(first[best]), 0)}

    def track(opt, evaluations, closure, p, label):
        xs, ys = [], []
        for _ in range(5000):
            opt.step(closure)
            xs.append(evaluations())
            ys.append(float(grad(p.detach()).norm()))
            if ys[-1] <= TOL:
                break
        curves[label] = (xs, ys)
        return xs[-1]

    for label, kwargs in (
        ("GradientFlow, tsit5 (explicit)", dict(solver="tsit5")),
        ("GradientFlow, ros2 (stiff)", dict(solver="ros2")),
    ):
        p = torch.zeros(n, dtype=F64, requires_grad=True)
        opt = GradientFlow([p], **kwargs)
        track(opt, lambda o=opt: o.stats["n_grad"] + o.stats["n_hvp"], lambda p=p: loss(p), p, label)
        costs[label] = (opt.stats["n_grad"], opt.stats["n_hvp"])
    p = torch.zeros(n, dtype=F64, requires_grad=True)
    opt = NewtonFlow([p])
    track(opt, lambda: opt.stats["n_grad"] + opt.stats["n_hvp"], lambda: loss(p), p, "Newton (CG on HVPs)")
    costs["Newton (CG on HVPs)"] = (opt.stats["n_grad"], opt.stats["n_hvp"])
    gd = costs["gradient descent (best fixed lr)"][0]
    print(f"\nto ‖∇L‖ <= {TOL:g}:  {'method':<34} {'grads':>6} {'HVPs':>6} {'total':>6} {'vs GD':>6}")
    for label, (n_grad, n_hvp) in costs.items():
        print(f"{'':18}{label:<34} {n_grad:>6} {n_hvp:>6} {n_grad + n_hvp:>6} {(n_grad + n_hvp) / gd:>6.2f}")

    # L1: proximal gradient (ISTA) and FISTA (Nesterov's ODE + the same proximal step).
    l1 = 2e-3

    def smooth(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y)

    lr = 1.0 / float(HessianOperator.from_function(smooth, theta_star).eigenvalues(1, tol=1e-10).eigenvalues[0])
    l1_curves = {}
    for label, make in (
        ("proximal GD (ISTA)", lambda q: ProximalGradient([q], lr=lr, l1=l1)),
        ("Nesterov ODE + prox (FISTA, restarts)", lambda q: NesterovODE([q], lr=lr, l1=l1, restart="gradient")),
    ):
        q = torch.zeros(n, dtype=F64, requires_grad=True)
        opt = make(q)
        values = []
        for _ in range(3000):
            opt.zero_grad()
            smooth(q).backward()
            opt.step()
            it = opt.iterate()[0] if isinstance(opt, NesterovODE) else q.detach()
            values.append(float(smooth(it) + l1 * it.abs().sum()))
        l1_curves[label] = (values, it)
    f_star = min(min(v) for v, _ in l1_curves.values())
    for label, (values, it) in l1_curves.items():
        k = next((i + 1 for i, v in enumerate(values) if v - f_star <= 1e-10), math.inf)
        print(
            f"L1 = {l1}: {label}: {k} iterations to F − F* <= 1e-10; {int((it == 0).sum())}/{n} coefficients exactly 0"
        )

    from dxdt.plot import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for label, (xs, ys) in curves.items():
        axes[0].semilogy(xs, ys, label=label)
    axes[0].axhline(TOL, color="k", lw=0.5)
    axes[0].set_xlabel("gradient evaluations + Hessian-vector products")
    axes[0].set_ylabel("‖∇L‖")
    axes[0].set_xlim(0, 3 * gd)
    axes[0].set_title(f"L2 = {l2}, condition number {lam_max / lam_min:.0f}")
    axes[0].legend(fontsize=8)
    for label, (values, _) in l1_curves.items():
        axes[1].semilogy([max(v - f_star, 1e-16) for v in values], label=label)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("F − F*")
    axes[1].set_title(f"L1 = {l1}: soft-thresholding = implicit Euler")
    axes[1].legend(fontsize=8)
    coef = l1_curves["Nesterov ODE + prox (FISTA, restarts)"][1]
    axes[2].stem(coef.numpy(), markerfmt=".", basefmt="k-", label="L1 solution")
    axes[2].plot(theta_star.numpy(), "x", color="C1", label="L2 solution")
    axes[2].set_xlabel("feature (scale decreasing →)")
    axes[2].set_ylabel("coefficient")
    axes[2].set_title("L1 sets coefficients exactly to zero")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
