"""Gradient strategies side by side: ``dxdt.solve(gradient=...)`` against torchdiffeq (and torchode).

(a) Memory and time against the number of steps: the neural ODE of ``bench_neural_ode`` (MLP 2-64-64-2, batch
    512, float32, dxdt in joint mode) with fixed-step rk4 over t ∈ [0, 1], so that every library takes exactly
    the same steps. Each (library, strategy, steps) runs in fresh subprocesses; its memory is the peak resident
    set size during forward + backward minus the resident set size just before (``/proc/self/clear_refs``
    resets the peak), measured twice: with glibc's default malloc, and with every allocation of 16 KiB or more
    in its own ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), which returns freed tensors to the system at once, so
    that the peak is that of the live tensors and graph. Times: in this process, interleaved.
(b) The neural-ODE training step of ``bench_neural_ode`` (dopri5, rtol = 1e-3, atol = 1e-5): each dxdt strategy
    against torchdiffeq's ``odeint`` and ``odeint_adjoint`` (default options, and with the seminorm), interleaved.
(c) Forward sensitivities against reverse mode on mechanistic models with few parameters (Lotka–Volterra with 4
    parameters, SIR with 2, both through ``args``; a batch of 8, float64): time of loss + gradient and agreement
    of the gradients with a tight reference.

Run: ``python benchmarks/bench_gradients.py [--quick] [--only memory,training,mechanistic]``. The full run writes
``benchmarks/results_gradients.md`` and ``benchmarks/gradients_memory.png``; ``--only`` replaces just those
sections of an existing results file; ``--quick`` (tiny sizes, a smoke test) prints only, unless
``--out``/``--plot`` are given.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMEXPR_NUM_THREADS", "1")

import argparse
import ctypes
import datetime
import gc
import json
import math
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torchdiffeq
import torchode
from bench_neural_ode import ATOL, BATCH, RTOL, flat_grad, make_problem, reference_gradient, rel
from common import (
    Timing,
    fmt_ratio,
    fmt_sci,
    fmt_time,
    machine_info,
    markdown_table,
    single_thread,
    time_interleaved,
    timing_cells,
    versions,
)
from torch import nn

import dxdt
from dxdt.adjoints import BacksolveAdjoint

# CountingMLP's step callbacks are for torchdiffeq's adaptive solvers; its fixed-grid rk4 warns that it ignores them.
warnings.filterwarnings("ignore", message="Solver 'rk4' does not support callbacks")

HERE = Path(__file__).resolve().parent
Record = dict[str, Any]


class CountingMLP(nn.Module):
    """The MLP as ``f(t, y)``, counting its calls (one call = one batched evaluation).

    An ``nn.Module``, so that every library finds the parameters it differentiates (dxdt's adjoints and
    torchdiffeq's ``odeint_adjoint`` look for them on ``f``). torchdiffeq also reports its accepted and rejected
    steps through the ``callback_*`` hooks it looks up on ``f``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.steps = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)

    def callback_accept_step(self, t0, y0, dt) -> None:
        self.steps += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.steps += 1


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a - b) ** 2)


# ---------------------------------------------------------------------------------------------------- (a) memory

MEMORY_SPAN = 1.0
# The "live" processes start with glibc's mmap threshold fixed at 16 KiB: every larger allocation (the MLP's
# activations and most of the graph) gets its own mapping, returned to the system when freed. Set in the
# environment, not by mallopt() later: a heap grown before keeps its scattered free chunks, and refilling
# them would count pages that are not new.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 1024)}

# name -> solve(field, y0, n_steps) -> (y(t1), steps taken)
MemorySolve = Callable[[CountingMLP, torch.Tensor, int], tuple[torch.Tensor, int]]


def memory_dxdt(gradient: str) -> MemorySolve:
    def solve(field, y0, n):
        sol = dxdt.solve(
            field, y0, 0.0, MEMORY_SPAN, solver="rk4", dt0=MEMORY_SPAN / n, batch_mode="joint", gradient=gradient
        )
        return sol.ys[:, -1], int(sol.stats.n_steps.max())

    return solve


def memory_torchdiffeq(adjoint: bool) -> MemorySolve:
    def solve(field, y0, n):
        t = torch.tensor([0.0, MEMORY_SPAN])
        options = dict(step_size=MEMORY_SPAN / n)  # n a power of 2: exactly n steps
        if adjoint:  # the backward pass takes the same fixed steps (adjoint_options default to options)
            ys = torchdiffeq.odeint_adjoint(field, y0, t, method="rk4", options=options, adjoint_method="rk4")
        else:
            ys = torchdiffeq.odeint(field, y0, t, method="rk4", options=options)
        return ys[-1], n

    return solve


def memory_torchode(field, y0, n):
    """torchode has no rk4: dopri5 with constant steps (6 f evaluations per step, FSAL, against rk4's 4)."""
    term = torchode.ODETerm(field)
    method = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), torchode.FixedStepController())
    t0 = torch.zeros(BATCH, dtype=torch.float64)
    problem = torchode.InitialValueProblem(y0, t0, t0 + MEMORY_SPAN)
    sol = method.solve(problem, term, dt0=torch.full((BATCH,), MEMORY_SPAN / n, dtype=torch.float64))
    return sol.ys[:, -1], int(sol.stats["n_steps"].max())


