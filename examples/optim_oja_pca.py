"""PCA as a flow: Sanger's/Oja's rule converges to torch.linalg.eigh's leading components.

Oja's learning rule Δw = η y (x − y w), y = wᵀx, averaged over the data is the ODE w' = C w − (wᵀCw) w,
whose stable equilibria are ± the top eigenvector of the covariance C; Sanger's rule extends it to k ordered
components, W' = C W − W triu(WᵀCW). The script integrates that flow with dxdt.solve (dxdt.optim.oja_pca),
compares the result with torch.linalg.eigh, and runs the online (one sample at a time) rule with decaying
steps, a stochastic approximation of the same ODE, next to it.

    python examples/optim_oja_pca.py --out optim_oja_pca.png
"""

from __future__ import annotations

import argparse

import torch

import dxdt
from dxdt.optim import oja_pca, sanger_field

F64 = torch.float64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="optim_oja_pca.png", help="where to write the plot")
    parser.add_argument("--k", type=int, default=3, help="number of components")
    args = parser.parse_args()
    torch.set_num_threads(1)
    k = args.k

    # Data: 5000 samples in 10 dimensions with a decaying spectrum.
    g = torch.Generator().manual_seed(0)
    n, m = 10, 5000
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    scales = torch.tensor([3.0, 2.2, 1.6, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2], dtype=F64)
    data = torch.randn(m, n, generator=g, dtype=F64) * scales @ q.T
    data = data - data.mean(0)
    C = data.T @ data / m
    evals, evecs = torch.linalg.eigh(C)
    top, top_vals = evecs[:, -k:].flip(1), evals.flip(0)[:k]

    res = oja_pca(C, k, generator=torch.Generator().manual_seed(1))
    signs = torch.sign((res.components * top).sum(0))
    err = float((res.components * signs - top).abs().max())
    print(f"Sanger flow to t = {res.t:.3g}: ‖W'‖ = {res.residual:.1e}; max |w_i − v_i| = {err:.1e}")
    print(f"  Rayleigh quotients {res.eigenvalues.tolist()}\n  eigh eigenvalues   {top_vals.tolist()}")

    # The trajectory of the flow from the same start, for the plot.
    W0 = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(1), dtype=F64))[0]
    ts = torch.linspace(0, 12, 300, dtype=F64)
    sol = dxdt.solve(lambda t, W: sanger_field(C, W), W0[None], 0.0, 12.0, saveat=ts, rtol=1e-9, atol=1e-11)
    flow_cos = (sol.ys[0] * top).sum(1).abs() / sol.ys[0].norm(dim=1)  # (T, k): the angle only

    # Online Sanger rule: one sample per step, step size 1/(t0 + s).
    W = W0.clone()
    online_steps, online_cos = [], []
    perm = torch.randint(0, m, (40000,), generator=g)
    for s, i in enumerate(perm.tolist()):
        xs = data[i : i + 1].T  # (n, 1)
        yv = W.T @ xs  # (k, 1)
        W = W + (1.0 / (200 + s)) * (xs @ yv.T - W @ torch.triu(yv @ yv.T))
        if s % 200 == 0:
            online_steps.append(s)
            online_cos.append((W * top).sum(0).abs() / W.norm(dim=0))
    online_cos = torch.stack(online_cos)
    print(f"online Sanger rule after {perm.numel()} samples: |cos| with eigh's components {online_cos[-1].tolist()}")

    from dxdt.plot import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i in range(k):
        axes[0].semilogy(
            ts, (1 - flow_cos[:, i]).clamp_min(1e-16), label=f"component {i + 1} (λ = {float(top_vals[i]):.2f})"
        )
    axes[0].set_xlabel("flow time t")
    axes[0].set_ylabel("1 − |cos(w_i, v_i)|")
    axes[0].set_title("Sanger's flow (dxdt.solve) vs torch.linalg.eigh")
    axes[0].legend(fontsize=8)
    for i in range(k):
        axes[1].semilogy(online_steps, (1 - online_cos[:, i]).clamp_min(1e-16), label=f"component {i + 1}")
    axes[1].set_xlabel("samples seen")
    axes[1].set_ylabel("1 − |cos(w_i, v_i)|")
    axes[1].set_title("online Sanger rule, step 1/(200 + s)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
