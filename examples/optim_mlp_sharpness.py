"""Edge of stability: the sharpness of a small MLP trained by full-batch gradient descent rises to 2/η.

Gradient descent with learning rate η is explicit Euler on the gradient flow, stable near a minimum only
while the sharpness λmax(∇²L) < 2/η. Training a network, the sharpness grows ("progressive sharpening")
until it reaches 2/η, then hovers there while the loss keeps falling, non-monotonically (Cohen et al.,
ICLR 2021). This script trains a tanh MLP on scikit-learn's 8×8 digits (bundled with scikit-learn: no
download; without scikit-learn installed it falls back to a synthetic 64-feature, 10-class data set and
says so) with squared loss, at two learning rates, and tracks λmax every few steps by Lanczos on
Hessian-vector products (``dxdt.optim.SharpnessTracker``).

    python examples/optim_mlp_sharpness.py --out optim_mlp_sharpness.png
"""

from __future__ import annotations

import argparse
import time

import torch

from dxdt.optim import SharpnessTracker


def load_data(n_max: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn is not installed (pip install dxdt[examples]): using a synthetic data set instead")
        g = torch.Generator().manual_seed(0)
        centers = torch.randn(10, 64, generator=g)
        labels = torch.randint(0, 10, (n_max,), generator=g)
        x = centers[labels] + 1.5 * torch.randn(n_max, 64, generator=g)
        return x, labels, "synthetic 64-feature, 10-class data"
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)[:n_max]
    labels = torch.tensor(digits.target)[:n_max]
    return x, labels, "scikit-learn digits (8×8)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="optim_mlp_sharpness.png", help="where to write the plot")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=1000, help="training examples (full batch)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    x, labels, name = load_data(args.n)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.nn.functional.one_hot(labels, 10).float()
    print(f"data: {name}, {x.shape[0]} examples")

    from dxdt.plot import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.5), sharex=True)
    for col, lr in enumerate((0.2, 0.4)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)
        )
        params = list(model.parameters())
        tracker = SharpnessTracker(params, lr=lr, every=25, tol=1e-3, max_iter=20)

        def loss_fn(model: torch.nn.Module = model) -> torch.Tensor:
            return 0.5 * ((model(x) - y) ** 2).sum(1).mean()

        opt = torch.optim.SGD(params, lr=lr)
        start = time.perf_counter()
        for step in range(args.steps + 1):
            tracker.update(step, loss_fn)
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        acc = float((model(x).argmax(1) == labels).float().mean())
        sharp = torch.tensor(tracker.sharpness)
        late = sharp[len(sharp) // 2 :]
        print(
            f"lr = {lr}: 2/lr = {2 / lr:.1f}; sharpness from {float(sharp[0]):.2f} to max {float(sharp.max()):.2f}, "
            f"second half {float(late.min()):.2f}..{float(late.max()):.2f}; final loss {tracker.losses[-1]:.4f}, "
            f"train accuracy {acc:.3f}; {time.perf_counter() - start:.0f}s, {tracker.n_hvp} HVPs for tracking"
        )
        tracker.plot(axes=(axes[0, col], axes[1, col]), title=f"full-batch GD, η = {lr}")
    fig.suptitle(f"MLP on {name}: sharpness λmax rises to 2/η (edge of stability)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
