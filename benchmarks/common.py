"""Shared benchmark machinery: single-threaded setup, interleaved median timing, scipy references, counters, tables.

Every benchmark script sets the thread environment variables itself before importing numpy (they are read at
import time); :func:`single_thread` then pins torch to one intra- and one inter-op thread.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def single_thread() -> None:
    """One thread per library: torch intra/inter-op pools; numpy/scipy BLAS via the env vars set before import."""
    for var in THREAD_VARS:
        if os.environ.get(var) != "1":
            raise RuntimeError(f"{var} must be 1 before numpy is imported (set it at the top of the script)")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or the pool already started: harmless for these CPU benchmarks
        pass


# ---------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall times of the repeats (seconds), after warm-up."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        """The least disturbed repeat: a useful second opinion on a loaded machine."""
        return min(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: how noisy the repeats were."""
        if len(self.times) < 4:
            return (max(self.times) - min(self.times)) / self.median
        q = statistics.quantiles(self.times, n=4)
        return (q[2] - q[0]) / self.median


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Median wall time of each callable, the callables interleaved within every repeat.

    The machine is shared, so the load drifts: running every library once per repeat (in a rotating order)
    lets them see the same load, and the median discards the outliers. ``budget_s`` stops the repeats early
    (after ``min_repeats``) when they take longer than that in total.

    Returns:
        the timings, and the return value of each callable's last run (for NFE, steps and accuracy).
    """
    names = list(fns)
    last: dict[str, Any] = {}
    for _ in range(warmup):
        for name in names:
            last[name] = fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t = time.perf_counter()
            last[name] = fns[name]()
            times[name].append(time.perf_counter() - t)
        if budget_s is not None and r + 1 >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return {name: Timing(ts) for name, ts in times.items()}, last


# ---------------------------------------------------------------------------------------------------- counting


class CountingField:
    """Wraps a vector field and counts its calls (one call = one batched evaluation), for every library alike.

    Also counts torchdiffeq's accepted/rejected steps through its callback hooks, which torchdiffeq looks up as
    attributes of the function it is given.
    """

    def __init__(self, f: Callable[..., Any]):
        self.f = f
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.accepted = 0
        self.rejected = 0
        self.step_ends: list[float] = []

    def __call__(self, t: Any, y: Any) -> Any:
        self.calls += 1
        return self.f(t, y)

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.accepted += 1
        self.step_ends.append(float((t0 + dt).detach()))

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected += 1


# ---------------------------------------------------------------------------------------------------- references


def scipy_final_state(
    fun: Callable[[float, np.ndarray], np.ndarray],
    t_span: tuple[float, float],
    y0: Sequence[float],
    method: str = "DOP853",
    rtol: float = 1e-13,
    atol: float = 1e-13,
) -> np.ndarray:
    """y(t1) from scipy's ``solve_ivp`` at tight tolerances (DOP853 for nonstiff, Radau for stiff problems)."""
    sol = solve_ivp(fun, t_span, np.asarray(y0, dtype=np.float64), method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy reference failed ({method}): {sol.message}")
    return sol.y[:, -1]


def cached_array(name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, cached in ``benchmarks/.cache/<name>-<hash of key>.npz`` (gitignored)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = CACHE_DIR / f"{name}-{digest}.npz"
    if path.exists():
        with np.load(path) as data:
            return data["value"]
    value = compute()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, value=value, key=np.array(key))
    return value


# ---------------------------------------------------------------------------------------------------- reporting


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_sci(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1e}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×"


def timing_cells(timing: Timing) -> list[str]:
    """The median, min and IQR/median columns of every timing table."""
    return [fmt_time(timing.median), fmt_time(timing.min), f"{timing.spread:.0%}"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    align = []
    for j in range(len(headers)):
        column = [row[j] for row in rows]
        numeric = column and all(isinstance(c, (int, float)) or _looks_numeric(str(c)) for c in column)
        align.append("---:" if numeric else ":---")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _looks_numeric(s: str) -> bool:
    return bool(s) and (s[0].isdigit() or s[0] in "-+.—")


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load average (1, 5, 15 min)": load,
    }


def versions() -> dict[str, str]:
    import scipy
    import torchdiffeq
    import torchode

    import dxdt

    return {
        "dxdt": dxdt.__version__,
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "torchode": torchode.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
    }