MEMORY_METHODS: dict[str, MemorySolve] = {
    "dxdt autodiff": memory_dxdt("autodiff"),
    "dxdt checkpoint": memory_dxdt("checkpoint"),
    "dxdt backsolve": memory_dxdt("backsolve"),
    "dxdt interpolate": memory_dxdt("interpolate"),
    "torchdiffeq odeint": memory_torchdiffeq(adjoint=False),
    "torchdiffeq odeint_adjoint": memory_torchdiffeq(adjoint=True),
    "torchode dopri5, constant steps (AutoDiffAdjoint)": memory_torchode,
}
MEMORY_BASELINE = "dxdt autodiff"
MEMORY_STYLES = {  # plot: (colour, marker, line)
    "dxdt autodiff": ("C0", "o", "-"),
    "dxdt checkpoint": ("C1", "s", "-"),
    "dxdt backsolve": ("C2", "^", "-"),
    "dxdt interpolate": ("C3", "v", "-"),
    "torchdiffeq odeint": ("C0", "o", ":"),
    "torchdiffeq odeint_adjoint": ("C2", "^", ":"),
    "torchode dopri5, constant steps (AutoDiffAdjoint)": ("C4", "x", "--"),
}


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M).group(1)) / 1024


def _peak_increase(fn: Callable[[], Any]) -> tuple[float, Any]:
    """MiB by which ``fn()`` raised the resident set size above its level just before, and ``fn()``."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the system: the baseline is what is live
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM, the peak RSS (Linux >= 4.0)
        fh.write("5")
    out = fn()
    return _proc_status_mib("VmHWM") - before, out


def neural_ode_step(method: str, n: int, net: nn.Module, y0: torch.Tensor, target: torch.Tensor):
    """One measurement of (a): forward solve with ``n`` steps, loss, backward; its counts."""
    field = CountingMLP(net)
    solve = MEMORY_METHODS[method]

    def run() -> Record:
        net.zero_grad(set_to_none=True)
        field.reset()
        y1, steps = solve(field, y0, n)
        calls_fwd = field.calls
        loss = mse(y1, target)
        loss.backward()
        return dict(loss=loss.item(), steps=steps, calls_fwd=calls_fwd, calls_bwd=field.calls - calls_fwd)

    return run


def memory_worker(method: str, n: int) -> Record:
    """One (method, steps) in a fresh process: the peak memory of forward + backward, and its counts."""
    single_thread()
    net, y0, target = make_problem()
    neural_ode_step(method, 4, net, y0, target)()  # warm-up: lazy imports, one-off allocations, mmap threshold
    memory, rec = _peak_increase(neural_ode_step(method, n, net, y0, target))
    return dict(rec, memory=memory)


def run_worker(spec: dict[str, Any], live: bool, timeout: float = 600) -> Record:
    """Run :func:`memory_worker` in a fresh interpreter: nothing allocated before can hide in its peak."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = dict(os.environ, **LIVE_ENV) if live else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Growth exponent between the last two sizes: 1 linear, 0 flat."""
    return math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2]) if ys[-1] > 0 and ys[-2] > 0 else float("nan")


