"""A batch of Van der Pol oscillators, each with its own step sizes.

    x'' - μ (1 - x²) x' + x = 0,   i.e.   y = (x, v):  x' = v,  v' = μ (1 - x²) v - x

The larger μ, the stiffer the oscillator: slow drifts along the limit cycle alternate with fast jumps that
need small steps. dxdt solves the whole batch at once, but every sample picks its own step sizes
(``batch_mode="per_sample"``, the default), so the gentle oscillators are not dragged down to the step
size of the stiffest one. This script prints per-sample statistics, checks the final states against
scipy, compares the cost with one shared step size (``batch_mode="joint"``, torchdiffeq's semantics),
and draws the phase portraits.

    python examples/van_der_pol_batch.py --out van_der_pol.png
"""

from __future__ import annotations

import argparse
import time

import torch

import dxdt

T0, T1 = 0.0, 20.0
RTOL = ATOL = 1e-8
N_PLOT = 400  # save times for x(t)
# The phase portrait needs a finer grid: for large μ the jumps between the branches last only ~1/μ.
N_PHASE = 2000


def van_der_pol(t: torch.Tensor, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``y``: ``(B, 2)`` states ``(x, v)``; ``mu``: ``(B,)``, one damping parameter per sample."""
    x, v = y[:, 0], y[:, 1]
    return torch.stack([v, mu * (1 - x**2) * v - x], dim=1)


def solve(y0: torch.Tensor, mu: torch.Tensor, batch_mode: str) -> tuple[dxdt.Solution, float]:
    start = time.perf_counter()
    sol = dxdt.solve(
        van_der_pol,
        y0,
        T0,
        T1,
        args=mu,
        solver="tsit5",
        rtol=RTOL,
        atol=ATOL,
        # Dense output: the solver steps where accuracy needs it; any time can be evaluated afterwards.
        saveat=dxdt.SaveAt(dense=True),
        batch_mode=batch_mode,
        throw=False,  # report failures (e.g. MAX_STEPS for a very large --mu-max) in the table instead
    )
    return sol, time.perf_counter() - start


def print_table(sol: dxdt.Solution, mu: torch.Tensor, rows: int = 9) -> None:
    batch = mu.shape[0]
    shown = sorted(set(torch.linspace(0, batch - 1, min(rows, batch)).round().long().tolist()))
    st = sol.stats
    print(f"{'sample':>6} {'μ':>6} {'steps':>6} {'accepted':>8} {'rejected':>8} {'f evals':>8}  status")
    for b in shown:
        status = dxdt.Status(int(sol.status[b])).name
        print(
            f"{b:>6} {mu[b].item():>6.2f} {int(st.n_steps[b]):>6} {int(st.n_accepted[b]):>8} "
            f"{int(st.n_rejected[b]):>8} {int(st.n_f_evals[b]):>8}  {status}"
        )
    if len(shown) < batch:
        print(f"{'...':>6}  ({batch - len(shown)} more samples not shown)")


def scipy_max_error(y0: torch.Tensor, mu: torch.Tensor, y_final: torch.Tensor) -> float | None:
    """Largest deviation of ``y_final`` from scipy's DOP853 at rtol = atol = 1e-12, or None without scipy.

    scipy solves the whole batch as one stacked system (one step size for all: slow per step, but one
    Python loop instead of one per sample), which at this tolerance is an accurate reference for every sample.
    """
    try:
        import numpy as np
        from scipy.integrate import solve_ivp
    except ImportError:
        return None
    m = mu.numpy()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        x, v = y[0::2], y[1::2]
        return np.stack([v, m * (1 - x**2) * v - x], axis=1).reshape(-1)

    ref = solve_ivp(rhs, (T0, T1), y0.numpy().reshape(-1), method="DOP853", rtol=1e-12, atol=1e-12)
    y_ref = torch.as_tensor(ref.y[:, -1].reshape(-1, 2), dtype=y_final.dtype)
    return (y_final - y_ref).abs().max().item() if y_final.numel() else 0.0


def plot(sol: dxdt.Solution, mu: torch.Tensor, out: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the figure needs matplotlib: pip install dxdt[plot]") from None
    matplotlib.use("Agg")  # a script that only writes a file never needs a window
    import matplotlib.pyplot as plt

    from dxdt.plot import phase_portrait, plot_solution

    ts = torch.linspace(T0, T1, N_PLOT, dtype=torch.float64)
    ts_phase = torch.linspace(T0, T1, N_PHASE, dtype=torch.float64)
    fig, (ax_phase, ax_time) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    phase_portrait(sol, 0, 1, ax=ax_phase, color_by=mu, ts=ts_phase, colorbar_label="μ", linewidth=0.7)
    ax_phase.set(xlabel="x", ylabel="v = dx/dt", title=f"Phase portraits of {mu.shape[0]} oscillators")
    batch = mu.shape[0]
    few = sorted(set(torch.linspace(0, batch - 1, min(4, batch)).round().long().tolist()))
    plot_solution(sol, components=0, ax=ax_time, samples=few, ts=ts, labels=[f"μ = {mu[b].item():.1f}" for b in few])
    ax_time.set(ylabel="x(t)", title=f"x(t) for a few μ (dense output at {N_PLOT} times)", ylim=(-2.4, 3.0))
    ax_time.legend(loc="upper center", ncol=len(few), fontsize="small", frameon=False)
    fig.suptitle("Van der Pol, tsit5, per-sample adaptive steps (rtol = atol = 1e-8)")
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="van_der_pol.png", help="where to write the figure (PNG)")
    parser.add_argument("--batch", type=int, default=64, help="number of oscillators")
    parser.add_argument("--mu-max", type=float, default=8.0, help="largest μ (the smallest is 0.2)")
    opts = parser.parse_args()
    if opts.batch < 1 or not opts.mu_max > 0.2:
        parser.error("need --batch >= 1 and --mu-max > 0.2")

    mu = torch.linspace(0.2, opts.mu_max, opts.batch, dtype=torch.float64)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(opts.batch, 1)

    # Warm up both modes on a short interval so that the timings below compare the solves, not first calls.
    for mode in ("per_sample", "joint"):
        dxdt.solve(van_der_pol, y0, T0, 0.1, args=mu, rtol=RTOL, atol=ATOL, batch_mode=mode)
    sol, seconds = solve(y0, mu, "per_sample")
    st = sol.stats
    print(
        f"Van der Pol: {opts.batch} oscillators, μ in [0.2, {opts.mu_max:g}], y0 = (2, 0), t in [{T0:g}, {T1:g}]; "
        f"tsit5, rtol = atol = {RTOL:g}, per-sample steps"
    )
    print()
    print_table(sol, mu)
    if not bool(sol.success.all()):
        print(dxdt.SolveError(sol))  # the message SolveError would raise with: what failed and what to do
    print()
    steps = st.n_steps.double()
    print(
        f"steps per sample: mean {steps.mean():.1f}, min {int(steps.min())}, max {int(steps.max())}; "
        f"loop iterations {st.n_iterations}; f evals (all samples) {int(st.n_f_evals.sum())}"
    )
    if opts.batch > 1:
        first, last = int(st.n_steps[0]), int(st.n_steps[-1])
        corr = torch.corrcoef(torch.stack([mu, steps]))[0, 1].item()
        print(
            f"stiffer oscillators need more steps: μ = {mu[0]:.1f} takes {first}, μ = {mu[-1]:.1f} takes {last} "
            f"({last / first:.1f}×); correlation of steps with μ: {corr:.2f}"
        )
        if int(steps.argmax()) < opts.batch - 1:
            print(
                "  (the count levels off for large μ: the period grows like 1.6 μ, so fewer of the fast jumps, "
                f"which need the small steps, fit into [{T0:g}, {T1:g}])"
            )

    ok = sol.success  # failed samples stopped early: nothing to compare at t1
    err = scipy_max_error(y0[ok], mu[ok], sol.y_final[ok])
    if err is None:
        print("scipy not installed: skipping the comparison with solve_ivp")
    elif bool(ok.any()):
        print(f"max |y(20) - scipy DOP853 (rtol = atol = 1e-12)| over the successful samples: {err:.2e}")

    joint, joint_seconds = solve(y0, mu, "joint")
    if not bool(joint.success.all()):
        print(f"joint mode: {dxdt.Status(int(joint.status[0])).message}")
    # In joint mode one f call evaluates every sample: count sample-evaluations to compare like with like.
    evals_per_sample = int(st.n_f_evals.sum())
    evals_joint = int(joint.stats.n_f_evals[0]) * opts.batch
    print()
    print(f"time: per-sample {seconds:.2f} s ({st.n_iterations} loop iterations)")
    print(
        f"      joint      {joint_seconds:.2f} s ({joint.stats.n_iterations} loop iterations, one step size for all, "
        f"{int(joint.stats.n_steps[0])} steps)"
    )
    print(
        f"f evaluations (summed over samples): per-sample {evals_per_sample}, joint {evals_joint}: one shared step "
        f"size costs {evals_joint / evals_per_sample:.2f}× the evaluations"
    )
    print(
        f"  (in joint mode every oscillator takes every step, and the shared step must suit whichever oscillator "
        f"is jumping at that moment: {int(joint.stats.n_steps[0])} steps; alone, each needs at most "
        f"{int(st.n_steps.max())})"
    )

    plot(sol, mu, opts.out)
    print(f"\nwrote {opts.out}")


if __name__ == "__main__":
    main()
