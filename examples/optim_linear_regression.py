"""Linear regression by gradient descent, done correctly: iterates, the exact gradient flow, and divergence
exactly above η = 2/λmax.

For L(θ) = ‖Xθ − y‖²/(2m) the Hessian is H = XᵀX/m and the gradient flow θ' = −∇L has the exact solution
θ(t) = θ* + exp(−H t)(θ0 − θ*). Gradient descent with learning rate η is explicit Euler on it: θ_k ≈ θ(kη)
while η λ is small, and on every eigendirection the error is multiplied by (1 − η λ) per step, so it diverges
exactly when η > 2/λmax. The script predicts λmax by Lanczos on Hessian-vector products (dxdt.optim), then
observes the divergence threshold on a 0.1% grid of learning rates.

    python examples/optim_linear_regression.py --out optim_linear_regression.png
"""

from __future__ import annotations

import argparse

import torch

from dxdt.optim import HessianOperator, max_stable_lr, optimal_lr

F64 = torch.float64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="optim_linear_regression.png", help="where to write the plot")
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    m = 200
    x = torch.randn(m, 2, generator=g, dtype=F64) @ torch.tensor([[1.0, 0.0], [0.8, 0.35]], dtype=F64)
    y = x @ torch.tensor([1.5, -2.0], dtype=F64) + 0.3 * torch.randn(m, generator=g, dtype=F64)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x @ theta - y) ** 2).mean()

    def grad(theta: torch.Tensor) -> torch.Tensor:  # (..., 2)
        return (theta @ x.T - y) @ x / m

    theta_star = torch.linalg.lstsq(x, y).solution
    H = x.T @ x / m
    op = HessianOperator.from_function(loss, theta_star)
    lam_max = float(op.eigenvalues(1, "LA", tol=1e-12).eigenvalues[0])
    lam_min = float(op.eigenvalues(1, "SA", tol=1e-12).eigenvalues[0])
    lr_max = max_stable_lr(lam_max)
    print(f"H eigenvalues (Lanczos): {lam_min:.4f}, {lam_max:.4f}  (eigvalsh: {torch.linalg.eigvalsh(H).tolist()})")
    print(f"predicted max stable lr 2/λmax = {lr_max:.5f}; best fixed lr {optimal_lr(lam_min, lam_max):.4g}")

    # Observed threshold: gradient descent on a 0.1% grid of learning rates around 2/λmax, all at once.
    lrs = lr_max * torch.linspace(0.9, 1.1, 201, dtype=F64)
    theta0 = torch.zeros(2, dtype=F64)
    theta = theta0.expand(lrs.numel(), -1).clone()
    for _ in range(3000):
        theta = torch.nan_to_num(theta - lrs[:, None] * grad(theta), nan=1e300, posinf=1e300, neginf=-1e300)
    err = (theta - theta_star).norm(dim=1)
    converged = err < 0.5 * (theta0 - theta_star).norm()  # the error shrank rather than grew
    lr_obs = float(lrs[~converged].min())
    print(f"observed divergence threshold: {lr_obs:.5f} ({100 * (lr_obs / lr_max - 1):+.2f}% from 2/λmax)")

    from dxdt.plot import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    # (1) iterates on the loss contours next to the exact flow.
    ax = axes[0]
    a, b = torch.meshgrid(
        torch.linspace(-1.0, 3.5, 200, dtype=F64), torch.linspace(-4.5, 1.0, 200, dtype=F64), indexing="ij"
    )
    grid = torch.stack([a, b], -1)
    values = 0.5 * ((grid @ x.T - y) ** 2).mean(-1)
    ax.contour(a, b, values.log(), levels=25, cmap="Greys", linewidths=0.6)
    ts = torch.linspace(0, 60, 600, dtype=F64)
    flow = theta_star + (torch.linalg.matrix_exp(-H * ts[:, None, None]) @ (theta0 - theta_star))
    ax.plot(flow[:, 0], flow[:, 1], "k-", lw=2, label="exact flow θ(t)")
    for frac, color in ((0.25, "C0"), (0.9, "C1"), (1.03, "C3")):
        eta = frac * lr_max
        pts = [theta0]
        for _ in range(30):
            pts.append(pts[-1] - eta * grad(pts[-1]))
        pts = torch.stack(pts)
        keep = (pts - theta_star).norm(dim=1) < 6
        ax.plot(pts[keep, 0], pts[keep, 1], "o-", ms=3, lw=0.8, color=color, label=f"GD η = {frac:.2f}·2/λmax")
        if frac == 0.25:  # the same times on the exact flow: θ(kη)
            tk = eta * torch.arange(31, dtype=F64)
            exact = theta_star + (torch.linalg.matrix_exp(-H * tk[:, None, None]) @ (theta0 - theta_star))
            ax.plot(exact[:, 0], exact[:, 1], "x", color="k", ms=5, label="θ(kη), η = 0.25·2/λmax")
    ax.plot(*theta_star, "k*", ms=12)
    ax.set_xlim(-1.0, 3.5)
    ax.set_ylim(-4.5, 1.0)
    ax.set_xlabel("θ₁")
    ax.set_ylabel("θ₂")
    ax.set_title("gradient descent = Euler on the gradient flow")
    ax.legend(fontsize=7, loc="lower left")
    # (2) error against iterations on both sides of the threshold.
    ax = axes[1]
    for frac, color in ((0.5, "C0"), (0.98, "C1"), (1.02, "C3")):
        eta = frac * lr_max
        th, errs = theta0.clone(), []
        for _ in range(400):
            th = th - eta * grad(th)
            errs.append(float((th - theta_star).norm()))
        ax.semilogy(errs, color=color, label=f"η = {frac:.2f}·2/λmax")
    ax.set_xlabel("iteration k")
    ax.set_ylabel("‖θ_k − θ*‖")
    ax.set_title("converges below 2/λmax, diverges above")
    ax.legend(fontsize=8)
    # (3) error after 3000 steps against the learning rate.
    ax = axes[2]
    ax.semilogy((lrs / lr_max).numpy(), err.clamp(1e-17, 1e30).numpy(), ".", ms=3)
    ax.axvline(1.0, color="k", ls="--", label=f"predicted 2/λmax = {lr_max:.4f}")
    ax.axvline(lr_obs / lr_max, color="C3", ls=":", label=f"observed {lr_obs:.4f}")
    ax.set_xlabel("η / (2/λmax)")
    ax.set_ylabel("‖θ_3000 − θ*‖")
    ax.set_title("divergence threshold: prediction vs observation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