def memory_section(quick: bool, plot: Path | None) -> str:
    sizes = [4, 16, 64] if quick else [8, 32, 128, 512]
    names = list(MEMORY_METHODS)
    results: dict[tuple[str, int], Record] = {}
    # Memory: two fresh processes per (method, n), live and default malloc, two processes at a time (each
    # process's peak is its own).
    started = time.perf_counter()
    specs = [(name, n, kind) for n in reversed(sizes) for name in names for kind in ("live", "rss")]  # longest first
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            (name, n, kind): pool.submit(run_worker, dict(method=name, steps=n), live=kind == "live")
            for name, n, kind in specs
        }
        for (name, n, kind), future in futures.items():
            rec = future.result()
            merged = results.setdefault((name, n), {})
            if "error" in rec:
                merged["error"] = f"{kind}: {rec['error']}"
            elif "error" not in merged:
                if merged and merged["calls_fwd"] != rec["calls_fwd"]:
                    merged["error"] = "f calls differ between the two memory processes"
                merged.update({k: v for k, v in rec.items() if k != "memory"}, **{kind: rec["memory"]})
            print(f"  memory {name} n={n} {kind}: {_short(rec)}", file=sys.stderr, flush=True)
    wall_memory = time.perf_counter() - started
    # Time: in this process, the methods interleaved at each n (after one warm-up of every method at 4 steps).
    started = time.perf_counter()
    single_thread()
    net, y0, target = make_problem()
    for name in names:
        neural_ode_step(name, 4, net, y0, target)()
    timings: dict[tuple[str, int], Timing] = {}
    for n in sizes:
        ok = [name for name in names if "error" not in results[name, n]]  # what failed there fails here too
        runners = {name: _with_grad(neural_ode_step(name, n, net, y0, target), net) for name in ok}
        times, last = time_interleaved(runners, repeats=2 if quick else 3, warmup=0)
        for name in ok:
            timings[name, n] = times[name]
            results[name, n]["grad"] = last[name]["grad"]
            if last[name]["calls_fwd"] != results[name, n]["calls_fwd"]:  # the same work in both processes
                results[name, n]["error"] = "f calls differ between the timing and the memory process"
        print(f"  timed n={n}", file=sys.stderr, flush=True)
    wall_time = time.perf_counter() - started

    def cell(name: str, n: int, key: str, fmt: Callable[[Any], str]) -> str:
        rec = results[name, n]
        return "error" if "error" in rec else fmt(rec[key])

    def mib(x: float) -> str:
        return f"{x:.1f}" if x < 100 else f"{x:.0f}"

    n_max = sizes[-1]
    base = results[MEMORY_BASELINE, n_max]
    mem_rows, time_rows = [], []
    for name in names:
        ok = [n for n in sizes if "error" not in results[name, n]]
        live = [results[name, n]["live"] for n in ok]
        rss = [results[name, n]["rss"] for n in ok]
        full = len(ok) == len(sizes) and "error" not in base
        per_step = (live[-1] - live[-2]) / (ok[-1] - ok[-2]) * 1024 if full else float("nan")
        mem_rows.append(
            [name]
            + [cell(name, n, "live", mib) for n in sizes]
            + [
                f"{loglog_slope(ok, live):.2f}" if full else "—",
                f"{per_step:.0f}" if full else "—",
                fmt_ratio(live[-1] / base["live"]) if full else "—",
            ]
            + [cell(name, n, "rss", mib) for n in sizes]
            + [f"{loglog_slope(ok, rss):.2f}" if full else "—"]
        )
        rec = results[name, n_max]
        errs = "; ".join(f"n={n}: {results[name, n]['error']}" for n in sizes if "error" in results[name, n])
        median = [fmt_time(timings[name, n].median) if (name, n) in timings else "error" for n in sizes]
        if "error" in rec or "error" in base:
            time_rows.append([name] + median + ["—"] * 6 + [errs])
            continue
        grad_diff = rel(rec["grad"], base["grad"])
        time_rows.append(
            [
                name,
                *median,
                f"{timings[name, n_max].spread:.0%}",
                fmt_ratio(timings[name, n_max].median / timings[MEMORY_BASELINE, n_max].median),
                rec["steps"],
                rec["calls_fwd"],
                rec["calls_bwd"],
                "0 (identical)" if grad_diff == 0 else fmt_sci(grad_diff),
                errs,
            ]
        )
    size_cols = [f"n = {n}" for n in sizes]
    out = [
        "## (a) Memory and time against the number of steps",
        "",
        f"Neural ODE (MLP 2-64-64-2, tanh), batch {BATCH}, float32, fixed-step rk4 over t ∈ [0, {MEMORY_SPAN:g}] "
        f"with n steps (dt = {MEMORY_SPAN:g}/n; torchode: dopri5 with constant steps, as it has no rk4); dxdt in "
        "joint mode. One measurement = forward solve + MSE loss of y(t1) + `loss.backward()`. Memory: each "
        "(method, n) runs in two fresh subprocesses, each measuring once after a 4-step warm-up: the peak resident "
        "set size (VmHWM, reset through `/proc/self/clear_refs`) minus the resident set size just before the "
        "measured call (after `gc.collect()` and `malloc_trim(0)`), in MiB. *live*: a process started with "
        "`MALLOC_MMAP_THRESHOLD_=16384`, so that glibc maps every allocation of 16 KiB or more on its own and "
        "returns it when freed: the peak of the live tensors and autograd graph (allocations under 16 KiB, such "
        "as the 4 KiB (512, 2) states, still come from the heap); *RSS*: glibc's default malloc, what the process "
        "actually holds, including freed memory the heap cannot return (fragmentation). *slope*: growth exponent "
        "between the two largest n (1 linear, 0 flat); *KiB/step*: growth per added step between them. "
        f"{2 * len(results)} subprocesses (two at a time), {wall_memory:.0f} s.",
        "",
        markdown_table(
            ["method"]
            + [f"live, {c}" for c in size_cols]
            + ["live slope", "live KiB/step", f"live vs {MEMORY_BASELINE} (n = {n_max})"]
            + [f"RSS, {c}" for c in size_cols]
            + ["RSS slope"],
            mem_rows,
        ),
        "",
        "Wall time of forward + backward, in the parent process, all methods interleaved at each n "
        f"({len(timings[MEMORY_BASELINE, n_max].times)} repeats, median; {wall_time:.0f} s); f calls at n = "
        f"{n_max} (forward / backward: a backward pass that calls f re-integrates or recomputes), and the "
        f"gradient's relative difference ‖g − g_ref‖/‖g_ref‖ from {MEMORY_BASELINE} at n = {n_max} "
        "(torchdiffeq's rk4 is the 3/8 rule, not the classic rk4; the continuous adjoints differ by their "
        "O(dt⁴) discretisation; checkpointing must be identical).",
        "",
        markdown_table(
            ["method"]
            + [f"time, {c}" for c in size_cols]
            + [
                f"IQR/median (n = {n_max})",
                f"time vs {MEMORY_BASELINE} (n = {n_max})",
                "steps",
                "f calls fwd",
                "f calls bwd",
                "grad rel. diff",
                "errors",
            ],
            time_rows,
        ),
    ]
    out += ["", *memory_verdict(results, sizes)]
    if plot is not None:
        plot_memory(results, timings, sizes, plot)
        out += ["", f"![memory and time against steps]({plot.name})"]
    return "\n".join(out)


