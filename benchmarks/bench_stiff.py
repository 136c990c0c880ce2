"""(d) Stiff problems: dxdt's Rosenbrock, ESDIRK and automatic solvers against scipy's Radau, BDF and LSODA.

Sections, all in one process with one thread per library:

1. Robertson [0, 1e5] (rtol 1e-6, atol 1e-10), HIRES (rtol 1e-7) and Van der Pol μ = 1000 on [0, 2000]
   (rtol 1e-7): median time of interleaved repeats, steps, f evaluations, Jacobians, LU factorizations and
   the error at t1 against scipy Radau at rtol 1e-12 with the analytic Jacobian (cached in benchmarks/.cache).
   scipy gets the analytic Jacobian too (its best case); dxdt builds its Jacobians by autodiff.
2. A batch of 64 Robertson systems with different rate constants: one per-sample dxdt solve against a loop of
   scipy solves.
3. Explicit PyTorch solvers on Robertson under a step budget: torchdiffeq dopri5 (max_num_steps), its implicit
   Adams method on a fixed grid, torchode Tsit5 (max_steps) and dxdt Tsit5: how far they get.
4. Work–precision (error vs time, rtol 1e-3 … 1e-9) for Robertson and Van der Pol, written to
   benchmarks/work_precision_stiff.png.
5. (with 1) The automatic solver against plain Tsit5 on a non-stiff problem (Lotka–Volterra).

diffrax's Kvaerno5 is added to section 1 when jax and diffrax are importable (they are not installed here).

Error: max over components of |y − ref| / max(|ref|, floor) with atol = rtol · floor (floor 1e-4 for Robertson
and Van der Pol, 1e-5 for HIRES: below every component except Robertson's y2 ≈ 7e-8), the measure of
tests/test_stiff.py; "digits" is −log10 of it.

Run: ``python benchmarks/bench_stiff.py [--quick]``; writes benchmarks/results_stiff.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMEXPR_NUM_THREADS", "1")

import argparse
import datetime
import importlib.util
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchdiffeq
import torchode
from common import (
    CountingField,
    cached_array,
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
from scipy.integrate import solve_ivp

import dxdt

HERE = Path(__file__).resolve().parent
PLOT_PATH = HERE / "work_precision_stiff.png"
RESULTS_PATH = HERE / "results_stiff.md"
Record = dict[str, Any]

# ---------------------------------------------------------------------------------------------------- problems


def _stack(*cols):
    """The fields below serve torch ((B, N) states), numpy ((N,), for scipy) and jax (diffrax)."""
    if isinstance(cols[0], torch.Tensor):
        return torch.stack(cols, dim=-1)
    if isinstance(cols[0], (np.ndarray, np.generic, float)):
        return np.stack(cols)
    import jax.numpy as jnp

    return jnp.stack(cols, axis=-1)


ROBER_K = (0.04, 3e7, 1e4)


def robertson(t, y):
    k1, k2, k3 = ROBER_K
    a, b, c = y[..., 0], y[..., 1], y[..., 2]
    return _stack(-k1 * a + k3 * b * c, k1 * a - k3 * b * c - k2 * b * b, k2 * b * b)


def robertson_jac(t, y):
    k1, k2, k3 = ROBER_K
    _, b, c = y
    return np.array([[-k1, k3 * c, k3 * b], [k1, -k3 * c - 2 * k2 * b, -k3 * b], [0.0, 2 * k2 * b, 0.0]])


def robertson_jac_torch(t, y):
    """The analytic Jacobian for dxdt, ``(B, 3, 3)`` (what scipy is given, batched)."""
    k1, k2, k3 = ROBER_K
    _, b, c = y.unbind(-1)
    one, zero = torch.ones_like(b), torch.zeros_like(b)
    rows = ((-k1 * one, k3 * c, k3 * b), (k1 * one, -k3 * c - 2 * k2 * b, -k3 * b), (zero, 2 * k2 * b, zero))
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return _stack(v, 1000.0 * (1 - x * x) * v - x)


def van_der_pol_jac(t, y):
    x, v = y
    return np.array([[0.0, 1.0], [-2000.0 * x * v - 1, 1000.0 * (1 - x * x)]])


def van_der_pol_jac_torch(t, y):
    x, v = y.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows = ((zero, one), (-2000.0 * x * v - 1, 1000.0 * (1 - x * x)))
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def hires(t, y):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    return _stack(
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280 * y6 * y8 - 1.81 * y7,
        -280 * y6 * y8 + 1.81 * y7,
    )


def hires_jac(t, y):
    j = np.zeros((8, 8))
    j[0, :3] = (-1.71, 0.43, 8.32)
    j[1, :2] = (1.71, -8.75)
    j[2, 2:5] = (-10.03, 0.43, 0.035)
    j[3, 1:4] = (8.32, 1.71, -1.12)
    j[4, 4:7] = (-1.745, 0.43, 0.43)
    j[5, 3:8] = (0.69, 1.71, -0.43 - 280 * y[7], 0.69, -280 * y[5])
    j[6, 5:8] = (280 * y[7], -1.81, 280 * y[5])
    j[7, 5:8] = (-280 * y[7], 1.81, -280 * y[5])
    return j


@dataclass(frozen=True)
class Problem:
    title: str
    f: Callable
    jac: Callable
    y0: tuple[float, ...]
    t1: float
    rtol: float
    atol: float
    floor: float
    ref_atol: float
    torch_jac: Callable | None = None


PROBLEMS = {
    "robertson": Problem(
        "Robertson, t ∈ [0, 1e5]",
        robertson,
        robertson_jac,
        (1.0, 0.0, 0.0),
        1e5,
        1e-6,
        1e-10,
        1e-4,
        1e-20,
        robertson_jac_torch,
    ),
    "hires": Problem(
        "HIRES, t ∈ [0, 321.8122]",
        hires,
        hires_jac,
        (1.0, 0, 0, 0, 0, 0, 0, 0.0057),
        321.8122,
        1e-7,
        1e-12,
        1e-5,
        1e-16,
    ),
    "van_der_pol": Problem(
        "Van der Pol μ = 1000, t ∈ [0, 2000]",
        van_der_pol,
        van_der_pol_jac,
        (2.0, 0.0),
        2000.0,
        1e-7,
        1e-11,
        1e-4,
        1e-14,
        van_der_pol_jac_torch,
    ),
}


def reference(name: str) -> np.ndarray:
    p = PROBLEMS[name]

    def compute() -> np.ndarray:
        sol = solve_ivp(p.f, (0.0, p.t1), np.array(p.y0), method="Radau", rtol=1e-12, atol=p.ref_atol, jac=p.jac)
        assert sol.success, sol.message
        return sol.y[:, -1]

    return cached_array(f"stiff-{name}", f"{name} radau rtol=1e-12 atol={p.ref_atol} t1={p.t1} y0={p.y0}", compute)


def rel_error(y: np.ndarray, ref: np.ndarray, floor: float) -> float:
    return float((np.abs(y - ref) / np.maximum(np.abs(ref), floor)).max())


# ---------------------------------------------------------------------------------------------------- runners


def dxdt_runner(p: Problem, solver: Any, rtol: float, atol: float, compile: bool = False) -> Callable[[], Record]:
    """``compile=True``: a Rodas5P with the analytic Jacobian (scipy's information), its step compiled; the
    first call's time (compilation) is reported in the notes."""
    field = CountingField(p.f) if not compile else p.f  # a counter in f would recompile (a Python side effect)
    y0 = torch.tensor([p.y0], dtype=torch.float64)
    first: list[float] = []

    def run() -> Record:
        if not compile:
            field.reset()
        start = time.perf_counter()
        sol = dxdt.solve(field, y0, 0.0, p.t1, solver=solver, rtol=rtol, atol=atol, max_steps=200_000, compile=compile)
        if not first:
            first.append(time.perf_counter() - start)
        s = sol.stats
        return dict(
            y1=sol.ys[0, -1].numpy(),
            steps=int(s.n_steps[0]),
            rejected=int(s.n_rejected[0]),
            nfev=int(s.n_f_evals[0]),
            calls=None if compile else field.calls,
            njev=int(s.n_jac_evals[0]),
            nlu=int(s.n_lu_decompositions[0]),
            extra=(
                f"first call (compiling) {first[0]:.0f} s"
                if compile
                else f"Newton {int(s.n_newton_iters[0])}, fails {int(s.n_newton_failures[0])}"
                if str(solver).startswith("kvaerno")
                else (f"switches {int(s.n_switches[0])}" if solver == "auto" else "")
            ),
        )

    return run


def scipy_runner(p: Problem, method: str, rtol: float, atol: float) -> Callable[[], Record]:
    def run() -> Record:
        sol = solve_ivp(p.f, (0.0, p.t1), np.array(p.y0), method=method, rtol=rtol, atol=atol, jac=p.jac)
        if not sol.success:
            raise RuntimeError(f"scipy {method}: {sol.message}")
        return dict(
            y1=sol.y[:, -1],
            steps=len(sol.t) - 1,
            rejected=None,
            nfev=sol.nfev,
            calls=sol.nfev,
            njev=sol.njev,
            nlu=sol.nlu,
            extra="",
        )

    return run


def diffrax_runner(p: Problem, rtol: float, atol: float) -> Callable[[], Record] | None:
    """diffrax Kvaerno5 (jit-compiled outside the timing), when jax and diffrax are installed. Not exercised on
    the machine these results come from (neither is installed there)."""
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("diffrax") is None:
        return None
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    term = diffrax.ODETerm(lambda t, y, args: p.f(t, y))
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    y0 = jnp.array(p.y0)

    @jax.jit
    def solve(y0):
        return diffrax.diffeqsolve(
            term, diffrax.Kvaerno5(), 0.0, p.t1, None, y0, stepsize_controller=controller, max_steps=200_000
        )

    solve(y0).ys.block_until_ready()

    def run() -> Record:
        sol = solve(y0)
        steps = int(sol.stats["num_steps"])
        rejected = steps - int(sol.stats["num_accepted_steps"])
        return dict(
            y1=np.asarray(sol.ys[-1]),
            steps=steps,
            rejected=rejected,
            nfev=None,
            calls=None,
            njev=None,
            nlu=None,
            extra="",
        )

    return run


# ---------------------------------------------------------------------------------------------------- section 1


DXDT_METHODS = ("rodas5p", "rodas4", "kvaerno5", "auto")
SCIPY_METHODS = ("Radau", "BDF", "LSODA")


def section_problems(quick: bool) -> tuple[str, dict[str, dict[str, float]]]:
    parts, summary = [], {}
    for name, p in PROBLEMS.items():
        ref = reference(name)
        fns: dict[str, Callable[[], Record]] = {}
        for m in DXDT_METHODS:
            fns[f"dxdt {m}"] = dxdt_runner(p, m, p.rtol, p.atol)
        if p.torch_jac is not None:
            fns["dxdt rodas5p, compiled"] = dxdt_runner(p, dxdt.Rodas5P(), p.rtol, p.atol, compile=True)
            compiled = dxdt.Rodas5P(jac=p.torch_jac)
            fns["dxdt rodas5p, analytic jac, compiled"] = dxdt_runner(p, compiled, p.rtol, p.atol, compile=True)
            fns["dxdt auto, compiled"] = dxdt_runner(p, "auto", p.rtol, p.atol, compile=True)
        for m in SCIPY_METHODS:
            fns[f"scipy {m}"] = scipy_runner(p, m, p.rtol, p.atol)
        try:
            diffrax = diffrax_runner(p, p.rtol, p.atol)
        except Exception as e:  # an optional competitor must not sink the run
            print(f"diffrax Kvaerno5 skipped on {name}: {e}")
            diffrax = None
        if diffrax is not None:
            fns["diffrax Kvaerno5 (jit)"] = diffrax
        repeats = 3 if quick or name != "robertson" else 7
        timings, records = time_interleaved(fns, repeats=repeats, warmup=1, budget_s=20 if quick else 60)
        base = timings["scipy Radau"].median
        rows = []
        summary[name] = {}
        for label, timing in timings.items():
            r = records[label]
            err = rel_error(r["y1"], ref, p.floor)
            summary[name][label] = timing.median
            rows.append(
                [
                    label,
                    *timing_cells(timing),
                    fmt_ratio(timing.median / base),
                    f"{r['steps']}" + ("" if r["rejected"] is None else f" ({r['rejected']})"),
                    "—" if r["nfev"] is None else r["nfev"],
                    "—" if r["njev"] is None else r["njev"],
                    "—" if r["nlu"] is None else r["nlu"],
                    f"{timing.median / r['steps'] * 1e6:.0f}",
                    fmt_sci(err),
                    f"{-math.log10(err):.1f}",
                    r["extra"],
                ]
            )
        n = len(next(iter(timings.values())).times)
        headers = [
            "method",
            "time (median)",
            "min",
            "IQR/median",
            "vs scipy Radau",
            "steps (rejected)",
            "f evals",
            "Jacobians",
            "LU",
            "µs/step",
            "error",
            "digits",
            "notes",
        ]
        parts += [
            f"### {p.title}: rtol = {p.rtol:g}, atol = {p.atol:g}",
            "",
            f"Median of {n} interleaved repeats after one warm-up. Error floor {p.floor:g}.",
            "",
            markdown_table(headers, rows),
            "",
        ]
    if importlib.util.find_spec("diffrax") is None:
        parts.append("diffrax Kvaerno5: skipped (jax/diffrax not installed).\n")
    return "\n".join(parts), summary


def lotka_volterra(t, y):
    x, z = y[..., 0], y[..., 1]
    return _stack(1.5 * x - x * z, x * z - 3.0 * z)


def section_nonstiff(quick: bool) -> str:
    """The automatic solver's overhead where nothing is stiff: it must stay with Tsit5 and cost about as much."""
    y0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)

    def runner(solver, compile=False):
        if compile:  # compiled outside the timing
            dxdt.solve(lotka_volterra, y0, 0.0, 20.0, solver=solver, rtol=1e-8, atol=1e-8, compile=True)

        def run():
            sol = dxdt.solve(lotka_volterra, y0, 0.0, 20.0, solver=solver, rtol=1e-8, atol=1e-8, compile=compile)
            s = sol.stats
            return dict(
                steps=int(s.n_steps[0]),
                nfev=int(s.n_f_evals[0]),
                switches=int(s.n_switches[0]),
                y1=sol.ys[0, -1].numpy(),
            )

        return run

    timings, records = time_interleaved(
        {
            "dxdt tsit5": runner("tsit5"),
            "dxdt auto": runner("auto"),
            "dxdt tsit5, compiled": runner("tsit5", compile=True),
            "dxdt auto, compiled": runner("auto", compile=True),
        },
        repeats=5 if quick else 15,
        warmup=1,
    )
    mode = {label: ", compiled" if label.endswith(", compiled") else "" for label in timings}
    base = {label: timings["dxdt tsit5" + mode[label]].median for label in timings}
    rows = [
        [
            label,
            *timing_cells(t),
            fmt_ratio(t.median / base[label]),
            records[label]["steps"],
            records[label]["nfev"],
            records[label]["switches"],
        ]
        for label, t in timings.items()
    ]
    same = np.array_equal(records["dxdt tsit5"]["y1"], records["dxdt auto"]["y1"])
    headers = ["method", "time (median)", "min", "IQR/median", "vs tsit5 (same mode)", "steps", "f evals", "switches"]
    return "\n".join(
        [
            "### Non-stiff: Lotka–Volterra (α=1.5, β=1, γ=3, δ=1), y0 = (1, 1), t ∈ [0, 20], rtol = atol = 1e-8",
            "",
            f"Median of {len(timings['dxdt tsit5'].times)} interleaved repeats. The automatic solver never switches "
            f"and its solution is {'bitwise identical to' if same else 'different from'} Tsit5's; the difference in "
            "time is its stiffness test (on the first step, then every "
            f"`check_every` = {dxdt.AutoSwitch().check_every} steps, up to 4x as far apart while it finds the "
            "problem far from stiff: one f evaluation each) and the bookkeeping of its state. Compiled rows: "
            "`compile=True`, compiled before the timing; "
            "each is compared with Tsit5 in the same mode.",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------- section 2

BATCH = 64


def robertson_rates(t, y, p):
    k1, k2, k3 = (ROBER_K[i] * p[:, i : i + 1] for i in range(3))
    a, b, c = y[..., 0:1], y[..., 1:2], y[..., 2:3]
    return torch.cat([-k1 * a + k3 * b * c, k1 * a - k3 * b * c - k2 * b * b, k2 * b * b], -1)


def section_batch(quick: bool) -> str:
    g = torch.Generator().manual_seed(0)
    p = torch.exp(math.log(2.0) * (2 * torch.rand(BATCH, 3, generator=g, dtype=torch.float64) - 1))  # [0.5, 2]
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(BATCH, 3)
    rtol, atol, t1 = 1e-6, 1e-10, 1e5
    pn = p.numpy()

    def jac_np(k):
        return lambda t, y: np.array(
            [
                [-k[0], k[2] * y[2], k[2] * y[1]],
                [k[0], -k[2] * y[2] - 2 * k[1] * y[1], -k[2] * y[1]],
                [0.0, 2 * k[1] * y[1], 0.0],
            ]
        )

    def field_np(k):
        return lambda t, y: np.array(
            [-k[0] * y[0] + k[2] * y[1] * y[2], k[0] * y[0] - k[2] * y[1] * y[2] - k[1] * y[1] ** 2, k[1] * y[1] ** 2]
        )

    def scipy_loop(method):
        def run():
            out, steps = [], 0
            for i in range(BATCH):
                k = np.array(ROBER_K) * pn[i]
                sol = solve_ivp(field_np(k), (0, t1), [1.0, 0, 0], method=method, rtol=rtol, atol=atol, jac=jac_np(k))
                out.append(sol.y[:, -1])
                steps += len(sol.t) - 1
            return dict(y1=np.stack(out), steps=steps / BATCH, iterations=None)

        return run

    def dxdt_batch(solver):
        def run():
            sol = dxdt.solve(robertson_rates, y0, 0.0, t1, args=p, solver=solver, rtol=rtol, atol=atol)
            return dict(
                y1=sol.ys[:, -1].numpy(),
                steps=float(sol.stats.n_steps.double().mean()),
                iterations=sol.stats.n_iterations,
            )

        return run

    fns = {
        "dxdt rodas5p (one batched solve)": dxdt_batch("rodas5p"),
        "dxdt kvaerno5 (one batched solve)": dxdt_batch("kvaerno5"),
        "dxdt auto (one batched solve)": dxdt_batch("auto"),
        "scipy Radau (loop of 64)": scipy_loop("Radau"),
        "scipy BDF (loop of 64)": scipy_loop("BDF"),
        "scipy LSODA (loop of 64)": scipy_loop("LSODA"),
    }
    timings, records = time_interleaved(fns, repeats=3, warmup=1, budget_s=30)
    ref = records["scipy Radau (loop of 64)"]["y1"]
    base = timings["scipy Radau (loop of 64)"].median
    rows = []
    for label, timing in timings.items():
        r = records[label]
        rows.append(
            [
                label,
                fmt_time(timing.median),
                fmt_ratio(timing.median / base),
                f"{r['steps']:.0f}",
                "—" if r["iterations"] is None else r["iterations"],
                fmt_sci(float((np.abs(r["y1"] - ref) / np.maximum(np.abs(ref), 1e-4)).max())),
            ]
        )
    headers = [
        "method",
        "time (median)",
        "vs scipy Radau loop",
        "mean steps/sample",
        "loop iterations",
        "max deviation from the Radau loop",
    ]
    return "\n".join(
        [
            f"### A batch of {BATCH} Robertson systems, rate constants scaled by factors in [0.5, 2], t ∈ [0, 1e5], "
            f"rtol = {rtol:g}, atol = {atol:g}",
            "",
            "One per-sample dxdt solve (each sample its own steps, Jacobian and LU; (64, 3, 3) batched LU) against a "
            "loop of scipy solves with the analytic Jacobian. Deviation: max over samples and components of "
            "|y − y_Radau| / max(|y_Radau|, 1e-4), both at rtol 1e-6.",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------- section 3


STEP_BUDGET = 2000


class TimeProbe(CountingField):
    """Counts calls and remembers the latest time f was evaluated at (how far a solver got)."""

    def reset(self) -> None:
        super().reset()
        self.t_max = 0.0

    def __call__(self, t, y):
        self.t_max = max(self.t_max, float(torch.as_tensor(t).detach().max()))
        return super().__call__(t, y)


def section_budget(quick: bool) -> str:
    p = PROBLEMS["robertson"]
    y0_1 = torch.tensor(p.y0, dtype=torch.float64)
    y0_b = y0_1[None]
    ts = torch.tensor([0.0, p.t1], dtype=torch.float64)
    rows = []
    ref = reference("robertson")

    def record(label, fn, probe):
        probe.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            try:
                y1, outcome = fn()
            except (AssertionError, RuntimeError) as e:
                y1, outcome = None, f"error: {str(e).splitlines()[0][:70]}"
            elapsed = time.perf_counter() - start
        err = "—" if y1 is None or not np.isfinite(y1).all() else fmt_sci(rel_error(y1, ref, p.floor))
        if y1 is not None and not np.isfinite(y1).all():
            outcome += " (NaN/inf)"
        n_warn = sum("did not converge" in str(w.message) for w in caught)
        rows.append(
            [
                label,
                outcome + (f"; {n_warn} convergence warnings" if n_warn else ""),
                f"{probe.t_max:.3g}",
                probe.calls,
                fmt_time(elapsed),
                err,
            ]
        )

    probe = TimeProbe(p.f)

    def tdq_dopri5():
        ys = torchdiffeq.odeint(
            probe, y0_1, ts, rtol=p.rtol, atol=p.atol, method="dopri5", options=dict(max_num_steps=STEP_BUDGET)
        )
        return ys[-1].numpy(), "reached t1"

    record(f"torchdiffeq dopri5, max_num_steps={STEP_BUDGET}", tdq_dopri5, probe)

    for step in (p.t1 / STEP_BUDGET, 1e-3):
        n = min(STEP_BUDGET, round(p.t1 / step))
        grid = torch.linspace(0.0, n * step, n + 1, dtype=torch.float64)

        def tdq_adams(grid=grid, n=n):
            ys = torchdiffeq.odeint(probe, y0_1, grid, method="implicit_adams")
            reached = "reached t1" if float(grid[-1]) >= p.t1 else f"stopped at the end of its {n}-step grid"
            return ys[-1].numpy(), reached

        record(f"torchdiffeq implicit_adams, fixed step {step:g} ({n} steps)", tdq_adams, probe)

    term = torchode.ODETerm(probe)
    adjoint = torchode.AutoDiffAdjoint(
        torchode.Tsit5(term=term), torchode.IntegralController(p.atol, p.rtol, term=term), max_steps=STEP_BUDGET
    )

    def tode():
        problem = torchode.InitialValueProblem(
            y0_b, torch.zeros(1, dtype=torch.float64), torch.full((1,), p.t1, dtype=torch.float64)
        )
        sol = adjoint.solve(problem, term)
        status = torchode.Status(int(sol.status[0])).name
        return (sol.ys[0, -1].numpy() if status == "SUCCESS" else None), f"status {status}"

    record(f"torchode tsit5, max_steps={STEP_BUDGET}", tode, probe)

    for solver in ("tsit5", "rodas5p", "auto"):

        def run_dxdt(solver=solver):
            sol = dxdt.solve(
                probe, y0_b, 0.0, p.t1, solver=solver, rtol=p.rtol, atol=p.atol, max_steps=STEP_BUDGET, throw=False
            )
            status = dxdt.Status(int(sol.status[0])).name
            y1 = sol.ys[0, -1].numpy() if bool(sol.success[0]) else None
            return y1, f"status {status} after {int(sol.stats.n_steps[0])} steps"

        record(f"dxdt {solver}, max_steps={STEP_BUDGET}", run_dxdt, probe)

    headers = ["solver", "outcome", "latest t evaluated", "f calls", "wall time", "error at t1"]
    return "\n".join(
        [
            f"### PyTorch ODE solvers on Robertson [0, 1e5] (rtol {p.rtol:g}, atol {p.atol:g}) with a budget of "
            f"{STEP_BUDGET} steps",
            "",
            "Every run is bounded by its step budget (torchdiffeq: `options=dict(max_num_steps=...)` or the length of "
            "its fixed grid; torchode: `AutoDiffAdjoint(..., max_steps=...)`), so nothing can hang. Explicit methods "
            "are held by stability to dt ≈ 3.5/|λ| ≈ 1.6e-3 (|λ| ≈ 2200), i.e. ~6e7 steps to reach t = 1e5. "
            "torchdiffeq's implicit Adams method corrects with a fixed-point (functional) iteration, which converges "
            "only for dt·|λ| < 1: on a coarse grid it warns and continues with unconverged values, on a fine one it "
            "cannot cover the interval.",
            "",
            markdown_table(headers, rows),
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------- section 4

WP_RTOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
WP_SKIP_AFTER_S = 6.0  # once a method takes this long, its tighter tolerances are skipped (keeps the run short)


def section_work_precision(quick: bool) -> tuple[str, dict]:
    rtols = WP_RTOLS[::2] if quick else WP_RTOLS
    data: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    skipped = []
    for name in ("robertson", "van_der_pol"):
        p = PROBLEMS[name]
        ref = reference(name)
        data[name] = {}
        methods = [(f"dxdt {m}", m) for m in DXDT_METHODS] + [(f"scipy {m}", m) for m in SCIPY_METHODS]
        for label, m in methods:
            points = []
            for rtol in rtols:
                atol = rtol * p.floor
                fn = dxdt_runner(p, m, rtol, atol) if label.startswith("dxdt") else scipy_runner(p, m, rtol, atol)
                times = []
                for _ in range(4):  # the first run of a fast case is a warm-up; a slow run counts at once
                    start = time.perf_counter()
                    r = fn()
                    times.append(time.perf_counter() - start)
                    if times[-1] > 0.5:
                        break
                times = times if len(times) == 1 else times[1:]
                points.append((rtol, min(times), rel_error(r["y1"], ref, p.floor)))
                if min(times) > WP_SKIP_AFTER_S and rtol != rtols[-1]:
                    skipped.append(f"{label} on {name} below rtol {rtol:g}")
                    break
            data[name][label] = points
    _plot(data)
    rows = []
    for name, methods in data.items():
        for label, points in methods.items():
            rows.append(
                [name, label]
                + [f"{fmt_time(t)} / {fmt_sci(e)}" for _, t, e in points]
                + ["—"] * (len(rtols) - len(points))
            )
    headers = ["problem", "method"] + [f"rtol {r:g}" for r in rtols]
    text = [
        "### Work–precision: time / error at t1, atol = rtol · floor",
        "",
        f"![work-precision]({PLOT_PATH.name}) (minimum of 3 runs after a warm-up; a single run when it takes more than "
        f"0.5 s).",
        "",
        markdown_table(headers, rows),
        "",
    ]
    if skipped:
        text += ["Skipped to bound the run (the previous tolerance took > 6 s): " + "; ".join(skipped) + ".", ""]
    return "\n".join(text), data


def _plot(data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "dxdt rodas5p": ("C0", "o-"),
        "dxdt rodas4": ("C1", "s-"),
        "dxdt kvaerno5": ("C2", "^-"),
        "dxdt auto": ("C3", "D-"),
        "scipy Radau": ("C4", "o--"),
        "scipy BDF": ("C5", "s--"),
        "scipy LSODA": ("C7", "^--"),
    }
    titles = {"robertson": "Robertson, t ∈ [0, 1e5]", "van_der_pol": "Van der Pol μ = 1000, t ∈ [0, 2000]"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (name, methods) in zip(axes, data.items()):
        for label, points in methods.items():
            color, style = styles[label]
            ts = [t for _, t, _ in points]
            errs = [max(e, 1e-16) for _, _, e in points]
            ax.loglog(ts, errs, style, color=color, label=label, markersize=4)
            ax.annotate(
                f"{points[0][0]:.0e}",
                (ts[0], errs[0]),
                fontsize=6,
                color=color,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_title(titles[name])
        ax.set_xlabel("wall time [s] (one thread)")
        ax.set_ylabel("max relative error at t1 (floored)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Stiff work–precision, rtol 1e-3 … 1e-9 (labels: the loosest rtol of each curve)")
    fig.tight_layout()
    fig.savefig(PLOT_PATH, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main


def run(quick: bool = False) -> str:
    single_thread()
    start = time.perf_counter()
    problems, _ = section_problems(quick)
    problems += "\n" + section_nonstiff(quick)
    t1 = time.perf_counter()
    batch = section_batch(quick)
    t2 = time.perf_counter()
    budget = section_budget(quick)
    t3 = time.perf_counter()
    wp, _ = section_work_precision(quick)
    t4 = time.perf_counter()
    durations = (
        f"Section times: problems {t1 - start:.0f} s, batch {t2 - t1:.0f} s, step budget {t3 - t2:.0f} s, "
        f"work–precision {t4 - t3:.0f} s."
    )
    return "\n".join(
        [
            "## (d) Stiff problems",
            "",
            "One thread per library (`torch.set_num_threads(1)`, OMP/MKL/OpenBLAS at 1). scipy `solve_ivp` gets the "
            'analytic Jacobian; dxdt evaluates its Jacobians by autodiff (`jac="autodiff"`, the default), except '
            "in the row *rodas5p, analytic jac, compiled*: `Rodas5P(jac=<the same Jacobian in torch>)`. The "
            "*compiled* rows pass `compile=True` (the first call compiles the loop iteration, for *auto* one variant "
            "per kind of iteration; the notes give that time, the table the later calls). "
            "dxdt's f evals exclude the one f call per autodiff Jacobian. scipy's steps are accepted steps (it does "
            "not report rejected ones). Error: max over components of |y − ref| / max(|ref|, floor); reference: "
            "scipy Radau at rtol 1e-12 with the analytic Jacobian.",
            "",
            problems,
            batch,
            budget,
            wp,
            durations,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tolerances")
    opts = parser.parse_args()
    started = datetime.datetime.now().astimezone()
    load_before = machine_info()["load average (1, 5, 15 min)"]
    body = run(opts.quick)
    info = machine_info()
    vers = versions()
    header = [
        f"Generated by `python benchmarks/bench_stiff.py{' --quick' if opts.quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M %Z}; {info['cpu']}, {info['cores']} cores, load average {load_before} at "
        f"start, {info['load average (1, 5, 15 min)']} at end (a shared machine: compare within a table).",
        "",
        ", ".join(f"{k} {v}" for k, v in vers.items()),
        "",
    ]
    text = body.replace("## (d) Stiff problems\n", "## (d) Stiff problems\n\n" + "\n".join(header), 1)
    RESULTS_PATH.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
