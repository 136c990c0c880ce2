"""Level-5 tests: nonstiff problems against reference solutions computed with scipy's DOP853 at rtol 1e-13.

Problems: Lotka–Volterra (α=1.5, β=1, γ=3, δ=1, y0=(1, 1), t ∈ [0, 20]); Van der Pol with μ = 1, 2, 5 as one
per-sample solve (μ passed through ``args``, y0=(2, 0), t ∈ [0, 10]); the Arenstorf orbit (restricted
three-body problem, one period); and the DETEST problems (Hull, Enright, Fellen & Sedgwick, SIAM J. Numer.
Anal. 9 (1972) 603–637) A2 (y' = −y³/2), A3 (y' = y cos t, non-autonomous), B1 (a growth model) and B5
(Euler's equations of a rigid body), on [0, 20].

Error measure: with ``rtol = atol = tol`` the controller keeps each step's local error below
``tol·(1 + |y|)`` (per component, in the RMS norm); we report ``max |y − y_ref| / (tol·(1 + |y_ref|))``.
The global error is the sum of the local errors, each carried to the end by the flow of the ODE, so the
bound to expect is (amplification of the flow) × (a modest factor for accumulation). For the well-conditioned
problems here the linearised flow amplifies perturbations at most ~6× (‖Φ(t1, 0)‖₂ ≈ 5.9 for Lotka–Volterra,
3.7 for B1, 2.8–4.5 for Van der Pol), and the measured ratios are 0.0004–50: ``FACTOR = 100``. The Arenstorf orbit
passes close to the moon twice; its flow amplifies perturbations of y0 by ‖Φ(T, 0)‖₂ ≈ 2.3e6, and the
measured ratios are 70–3.7e4: ``FACTOR_ARENSTORF = 2e5``, still a small fraction of the worst case.

A thousandfold tighter tolerance must reduce the error at least tenfold (tolerance proportionality; with
error-per-step control the error scales like ``tol^(p/(p+1))``, a factor ≥ 1000^(3/4) ≈ 180 for p ≥ 3).
Both tolerances run in one solve, as two samples with per-sample ``rtol``/``atol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import dxdt

F64 = torch.float64
FACTOR = 100.0
FACTOR_ARENSTORF = 2e5
MIN_GAIN = 10.0  # the error must shrink at least this much from the loose to the tight tolerance
TOLS = {"tsit5": (1e-6, 1e-9), "dopri5": (1e-6, 1e-9), "dopri8": (1e-6, 1e-9), "vern7": (1e-6, 1e-9)}
# Bosh3 (order 3) needs ~10x the steps per decade of tolerance: a looser pair, on the easier problems.
TOLS_BOSH3 = (1e-4, 1e-6)

ARENSTORF_MU = 0.012277471
ARENSTORF_T = 17.0652165601579625588917206249  # the period (Hairer, Nørsett & Wanner, Solving ODEs I, II.0)
ARENSTORF_Y0 = (0.994, 0.0, 0.0, -2.00158510637908252240537862224)
VDP_MU = (1.0, 2.0, 5.0)

# Bug: Python floats for t0/t1 (and save times given as lists) pass through torch's float32 default dtype
# before becoming float64 (torch.as_tensor(1.2) is float32), so t1 = 1.2 integrates to 1.2000000476837158.
# Until that is fixed, the tests below give times as float64 tensors; the xfail tests at the end expose it.
FLOAT32_TIMES_BUG = "bug: Python-float times are rounded to float32 (torch.as_tensor of a float uses the default dtype)"


def _stack(*cols):
    return torch.stack(cols, dim=-1) if isinstance(cols[0], torch.Tensor) else np.stack(cols)


# Vector fields written once for both torch ((B, S) states, (B, 1) times) and numpy ((S,) states).
def lotka_volterra(t, y, args=None):
    x, z = y[..., 0], y[..., 1]
    return _stack(1.5 * x - x * z, x * z - 3.0 * z)


def van_der_pol(t, y, mu):
    x, v = y[..., 0], y[..., 1]
    mu = mu[..., 0] if isinstance(mu, torch.Tensor) else mu
    return _stack(v, mu * (1 - x * x) * v - x)


def arenstorf(t, y, args=None):
    x, z, u, v = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    m, mp = ARENSTORF_MU, 1 - ARENSTORF_MU
    d1 = ((x + m) ** 2 + z**2) ** 1.5
    d2 = ((x - mp) ** 2 + z**2) ** 1.5
    return _stack(u, v, x + 2 * v - mp * (x + m) / d1 - m * (x - mp) / d2, z - 2 * u - mp * z / d1 - m * z / d2)


def detest_a2(t, y, args=None):
    return -0.5 * y**3


def detest_a3(t, y, args=None):
    return y * (torch.cos(t) if isinstance(y, torch.Tensor) else np.cos(t))


def detest_b1(t, y, args=None):
    x, z = y[..., 0], y[..., 1]
    return _stack(2 * (x - x * z), -(z - x * z))


def detest_b5(t, y, args=None):
    return _stack(y[..., 1] * y[..., 2], -y[..., 0] * y[..., 2], -0.51 * y[..., 0] * y[..., 1])


@dataclass(frozen=True)
class Problem:
    f: object
    y0: tuple[float, ...]
    t1: float
    factor: float = FACTOR


PROBLEMS = {
    "lotka_volterra": Problem(lotka_volterra, (1.0, 1.0), 20.0),
    "arenstorf": Problem(arenstorf, ARENSTORF_Y0, ARENSTORF_T, FACTOR_ARENSTORF),
    "detest_a2": Problem(detest_a2, (1.0,), 20.0),
    "detest_a3": Problem(detest_a3, (1.0,), 20.0),
    "detest_b1": Problem(detest_b1, (1.0, 3.0), 20.0),
    "detest_b5": Problem(detest_b5, (0.0, 1.0, 1.0), 20.0),
}
BOSH3_PROBLEMS = ("detest_a2", "detest_a3", "detest_b5")


@cache
def _reference(name: str, times: tuple[float, ...], mu: float | None = None) -> np.ndarray:
    """scipy DOP853 at rtol 1e-13 at the given (increasing) times: ``(T, S)``."""
    if name == "van_der_pol":
        f, y0 = (lambda t, y: van_der_pol(t, y, mu)), (2.0, 0.0)
    else:
        problem = PROBLEMS[name]
        f, y0 = problem.f, problem.y0
    sol = solve_ivp(f, (0.0, times[-1]), y0, method="DOP853", rtol=1e-13, atol=1e-14, t_eval=times)
    assert sol.success, sol.message
    return sol.y.T


def _normalised_error(ys: torch.Tensor, ref: np.ndarray, tol) -> np.ndarray:
    """``max |y − y_ref| / (tol·(1 + |y_ref|))`` over times and components, per sample: ``(B, T, S) -> (B,)``."""
    ref = np.broadcast_to(ref, ys.shape)
    tol = np.asarray(tol, dtype=float).reshape(-1, 1, 1)
    return (np.abs(ys.detach().numpy() - ref) / (tol * (1 + np.abs(ref)))).reshape(ys.shape[0], -1).max(axis=1)


def _two_tolerances(tols) -> torch.Tensor:
    return torch.tensor(tols, dtype=F64)[:, None]


def _check(errors: np.ndarray, factor: float, label: str) -> None:
    """``errors``: normalised errors at the loose and the tight tolerance."""
    assert np.all(errors <= factor), f"{label}: error / tolerance = {errors} exceeds {factor}"


def _check_gain(abs_errors: np.ndarray, label: str) -> None:
    assert abs_errors[1] * MIN_GAIN <= abs_errors[0], f"{label}: absolute errors {abs_errors} at the two tolerances"


CASES = [(p, m) for p in PROBLEMS for m in TOLS] + [(p, "bosh3") for p in BOSH3_PROBLEMS]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_reference_at_t1(name, method):
    problem = PROBLEMS[name]
    tols = TOLS_BOSH3 if method == "bosh3" else TOLS[method]
    tol = _two_tolerances(tols)
    y0 = torch.tensor([problem.y0] * 2, dtype=F64)
    t1 = torch.tensor(problem.t1, dtype=F64)
    sol = dxdt.solve(problem.f, y0, 0.0, t1, solver=method, rtol=tol, atol=tol, max_steps=20_000)
    ref = _reference(name, (problem.t1,))
    errors = _normalised_error(sol.ys, ref, tols)
    _check(errors, problem.factor, f"{name}/{method}")
    _check_gain(errors * np.asarray(tols), f"{name}/{method}")


@pytest.mark.parametrize("method", list(TOLS))
def test_van_der_pol_batched_mu(method):
    """μ = 1, 2, 5, each at both tolerances: one per-sample solve of six samples, μ through ``args``."""
    tols = TOLS[method]
    mu = torch.tensor(VDP_MU * 2, dtype=F64)[:, None]
    tol = torch.tensor([tols[0]] * 3 + [tols[1]] * 3, dtype=F64)[:, None]
    y0 = torch.tensor([[2.0, 0.0]] * 6, dtype=F64)
    sol = dxdt.solve(van_der_pol, y0, 0.0, 10.0, args=mu, solver=method, rtol=tol, atol=tol)
    ref = np.stack([_reference("van_der_pol", (10.0,), float(m)) for m in mu[:, 0]])
    errors = _normalised_error(sol.ys, ref, tol[:, 0])
    _check(errors, FACTOR, f"van_der_pol/{method}")
    abs_errors = errors * tol[:, 0].numpy()
    for i, m in enumerate(VDP_MU):
        _check_gain(abs_errors[[i, i + 3]], f"van_der_pol μ={m}/{method}")


@pytest.mark.parametrize("method", list(TOLS))
def test_reference_per_sample_save_times(method):
    """Van der Pol μ = 1, 2, 5, each saved at its own ``(B, T)`` times."""
    tol = 1e-8
    mu = torch.tensor(VDP_MU, dtype=F64)[:, None]
    times = ((0.5, 3.0, 6.5, 10.0), (1.0, 1.7, 4.2, 9.1), (0.25, 2.0, 5.5, 8.0))
    ts = torch.tensor(times, dtype=F64)
    y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64)
    sol = dxdt.solve(van_der_pol, y0, 0.0, 10.0, args=mu, solver=method, rtol=tol, atol=tol, saveat=ts)
    assert sol.ts.shape == (3, 4) and torch.equal(sol.ts, ts)
    ref = np.stack([_reference("van_der_pol", times[i], m) for i, m in enumerate(VDP_MU)])
    _check(_normalised_error(sol.ys, ref, tol), FACTOR, f"van_der_pol per-sample ts/{method}")


@pytest.mark.parametrize("method", list(TOLS))
def test_reference_shared_save_times(method):
    """Lotka–Volterra saved at shared times across the interval, including t1."""
    tol = 1e-8
    times = tuple(float(t) for t in np.linspace(2.5, 20.0, 8))
    y0 = torch.tensor([[1.0, 1.0]], dtype=F64)
    sol = dxdt.solve(
        lotka_volterra, y0, 0.0, 20.0, solver=method, rtol=tol, atol=tol, saveat=torch.tensor(times, dtype=F64)
    )
    assert sol.ys.shape == (1, len(times), 2)
    _check(_normalised_error(sol.ys, _reference("lotka_volterra", times), tol), FACTOR, f"lotka_volterra ts/{method}")


def test_arenstorf_orbit_closes():
    """The reference itself: after one period the orbit returns to its start (a check on the scipy reference)."""
    ref = _reference("arenstorf", (ARENSTORF_T,))[-1]
    np.testing.assert_allclose(ref, ARENSTORF_Y0, atol=1e-8)


def test_python_float_t1_is_exact():
    y0 = torch.ones(1, 1, dtype=F64)
    sol = dxdt.solve(detest_a2, y0, 0.0, ARENSTORF_T, solver="tsit5")
    assert sol.t_final.item() == ARENSTORF_T  # float32 rounding gives 17.065216064453125
    assert sol.ts.flatten()[-1].item() == ARENSTORF_T


def test_python_float_save_times_are_exact():
    y0 = torch.ones(1, 1, dtype=F64)
    sol = dxdt.solve(detest_a2, y0, 0.0, 1.0, solver="tsit5", saveat=[0.1, 0.7], rtol=1e-10, atol=1e-10)
    assert sol.ts.flatten().tolist() == [0.1, 0.7]
    exact = 1 / np.sqrt(1 + np.array([0.1, 0.7]))  # DETEST A2: y = 1/sqrt(1 + t)
    np.testing.assert_allclose(sol.ys.flatten().numpy(), exact, rtol=1e-8)