def _with_grad(run: Callable[[], Record], net: nn.Module) -> Callable[[], Record]:
    def wrapped() -> Record:
        return dict(run(), grad=flat_grad(net))

    return wrapped


def _short(rec: Record) -> str:
    if "error" in rec:
        return "error: " + rec["error"]
    return f"{rec['memory']:.1f} MiB"


def memory_verdict(results: dict[tuple[str, int], Record], sizes: list[int]) -> list[str]:
    """The acceptance checks: checkpoint grows sub-linearly, backsolve stays flat (on live memory)."""

    def live(name: str) -> list[float] | None:
        recs = [results[name, n] for n in sizes]
        return None if any("error" in r for r in recs) else [r["live"] for r in recs]

    lines = ["Checks (live memory):", ""]
    ad, ck, bs = live("dxdt autodiff"), live("dxdt checkpoint"), live("dxdt backsolve")
    if ck is not None:
        slope = loglog_slope(sizes, ck)
        lines.append(
            f"- checkpoint grows sub-linearly: slope {slope:.2f} between n = {sizes[-2]} and {sizes[-1]} "
            f"({'PASS' if slope < 0.9 else 'FAIL'}); {ck[-1]:.1f} MiB at n = {sizes[-1]} against autodiff's "
            f"{ad[-1]:.0f} MiB."
            if ad is not None
            else f"- checkpoint slope {slope:.2f}"
        )
    if bs is not None:
        growth = (bs[-1] - bs[0]) / (sizes[-1] - sizes[0]) * 1024
        flat = bs[-1] < max(4 * bs[0], bs[0] + 8)  # a few MiB of bookkeeping at most over a 64x range
        lines.append(
            f"- backsolve is flat: {bs[0]:.1f} MiB at n = {sizes[0]}, {bs[-1]:.1f} MiB at n = {sizes[-1]} "
            f"({growth:.1f} KiB per added step) ({'PASS' if flat else 'FAIL'})."
        )
    return lines


