"""(a) One small nonstiff system: Lotka–Volterra, float64, rtol = atol = 1e-8 — per-step overhead dominates.

dxdt (tsit5/dopri5, PI and I controllers) against torchdiffeq, torchode and scipy in one process: median wall
time, f calls (one wrapper for every library), steps, error at t1 against a scipy DOP853 reference at 1e-13,
and time relative to torchdiffeq's dopri5. Ends with a profile: aten ops per attempted step.

Run: ``python benchmarks/bench_lotka_volterra.py [--quick]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMEXPR_NUM_THREADS", "1")

import argparse
import collections
from collections.abc import Callable
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
    markdown_table,
    scipy_final_state,
    single_thread,
    time_interleaved,
    timing_cells,
)
from scipy.integrate import solve_ivp

import dxdt

ALPHA, BETA, GAMMA, DELTA = 1.5, 1.0, 3.0, 1.0
Y0 = (1.0, 1.0)
T0, T1 = 0.0, 20.0
RTOL = ATOL = 1e-8
BASELINE = "torchdiffeq dopri5"


def lv_torch(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, z = y[..., 0], y[..., 1]
    return torch.stack([ALPHA * x - BETA * x * z, -GAMMA * z + DELTA * x * z], dim=-1)


def lv_numpy(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([ALPHA * y[0] - BETA * y[0] * y[1], -GAMMA * y[1] + DELTA * y[0] * y[1]])


def references() -> tuple[np.ndarray, float]:
    """y(t1) from DOP853 at 1e-13, and its distance to Radau at 1e-13 (how far the reference can be trusted)."""
    key = f"lv {ALPHA} {BETA} {GAMMA} {DELTA} {Y0} {T0} {T1} 1e-13"
    dop = cached_array("lv-dop853", key, lambda: scipy_final_state(lv_numpy, (T0, T1), Y0, "DOP853"))
    radau = cached_array("lv-radau", key, lambda: scipy_final_state(lv_numpy, (T0, T1), Y0, "Radau"))
    return dop, float(np.abs(dop - radau).max())


# Each runner returns: final state (numpy), f calls counted by the wrapper, attempted steps, rejected steps, and
# the library's own NFE count where it has one.
Record = dict[str, Any]


def dxdt_runner(
    solver: str, controller: str, t1: float = T1, f: Callable = lv_torch, compile: bool = False
) -> Callable[[], Record]:
    field = CountingField(f)
    y0 = torch.tensor([Y0], dtype=torch.float64)

    def run() -> Record:
        field.reset()
        # a Python call counter inside a compiled step would force recompilation at every call: compiled runs
        # call the bare field and report dxdt's own count
        sol = dxdt.solve(
            f if compile else field, y0, T0, t1, solver=solver, rtol=RTOL, atol=ATOL, controller=controller,
            compile=compile,
        )  # fmt: skip
        st = sol.stats
        return dict(
            y1=sol.ys[0, -1].numpy(),
            calls=int(st.n_f_evals[0]) if compile else field.calls,
            steps=int(st.n_steps[0]),
            rejected=int(st.n_rejected[0]),
            own_nfe=int(st.n_f_evals[0]),
        )

    return run


def torchdiffeq_runner(method: str, t1: float = T1, f: Callable = lv_torch) -> Callable[[], Record]:
    field = CountingField(f)
    y0 = torch.tensor(Y0, dtype=torch.float64)
    t = torch.tensor([T0, t1], dtype=torch.float64)

    def run() -> Record:
        field.reset()
        ys = torchdiffeq.odeint(field, y0, t, rtol=RTOL, atol=ATOL, method=method)
        return dict(
            y1=ys[-1].numpy(),
            calls=field.calls,
            steps=field.accepted + field.rejected,
            rejected=field.rejected,
            own_nfe=None,
        )

    return run


def torchode_runner(method: str, t1: float = T1, f: Callable = lv_torch) -> Callable[[], Record]:
    field = CountingField(f)
    term = torchode.ODETerm(field)
    step = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5}[method](term=term)
    adjoint = torchode.AutoDiffAdjoint(step, torchode.IntegralController(ATOL, RTOL, term=term))
    y0 = torch.tensor([Y0], dtype=torch.float64)
    t0_t, t1_t = torch.tensor([T0], dtype=torch.float64), torch.tensor([t1], dtype=torch.float64)

    def run() -> Record:
        field.reset()
        sol = adjoint.solve(torchode.InitialValueProblem(y0, t0_t, t1_t), term)
        return dict(
            y1=sol.ys[0, -1].numpy(),
            calls=field.calls,
            steps=int(sol.stats["n_steps"][0]),
            rejected=int(sol.stats["n_steps"][0] - sol.stats["n_accepted"][0]),
            own_nfe=int(sol.stats["n_f_evals"][0]),
        )

    return run


def scipy_runner(method: str) -> Callable[[], Record]:
    field = CountingField(lv_numpy)
    evals_per_step = {"RK45": 6, "DOP853": 12}[method]  # FSAL stages + f(t1, y1); 2 more for t0 and dt0

    def run() -> Record:
        field.reset()
        sol = solve_ivp(field, (T0, T1), Y0, method=method, rtol=RTOL, atol=ATOL)
        steps = (sol.nfev - 2) // evals_per_step
        return dict(
            y1=sol.y[:, -1],
            calls=field.calls,
            steps=steps,
            rejected=steps - (len(sol.t) - 1),
            own_nfe=int(sol.nfev),
        )

    return run


def main_runners() -> dict[str, Callable[[], Record]]:
    return {
        "dxdt tsit5 (pi)": dxdt_runner("tsit5", "pi"),
        "dxdt tsit5 (pi), compiled": dxdt_runner("tsit5", "pi", compile=True),
        "dxdt dopri5 (pi), compiled": dxdt_runner("dopri5", "pi", compile=True),
        "dxdt tsit5 (i)": dxdt_runner("tsit5", "i"),
        "dxdt dopri5 (pi)": dxdt_runner("dopri5", "pi"),
        "dxdt dopri5 (i)": dxdt_runner("dopri5", "i"),
        BASELINE: torchdiffeq_runner("dopri5"),
        "torchode dopri5": torchode_runner("dopri5"),
        "torchode tsit5": torchode_runner("tsit5"),
        "scipy RK45": scipy_runner("RK45"),
        "scipy DOP853": scipy_runner("DOP853"),
    }


def context_runners() -> dict[str, Callable[[], Record]]:
    """The same higher-order method in both libraries (torchdiffeq's controller is the I controller)."""
    return {
        "dxdt dopri8 (i)": dxdt_runner("dopri8", "i"),
        "torchdiffeq dopri8": torchdiffeq_runner("dopri8"),
    }


def results_table(timings, records, ref: np.ndarray, baseline: float) -> str:
    rows = []
    for name, timing in timings.items():
        rec = records[name]
        own = "" if rec["own_nfe"] is None else f" ({rec['own_nfe']})"
        rows.append(
            [
                name,
                *timing_cells(timing),
                fmt_ratio(timing.median / baseline),
                f"{rec['calls']}{own}",
                f"{rec['steps']} ({rec['rejected']})",
                f"{timing.median / rec['steps'] * 1e6:.0f}",
                fmt_sci(float(np.abs(rec["y1"] - ref).max())),
            ]
        )
    headers = [
        "method",
        "time (median)",
        "min",
        "IQR/median",
        f"vs {BASELINE}",
        "f calls (own count)",
        "steps (rejected)",
        "µs/step",
        "max abs error at t1",
    ]
    return markdown_table(headers, rows)


PROFILE_T1 = 3.0  # a shorter run: building the profiler's event tree costs far more than the solve


def lv_labelled(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.profiler.record_function("user f"):
        return lv_torch(t, y)


def op_profile() -> str:
    """Top-level aten ops per attempted step, from ``torch.profiler``, split into the vector field's and the rest."""
    from torch.profiler import ProfilerActivity, profile

    cases = {
        "dxdt dopri5 (i)": dxdt_runner("dopri5", "i", PROFILE_T1, lv_labelled),
        "dxdt tsit5 (i)": dxdt_runner("tsit5", "i", PROFILE_T1, lv_labelled),
        BASELINE: torchdiffeq_runner("dopri5", PROFILE_T1, lv_labelled),
        "torchode dopri5": torchode_runner("dopri5", PROFILE_T1, lv_labelled),
        "torchode tsit5": torchode_runner("tsit5", PROFILE_T1, lv_labelled),
    }

    def in_f(event) -> bool:
        while event is not None:
            if event.name == "user f":
                return True
            event = event.cpu_parent
        return False

    rows, tops = [], []
    for name, run in cases.items():
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rec = run()
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        top_level = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        solver_ops = [e for e in top_level if not in_f(e)]
        steps = rec["steps"]
        counts = collections.Counter(e.name for e in solver_ops)
        syncs = counts["aten::item"] + counts["aten::is_nonzero"] + counts["aten::_local_scalar_dense"]
        rows.append(
            [
                name,
                steps,
                f"{(len(top_level) - len(solver_ops)) / steps:.0f}",
                f"{len(solver_ops) / steps:.0f}",
                f"{syncs / steps:.1f}",
            ]
        )
        top = ", ".join(f"{op.removeprefix('aten::')} {n / steps:.1f}" for op, n in counts.most_common(10))
        tops.append(f"- **{name}**: {top}")
    table = markdown_table(
        [
            "method",
            "steps",
            "ops/step in f",
            "ops/step outside f",
            "host syncs/step (item, is_nonzero)",
        ],
        rows,
    )
    return (
        "Top-level aten ops (those not called from another aten op) per attempted step; *in f* are the vector "
        "field's own (6 calls a step, the same in every library). Unlike times, op counts do not "
        "depend on the machine's load.\n\n" + table + "\n\nMost frequent ops outside f, per step:\n\n" + "\n".join(tops)
    )


def run(quick: bool = False) -> str:
    single_thread()
    ref, ref_spread = references()
    repeats = 5 if quick else 15
    timings, records = time_interleaved(main_runners(), repeats=repeats, warmup=1, budget_s=40 if quick else 100)
    baseline = timings[BASELINE].median
    ctx_timings, ctx_records = time_interleaved(context_runners(), repeats=1 if quick else 3, warmup=0, budget_s=30)
    n = len(next(iter(timings.values())).times)
    out = [
        "## (a) Lotka–Volterra, single system, float64",
        "",
        f"α={ALPHA}, β={BETA}, γ={GAMMA}, δ={DELTA}, y0={Y0}, t ∈ [{T0}, {T1}], rtol = atol = {RTOL:g}. "
        f"Median of {n} interleaved repeats after one warm-up. Reference: scipy DOP853 at rtol = atol = 1e-13 "
        f"(differs from Radau at 1e-13 by {ref_spread:.1e}). *f calls* are counted by the same wrapper for every "
        "library (in brackets: the library's own count: dxdt `sol.stats.n_f_evals`, torchode `stats['n_f_evals']`, "
        "scipy `nfev`). *steps* are attempted steps (accepted + rejected); torchdiffeq's are counted through its "
        "`callback_accept_step`/`callback_reject_step` hooks.",
        "",
        results_table(timings, records, ref, baseline),
        "",
        f"Same method in both libraries, I controller (context; {1 if quick else 3} repeat(s), no warm-up beyond "
        "the main run). torchdiffeq's bosh3 (third order) needs ~5600 steps here "
        "(≈10 s a solve on this machine), and adaptive_heun and fehlberg2 (second order) ~10^5 or more, so they "
        "are left out to keep the run short.",
        "",
        results_table(ctx_timings, ctx_records, ref, baseline),
        "",
        f"### Where the time goes: aten ops per attempted step (torch.profiler, one solve over [{T0}, {PROFILE_T1}])",
        "",
        op_profile(),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    print(run(parser.parse_args().quick))
