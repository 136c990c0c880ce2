"""Continuous normalizing flows on two 2-D densities: two moons and eight Gaussians.

A CNF (FFJORD, exact trace: cheap in 2-D) with the RNODE regularizers (kinetic energy and Jacobian norm, which
keep the learned dynamics cheap to solve) is fitted to each density by maximum likelihood. The script prints
the test negative log-likelihood, the number of vector-field evaluations per solve, and the integral of the
learned density over a grid (a check that the log-density is a normalized density), and plots data, learned
density and model samples side by side.

    python examples/nn_cnf_2d.py --out docs/img/nn_cnf_2d.png           # about 4 minutes on 2 cores
    python examples/nn_cnf_2d.py --quick --out /tmp/nn_cnf_2d.png        # under a minute
"""

from __future__ import annotations

import argparse
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import make_moons
from tqdm import tqdm

from dxdt.nn.cnf import CNF

LIMIT = 4.0  # the plotted and integrated square is [-LIMIT, LIMIT]²


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - [0.5, 0.25]) * [2.0, 3.0]  # centred, roughly unit spread in both directions


EIGHT = 2.5 * np.stack([np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], 1)
SIGMA = 0.3


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    return EIGHT[rng.integers(0, 8, n)] + SIGMA * rng.standard_normal((n, 2))


def eight_gaussians_log_prob(x: np.ndarray) -> np.ndarray:
    """The true log-density: a reference for the model's test NLL."""
    sq = ((x[:, None, :] - EIGHT[None]) ** 2).sum(-1) / (2 * SIGMA**2)
    return np.logaddexp.reduce(-sq, axis=1) - math.log(8 * 2 * math.pi * SIGMA**2)


DATASETS = {"two moons": (two_moons, None), "eight Gaussians": (eight_gaussians, eight_gaussians_log_prob)}


def train(name: str, sampler, true_log_prob, args) -> dict:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cnf = CNF(dim=2, hidden=args.hidden, depth=3, rtol=args.tol, atol=args.tol)
    opt = torch.optim.Adam(cnf.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters, eta_min=args.lr / 20)
    bar = tqdm(range(args.iters), desc=name, mininterval=2.0)
    t0 = time.perf_counter()
    for _ in bar:
        x = torch.tensor(sampler(args.batch, rng), dtype=torch.float32)
        opt.zero_grad()
        out = cnf(x, kinetic=True, jacobian=True)
        reg = out.regularization
        loss = -out.log_prob.mean() + args.reg * (reg.kinetic.mean() + reg.jacobian.mean())
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(nll=f"{-out.log_prob.mean().item():.3f}", nfe=out.n_f_evals)
    train_time = time.perf_counter() - t0

    # Evaluation at a tighter tolerance than training: the likelihood, not the optimisation, is measured.
    test = torch.tensor(sampler(5000, np.random.default_rng(1)), dtype=torch.float32)
    g = torch.linspace(-LIMIT, LIMIT, args.grid)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        out = cnf(test, rtol=1e-5, atol=1e-5)
        density = cnf.log_prob(grid, rtol=1e-5, atol=1e-5).exp().reshape(args.grid, args.grid)
        samples = cnf.sample(5000, generator=torch.Generator().manual_seed(2), rtol=1e-5, atol=1e-5)
    cell = float(g[1] - g[0]) ** 2
    result = dict(
        name=name,
        nll=-out.log_prob.mean().item(),
        nfe=out.n_f_evals,
        integral=float(density.sum() * cell),
        train_time=train_time,
        data=test.numpy(),
        density=density.numpy(),
        samples=samples.numpy(),
    )
    reference = "" if true_log_prob is None else f" (true density: {-true_log_prob(result['data']).mean():.3f})"
    print(
        f"{name}: test NLL {result['nll']:.3f} nats{reference}, forward NFE {result['nfe']}, "
        f"grid integral of the density over [-{LIMIT:g}, {LIMIT:g}]² = {result['integral']:.4f}, "
        f"training {train_time:.0f} s ({args.iters} iterations)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="nn_cnf_2d.png", help="where to write the plot")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer iterations, coarser grid)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per density")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--reg", type=float, default=0.01, help="weight of each RNODE regularizer")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the solver during training")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    args = parser.parse_args()
    args.iters = args.iters or (150 if args.quick else 500)
    args.grid = 100 if args.quick else 200
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    results = [train(name, sampler, true_log_prob, args) for name, (sampler, true_log_prob) in DATASETS.items()]

    fig, axes = plt.subplots(len(results), 3, figsize=(10.5, 3.6 * len(results)))
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    for row, r in zip(axes, results):
        row[0].hist2d(*r["data"].T, bins=100, range=[[-LIMIT, LIMIT]] * 2, cmap="viridis")
        row[0].set_title(f"{r['name']}: data")
        row[1].imshow(r["density"], origin="lower", extent=extent, cmap="viridis")
        row[1].set_title(f"learned density (NLL {r['nll']:.2f}, ∫ = {r['integral']:.3f})")
        row[2].hist2d(*r["samples"].T, bins=100, range=[[-LIMIT, LIMIT]] * 2, cmap="viridis")
        row[2].set_title(f"model samples (NFE {r['nfe']})")
        for ax in row:
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