def plot_memory(
    results: dict[tuple[str, int], Record], timings: dict[tuple[str, int], Timing], sizes: list[int], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    panels = [
        ("live", "peak live memory (MiB)", "live memory: allocations ≥ 16 KiB mmapped"),
        ("rss", "peak RSS increase (MiB)", "resident set size, glibc's default malloc"),
        ("times", "forward + backward (s)", "wall time (median)"),
    ]
    for ax, (key, ylabel, title) in zip(axes, panels):
        for name in MEMORY_METHODS:
            ok = [n for n in sizes if "error" not in results[name, n]]
            if not ok:
                continue
            ok = [n for n in ok if (name, n) in timings]
            ys = [timings[name, n].median if key == "times" else max(results[name, n][key], 0.05) for n in ok]
            colour, marker, line = MEMORY_STYLES[name]
            ax.loglog(ok, ys, color=colour, marker=marker, linestyle=line, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rk4 steps")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Neural ODE (MLP 2-64-64-2, batch {BATCH}, float32): forward + backward against the number of steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- (b) training

TrainSolve = Callable[[CountingMLP, torch.Tensor, float], tuple[torch.Tensor, int]]


def train_dxdt(
    gradient: str | dxdt.adjoints.AbstractGradient,
    controller: str = "pi",
    compile: bool = False,
    batch_mode: str = "joint",
) -> TrainSolve:
    def solve(field, y0, t1):
        # Compiled: the plain network as f (a Python counter in f is a value guard: it would recompile every
        # call); its forward evaluations are counted from the solver's statistics, backward ones not at all.
        f = _PLAIN.setdefault(id(field.net), _Plain(field.net)) if compile else field
        sol = dxdt.solve(
            f, y0, 0.0, t1, solver="dopri5", rtol=RTOL, atol=ATOL, batch_mode=batch_mode, gradient=gradient,
            controller=controller, compile=compile,
        )  # fmt: skip
        if compile:
            field.calls += int(sol.stats.n_f_evals[0])
        return sol.ys[:, -1], int(sol.stats.n_steps.max())

    return solve


class _Plain(nn.Module):
    """The network as ``f(t, y)`` without a counter; one per network, so compiled code is reused."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


_PLAIN: dict[int, _Plain] = {}


def train_torchdiffeq(adjoint: bool, **options: Any) -> TrainSolve:
    def solve(field, y0, t1):
        t = torch.tensor([0.0, t1])
        odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        ys = odeint(field, y0, t, rtol=RTOL, atol=ATOL, method="dopri5", **options)
        return ys[-1], field.steps

    return solve


TRAIN_METHODS: dict[str, TrainSolve] = {
    "dxdt autodiff": train_dxdt("autodiff"),
    "dxdt checkpoint": train_dxdt("checkpoint"),
    "dxdt backsolve (seminorm)": train_dxdt("backsolve"),
    "dxdt backsolve, seminorm=False": train_dxdt(BacksolveAdjoint(seminorm=False)),
    "dxdt interpolate": train_dxdt("interpolate"),
    # compile=True compiles each loop iteration, forward and (explicit methods) backward: the adjoint's
    # vector-Jacobian products are traced into the backward iterations' graphs.
    "dxdt autodiff, compile=True": train_dxdt("autodiff", compile=True),
    "dxdt backsolve (seminorm), compile=True": train_dxdt("backsolve", compile=True),
    # torchdiffeq's controller is an I controller: the like-for-like comparison of work per step.
    "dxdt autodiff, I controller": train_dxdt("autodiff", controller="i"),
    "dxdt backsolve (seminorm), I controller": train_dxdt("backsolve", controller="i"),
    "dxdt autodiff, I controller, compile=True": train_dxdt("autodiff", controller="i", compile=True),
    "dxdt backsolve (seminorm), I controller, compile=True": train_dxdt("backsolve", controller="i", compile=True),
    # Per-sample mode: every sample its own steps; parameter gradients of the adjoint by quadrature.
    "dxdt autodiff, per-sample": train_dxdt("autodiff", batch_mode="per_sample"),
    "dxdt backsolve, per-sample": train_dxdt("backsolve", batch_mode="per_sample"),
    "torchdiffeq odeint": train_torchdiffeq(adjoint=False),
    "torchdiffeq odeint_adjoint": train_torchdiffeq(adjoint=True),
    'torchdiffeq odeint_adjoint, adjoint_options=dict(norm="seminorm")': train_torchdiffeq(
        adjoint=True, adjoint_options=dict(norm="seminorm")
    ),
}
TRAIN_SPANS = (1.0, 10.0)


def training_step(net: nn.Module, y0: torch.Tensor, target: torch.Tensor, t1: float, solve: TrainSolve):
    field = CountingMLP(net)

    def run() -> Record:
        net.zero_grad(set_to_none=True)
        field.reset()
        y1, steps = solve(field, y0, t1)
        calls_fwd = field.calls
        loss = mse(y1, target)
        loss.backward()
        return dict(loss=loss.item(), grad=flat_grad(net), steps=steps, calls_fwd=calls_fwd,
                    calls_bwd=field.calls - calls_fwd)  # fmt: skip

    return run


def training_section(quick: bool) -> str:
    single_thread()
    net, y0, target = make_problem()
    out = [
        f"## (b) Neural-ODE training step: MLP 2-64-64-2 (tanh), batch {BATCH}, float32, per gradient strategy",
        "",
        f"The step of `bench_neural_ode.py`: dopri5, rtol = {RTOL:g}, atol = {ATOL:g}, MSE of y(t1) to a fixed "
        "target, one `loss.backward()`; dxdt in joint mode (torchdiffeq's semantics) with its default PI "
        "controller. dxdt's adjoints and torchdiffeq's `odeint_adjoint` solve the backward equation with the "
        "forward's method and tolerances. The seminorm (Kidger et al. 2021) leaves the parameter-gradient "
        "components out of the backward error norm: dxdt's default (`BacksolveAdjoint(seminorm=True)`), "
        "torchdiffeq's opt-in. Medians of interleaved repeats after one warm-up. *steps*: forward steps "
        "(accepted + rejected); *f calls*: batched MLP evaluations in the forward and in the backward pass "
        "(compiled rows: forward ones from the solver's statistics, backward ones not counted); *compile=True*: "
        "every loop iteration compiled, forward and backward (the adjoint's vector-Jacobian products traced into "
        "the backward iterations), compilation in the warm-up; "
        "*grad error*: ‖g − g_ref‖/‖g_ref‖ against torchdiffeq dopri5 in float64 at rtol = 1e-10 (backprop).",
    ]
    verdicts = []
    for t1 in TRAIN_SPANS:
        runners = {name: training_step(net, y0, target, t1, solve) for name, solve in TRAIN_METHODS.items()}
        timings, records = time_interleaved(runners, repeats=5 if quick else 21, warmup=1, budget_s=8 if quick else 50)
        g_ref = reference_gradient(net, y0, target, t1)
        base, tdq_adj = timings["dxdt autodiff"].median, timings["torchdiffeq odeint_adjoint"].median
        rows = []
        for name, timing in timings.items():
            rec = records[name]
            rows.append(
                [
                    name,
                    *timing_cells(timing),
                    fmt_ratio(timing.median / base),
                    fmt_ratio(timing.median / tdq_adj),
                    rec["steps"],
                    rec["calls_fwd"],
                    "—" if "compile=True" in name else rec["calls_bwd"],  # the compiled field has no counter
                    fmt_sci(rel(rec["grad"], g_ref)),
                    fmt_sci(rel(rec["grad"], records["dxdt autodiff"]["grad"])),
                ]
            )
        n = len(timings["dxdt autodiff"].times)
        out += [
            "",
            f"### t ∈ [0, {t1:g}] ({n} repeats)",
            "",
            markdown_table(
                [
                    "method",
                    "time/step (median)",
                    "min",
                    "IQR/median",
                    "vs dxdt autodiff",
                    "vs torchdiffeq odeint_adjoint",
                    "steps (fwd)",
                    "f calls fwd",
                    "f calls bwd",
                    "grad error vs ref.",
                    "grad rel. diff vs dxdt autodiff",
                ],
                rows,
            ),
        ]
        for suffix in ("", ", compile=True", ", I controller", ", I controller, compile=True"):
            autodiff = "dxdt autodiff" + suffix
            bs = timings[f"dxdt backsolve (seminorm){suffix}"]
            ad = timings[autodiff]
            r_ad, r_tdq = bs.median / ad.median, bs.median / tdq_adj
            verdicts.append(
                f"- t ∈ [0, {t1:g}]{suffix}: dxdt backsolve = {fmt_ratio(r_ad)} {autodiff} "
                f"({'PASS' if r_ad <= 1.5 else 'FAIL'} ≤ 1.5×) and {fmt_ratio(r_tdq)} torchdiffeq odeint_adjoint "
                f"({'PASS' if r_tdq <= 0.7 else 'FAIL'} ≤ 0.7×); IQR/median: backsolve {bs.spread:.0%}, autodiff "
                f"{ad.spread:.0%}, odeint_adjoint {timings['torchdiffeq odeint_adjoint'].spread:.0%}."
            )
    out += ["", "Checks (medians):", "", *verdicts]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- (c) mechanistic

MECH_RTOL, MECH_ATOL = 1e-6, 1e-9  # dxdt's defaults
MECH_BATCH = 8


class Model:
    """A mechanistic model with its parameters in ``args``, synthetic data, and a perturbed parameter point."""

    def __init__(self, name, f, theta_true, perturb, y0, t1, n_save, noise, gen):
        self.name, self.f, self.t1 = name, f, t1
        self.calls = 0
        self.theta = (torch.tensor(theta_true, dtype=torch.float64) * torch.tensor(perturb)).requires_grad_()
        self.y0 = y0
        self.ts = torch.linspace(0.0, t1, n_save, dtype=torch.float64)
        with torch.no_grad():
            clean = torchdiffeq.odeint(
                lambda t, y: f(t, y, torch.tensor(theta_true, dtype=torch.float64)),
                y0, self.ts, rtol=1e-12, atol=1e-12, method="dopri8",
            ).movedim(0, 1)  # fmt: skip
        self.data = clean + noise * torch.randn(clean.shape, generator=gen, dtype=torch.float64)

    def field(self, t, y, theta):
        self.calls += 1
        return self.f(t, y, theta)


def lotka_volterra(t, y, theta):
    """Prey x and predator z: dx = a x − b x z, dz = c x z − d z; theta = (a, b, c, d)."""
    a, b, c, d = theta.unbind()
    x, z = y[..., 0], y[..., 1]
    return torch.stack([a * x - b * x * z, c * x * z - d * z], dim=-1)


def sir(t, y, theta):
    """Fractions susceptible, infected, recovered; theta = (β, γ)."""
    beta, gamma = theta.unbind()
    s, i = y[..., 0], y[..., 1]
    infection, recovery = beta * s * i, gamma * i
    return torch.stack([-infection, infection - recovery, recovery], dim=-1)


def make_models() -> list[Model]:
    gen = torch.Generator().manual_seed(1)
    lv_y0 = 0.5 + torch.rand(MECH_BATCH, 2, generator=gen, dtype=torch.float64)
    i0 = torch.linspace(0.001, 0.05, MECH_BATCH, dtype=torch.float64)
    sir_y0 = torch.stack([1 - i0, i0, torch.zeros_like(i0)], dim=1)
    return [
        Model("Lotka–Volterra (4 parameters)", lotka_volterra, (1.5, 1.0, 1.0, 3.0), (1.1, 0.9, 1.05, 0.95),
              lv_y0, 10.0, 21, 0.05, gen),
        Model("SIR (2 parameters)", sir, (0.3, 0.1), (1.2, 0.9), sir_y0, 100.0, 21, 0.002, gen),
    ]  # fmt: skip


def mech_dxdt(gradient: str, compile: bool = False) -> Callable[[Model], torch.Tensor]:
    def solve(model: Model) -> torch.Tensor:
        # Compiled: the raw field, since a Python counter in f is a value guard and would recompile every call.
        field = model.f if compile else model.field
        return dxdt.solve(
            field, model.y0, 0.0, model.t1, args=model.theta, saveat=model.ts, solver="dopri5",
            rtol=MECH_RTOL, atol=MECH_ATOL, gradient=gradient, compile=compile,
        ).ys  # fmt: skip

    return solve


def mech_torchdiffeq(adjoint: bool) -> Callable[[Model], torch.Tensor]:
    def solve(model: Model) -> torch.Tensor:
        def f(t, y):
            return model.field(t, y, model.theta)

        options = dict(adjoint_params=(model.theta,)) if adjoint else {}
        odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        ys = odeint(f, model.y0, model.ts, rtol=MECH_RTOL, atol=MECH_ATOL, method="dopri5", **options)
        return ys.movedim(0, 1)

    return solve


MECH_METHODS = {
    "dxdt forward": mech_dxdt("forward"),
    "dxdt autodiff": mech_dxdt("autodiff"),
    "dxdt checkpoint": mech_dxdt("checkpoint"),
    "dxdt backsolve": mech_dxdt("backsolve"),
    "dxdt interpolate": mech_dxdt("interpolate"),
    # compile=True compiles each attempted step (with forward sensitivities: f's vmap(jvp) too); the warm-up
    # call pays the compilation, the timed repeats reuse it, as a fitting loop would.
    "dxdt forward, compile=True": mech_dxdt("forward", compile=True),
    "dxdt autodiff, compile=True": mech_dxdt("autodiff", compile=True),
    "torchdiffeq odeint": mech_torchdiffeq(adjoint=False),
    "torchdiffeq odeint_adjoint": mech_torchdiffeq(adjoint=True),
}


def mech_step(model: Model, solve: Callable[[Model], torch.Tensor]) -> Callable[[], Record]:
    def run() -> Record:
        model.calls = 0
        ys = solve(model)
        calls_fwd = model.calls
        loss = mse(ys, model.data)
        (grad,) = torch.autograd.grad(loss, model.theta)
        return dict(loss=loss.item(), grad=grad, calls_fwd=calls_fwd, calls_bwd=model.calls - calls_fwd)

    return run


def mech_reference(model: Model) -> torch.Tensor:
    """The gradient from torchdiffeq dopri8 at rtol = atol = 1e-12 (backprop through the solver)."""
    theta = model.theta.detach().clone().requires_grad_()
    ys = torchdiffeq.odeint(
        lambda t, y: model.f(t, y, theta), model.y0, model.ts, rtol=1e-12, atol=1e-12, method="dopri8"
    ).movedim(0, 1)
    (grad,) = torch.autograd.grad(mse(ys, model.data), theta)
    return grad


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


def mechanistic_section(quick: bool) -> str:
    single_thread()
    out = [
        "## (c) Forward sensitivities against reverse mode: mechanistic models with few parameters",
        "",
        f"A batch of {MECH_BATCH} initial states, float64, parameters passed through `args` (one shared tensor "
        f"requiring grad), dopri5 at rtol = {MECH_RTOL:g}, atol = {MECH_ATOL:g}, dxdt in per-sample mode (its "
        "default), 21 save times; loss = MSE of all saved states to noisy synthetic data, at a parameter point "
        "away from the truth; one measurement = solve + loss + `torch.autograd.grad` wrt the parameters. "
        "Medians of interleaved repeats. *max rel. diff*: max over the parameters of |g − g_ref|/|g_ref|, "
        "against torchdiffeq dopri8 at rtol = atol = 1e-12 (backprop) and against dxdt forward. torchdiffeq solves "
        "the batch as one system (one step size); dxdt steps each sample on its own.",
    ]
    for model in make_models():
        runners = {name: mech_step(model, solve) for name, solve in MECH_METHODS.items()}
        timings, records = time_interleaved(runners, repeats=5 if quick else 15, warmup=1, budget_s=8 if quick else 40)
        g_ref = mech_reference(model)
        base = timings["dxdt autodiff"].median
        g_fwd = records["dxdt forward"]["grad"]
        rows = []
        for name, timing in timings.items():
            rec = records[name]
            rows.append(
                [
                    name,
                    *timing_cells(timing),
                    fmt_ratio(timing.median / base),
                    rec["calls_fwd"],
                    rec["calls_bwd"],
                    fmt_sci(max_rel(rec["grad"], g_ref)),
                    "0" if name == "dxdt forward" else fmt_sci(max_rel(rec["grad"], g_fwd)),
                ]
            )
        spread = max(max_rel(r["grad"], g_ref) for name, r in records.items() if name.startswith("dxdt"))
        n = len(timings["dxdt autodiff"].times)
        out += [
            "",
            f"### {model.name}, t ∈ [0, {model.t1:g}] ({n} repeats)",
            "",
            f"Reference gradient: {', '.join(f'{x:.6g}' for x in g_ref.tolist())}. Largest relative difference "
            f"of any dxdt strategy from it: {spread:.1e}.",
            "",
            markdown_table(
                [
                    "method",
                    "loss + grad (median)",
                    "min",
                    "IQR/median",
                    "vs dxdt autodiff",
                    "f calls fwd",
                    "f calls bwd",
                    "max rel. diff vs ref.",
                    "max rel. diff vs dxdt forward",
                ],
                rows,
            ),
            "",
            "Forward sensitivities vs reverse mode (medians): eager "
            f"{fmt_ratio(timings['dxdt forward'].median / timings['dxdt autodiff'].median)} dxdt autodiff; both "
            "with compile=True "
            f"{fmt_ratio(timings['dxdt forward, compile=True'].median / timings['dxdt autodiff, compile=True'].median)}"
            f"; compiled forward vs eager autodiff "
            f"{fmt_ratio(timings['dxdt forward, compile=True'].median / timings['dxdt autodiff'].median)}.",
        ]
    out += [
        "",
        "*f calls* count batched calls of the vector field: for dxdt forward one call is a `vmap` over the "
        "sensitivity columns of a `jvp` (so it costs more than a plain call); for the adjoints the backward calls "
        "are vector-Jacobian products (and, per sample, 3 Gauss–Legendre nodes per backward step).",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- driver

SECTIONS = ("memory", "training", "mechanistic")


def run(quick: bool = False, only: tuple[str, ...] = SECTIONS, plot: Path | None = None) -> str:
    """The Markdown of the chosen sections (for ``run.py``): (a) in subprocesses, (b) and (c) in this process."""
    return "\n\n".join(run_sections(quick, only, plot).values())


def run_sections(quick: bool, only: tuple[str, ...], plot: Path | None) -> dict[str, str]:
    """Each chosen section's Markdown, with the date, duration, load and commit of its run under its title."""
    from run import git_revision  # not at import time: run.py may import this module

    parts = {}
    for name in only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started, load = datetime.datetime.now().astimezone(), os.getloadavg()[0]
        t = time.perf_counter()
        if name == "memory":
            text = memory_section(quick, plot)
        elif name == "training":
            text = training_section(quick)
        else:
            text = mechanistic_section(quick)
        wall = time.perf_counter() - t
        title, rest = text.split("\n", 1)
        when = f"*Run {started:%Y-%m-%d %H:%M %Z}{' (--quick)' if quick else ''}, {wall:.0f} s; 1-min load "
        when += f"average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end; dxdt at git {git_revision()}.*"
        parts[name] = f"{title}\n\n{when}\n{rest}"
        print(f"{name}: {wall:.0f} s", file=sys.stderr, flush=True)
    return parts


def merge_sections(path: Path, new: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The sections of an earlier results file, with ``new`` in place of those regenerated; which were kept."""
    old = {}
    if path.exists():
        chunks = re.split(r"^(?=## \([abc]\) )", path.read_text(), flags=re.M)
        letters = {f"({chr(ord('a') + i)})": name for i, name in enumerate(SECTIONS)}
        for chunk in chunks[1:]:
            old[letters[chunk.split()[1]]] = chunk.rstrip("\n")
    kept = [name for name in SECTIONS if name not in new and name in old]
    return {name: new.get(name, old.get(name)) for name in SECTIONS if name in new or name in old}, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    parser.add_argument("--out", help="Markdown output (default: benchmarks/results_gradients.md, none with --quick)")
    parser.add_argument("--plot", help="memory plot (default: benchmarks/gradients_memory.png, none with --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        spec = json.loads(opts.worker)
        print(json.dumps(memory_worker(spec["method"], spec["steps"])))
        return
    only = tuple(s.strip() for s in opts.only.split(",") if s.strip())
    if set(only) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(set(only) - set(SECTIONS))}; choose from {list(SECTIONS)}")
    out = Path(opts.out) if opts.out else (None if opts.quick else HERE / "results_gradients.md")
    plot = Path(opts.plot) if opts.plot else (None if opts.quick else HERE / "gradients_memory.png")

    started = datetime.datetime.now().astimezone()
    load_before = machine_info()["load average (1, 5, 15 min)"]
    t = time.perf_counter()
    sections = run_sections(opts.quick, only, plot)
    kept = []
    if out is not None and set(only) != set(SECTIONS):  # replace these sections of the earlier results
        sections, kept = merge_sections(out, sections)
    body = "\n\n".join(sections.values())
    info = machine_info()
    info["load average (1, 5, 15 min)"] = f"{load_before} at start, {info['load average (1, 5, 15 min)']} at end"
    loaded = float(load_before.split(",")[0]) > 1.0 or os.getloadavg()[0] > 1.0
    from run import git_revision  # not at import time: run.py may import this module

    env = " ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    header = [
        "# dxdt gradient strategies: memory, time, accuracy",
        "",
        f"Generated by `{env} python {' '.join(sys.argv)}` (run from the repository root) on "
        f"{started:%Y-%m-%d %H:%M %Z} in {time.perf_counter() - t:.0f} s; dxdt at git "
        f"{git_revision()}{' (this run)' if kept else ''}."
        + (
            f" Sections {', '.join(f'({chr(97 + SECTIONS.index(k))})' for k in kept)} are kept from an earlier run "
            "(each section states when it ran); the machine details below are this run's."
            if kept
            else ""
        ),
        "",
        "One thread per library (`torch.set_num_threads(1)`, BLAS/OpenMP pools at 1). "
        + (
            f"**Taken under load**: the {info['cores']}-core machine was shared with other jobs (load average "
            "above), so every wall time is inflated and noisy; compare within a table, and trust a ratio only "
            "where it exceeds the IQR. Memory, steps, f calls and gradient differences do not depend on the load."
            if loaded
            else "The machine was otherwise idle."
        ),
        "",
        markdown_table(["", ""], [*info.items(), ("threads", "1 per library")]),
        "",
        markdown_table(["package", "version"], list(versions().items())),
        "",
    ]
    text = "\n".join(header) + "\n" + body + "\n"
    print(text)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}" + (f" and {plot}" if plot is not None and "memory" in only else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
