"""Level-4 tests: empirical convergence orders of every method and of the dense output.

The problem is ``y' = A y`` with a non-normal 4×4 ``A`` (eigenvector condition number ≈ 3.3) whose
eigenvalues are ``±i`` and ``±1.6i``, solved with constant steps and compared with ``torch.linalg.matrix_exp``
in float64. The order is the least-squares slope of ``log(error)`` against ``log(dt)``.

Why a purely oscillatory spectrum: on ``y' = A y`` a Runge–Kutta step is ``R(dt A)`` (its stability
polynomial), so the error of a step is ``Σ_k c_k (dt λ)^k`` over the terms where ``R`` departs from
``exp``. For Tsit5 and Vern7 the leading constant is tiny compared with the next ones (``R`` matches
``exp`` to within 3% resp. 1.5% one order beyond the method's order), so the asymptotic slope only shows
for small ``dt λ``, just above roundoff. With imaginary ``λ`` the next term is a quarter turn out of phase
and perturbs ``|error|`` only at second order, which widens that window. A linear problem checks the
linear order conditions only (all two-stage second-order methods coincide here); the full order
conditions are checked on the tableaus in ``test_tableaus.py``.

Each window of steps below is chosen so that the error is in the asymptotic regime and at least ~1e-13
(relative), well above the accumulated roundoff of the finest run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dxdt

F64 = torch.float64
TOL = 0.2  # allowed deviation of the measured slope from the nominal order

_S = torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.0, 1.0, 0.7, 0.0], [0.3, 0.0, 1.0, 0.4], [0.0, -0.6, 0.0, 1.0]], dtype=F64)
_D = torch.tensor([[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.6], [0.0, 0.0, -1.6, 0.0]], dtype=F64)
A = _S @ _D @ torch.linalg.inv(_S)
Y0 = torch.tensor([[1.0, 0.5, -1.0, 0.3]], dtype=F64)

# method: (nominal order, t1, numbers of steps). Even step counts so that the batched test can halve them; t1
# values exactly representable in float32 (Python-float times currently pass through float32, see
# test_reference.py).
CONFIG = {
    "euler": (1, 1.0, [64, 90, 128, 180]),
    "midpoint": (2, 2.0, [16, 24, 32, 48]),
    "heun": (2, 2.0, [16, 24, 32, 48]),
    "ralston": (2, 2.0, [16, 24, 32, 48]),
    "rk4": (4, 2.0, [16, 24, 32, 48]),
    "bosh3": (3, 2.0, [16, 24, 32, 48]),
    "dopri5": (5, 2.0, [16, 24, 32, 48]),
    "tsit5": (5, 1.5, [42, 60, 84, 120]),
    "dopri8": (8, 4.0, [8, 12, 16, 24]),
    "vern7": (7, 3.0, [16, 22, 32, 44]),
}


def _linear(t, y, scale):
    return scale * (y @ A.T)


def _exact(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``exp(s_b t_bq A) y0`` for times ``t`` ``(B, Q)`` and scales ``(B, 1)``: ``(B, Q, 4)``."""
    return torch.linalg.matrix_exp((scale[:, :, None, None] * t[:, :, None, None]) * A) @ Y0[0]


def _fixed_step_solve(method: str, t1: float, dt, scale: torch.Tensor, saveat=None) -> dxdt.Solution:
    """Constant steps for every method. For adaptive methods the constant controller still applies the accept
    test (see ``test_constant_controller_ignores_error_estimate``), so ``atol`` is made huge to accept every
    step: the step sequence is then exactly ``dt0``, ``dt0``, ... as for the fixed-step methods."""
    y0 = Y0.expand(scale.shape[0], -1)
    return dxdt.solve(
        _linear,
        y0,
        0.0,
        t1,
        args=scale,
        solver=method,
        dt0=dt,
        controller=dxdt.ConstantStepController(),
        rtol=0.0,
        atol=1e10,
        saveat=saveat,
        max_steps=100_000,
    )


def _slope(dts, errors) -> float:
    return float(np.polyfit(np.log(dts), np.log(errors), 1)[0])


def _relative_error(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Largest relative error over the time axis: ``(B, Q, S) -> (B,)``."""
    return ((y - exact).norm(dim=-1) / exact.norm(dim=-1)).amax(dim=-1)


@pytest.mark.parametrize("method", list(CONFIG))
def test_convergence_order(method):
    order, t1, ns = CONFIG[method]
    scale = torch.ones(1, 1, dtype=F64)
    exact = _exact(torch.tensor([[t1]], dtype=F64), scale)
    errors = []
    for n in ns:
        sol = _fixed_step_solve(method, t1, t1 / n, scale)
        # The steps really are the constant ones, for the adaptive methods as well.
        assert sol.stats.n_steps.tolist() == [n] and sol.stats.n_rejected.tolist() == [0]
        errors.append(float(_relative_error(sol.ys, exact)[0]))
    slope = _slope([t1 / n for n in ns], errors)
    assert abs(slope - order) <= TOL, f"{method}: slope {slope:.3f}, errors {errors}"


@pytest.mark.parametrize("method", list(CONFIG))
def test_convergence_order_per_sample(method):
    """A batch of ``y' = s_b A y`` with ``s = (0.5, 1, 2)`` passed per sample through ``args``, each sample
    with its own constant step ``dt / s_b`` (so that ``dt λ`` stays in the asymptotic window): every sample
    has its own step count and converges at the method's order."""
    order, t1, ns = CONFIG[method]
    scale = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64)
    exact = _exact(torch.full((3, 1), t1, dtype=F64), scale)
    errors = []
    for n in ns:
        sol = _fixed_step_solve(method, t1, (t1 / n) / scale[:, 0], scale)
        assert sol.stats.n_steps.tolist() == [n // 2, n, 2 * n]
        errors.append(_relative_error(sol.ys, exact))
    errors = torch.stack(errors, dim=1)  # (B, len(ns))
    for b in range(3):
        slope = _slope([t1 / n for n in ns], errors[b].tolist())
        assert abs(slope - order) <= TOL, f"{method}, sample {b}: slope {slope:.3f}, errors {errors[b].tolist()}"


# Dense output. At a point inside a step the error is the global error at the step's start, propagated
# through the step (O(dt^p)), plus the interpolant's own local error, O(dt^(q+1)) for an interpolant of order
# q, which is not propagated further. Hence the global order of the dense output is min(p, q + 1):
# * Dopri5, Tsit5: own continuous extensions of order q = 4 -> min(5, 5) = 5;
# * the others: cubic Hermite (local error dt^4 θ²(1-θ)² y''''/24, so q = 3) -> min(p, 4): the method's own
#   order for Heun (2), Bosh3 (3) and RK4 (4), but only 4 for DOP853 (order 8): its dense output is limited
#   by the interpolant (which is why DOP853 and Vern7 shorten their steps to land on requested save times).

# method: (expected order, t1, numbers of steps). Tsit5 on a short interval: there the interpolant's own
# error dominates, and its asymptotic slope shows for larger steps than that of the propagated error.
DENSE = {
    "heun": (2, 2.0, [32, 48, 64, 96]),
    "bosh3": (3, 2.0, [16, 24, 32, 48]),
    "rk4": (4, 2.0, [32, 48, 64, 96]),
    "dopri5": (5, 2.0, [16, 24, 32, 48]),
    "tsit5": (5, 1.0, [14, 20, 28, 40]),
    "dopri8": (4, 2.0, [16, 24, 32, 48]),
}
THETAS = (0.3, 0.5, 0.8)  # where inside each step the dense output is evaluated


@pytest.mark.parametrize("method", list(DENSE))
def test_dense_output_order(method):
    expected, t1, ns = DENSE[method]
    scale = torch.ones(1, 1, dtype=F64)
    errors = []
    for n in ns:
        dt = t1 / n
        sol = _fixed_step_solve(method, t1, dt, scale, saveat=dxdt.SaveAt(dense=True))
        tq = (torch.arange(n, dtype=F64)[:, None] + torch.tensor(THETAS, dtype=F64)).flatten() * dt
        errors.append(float(_relative_error(sol.evaluate(tq), _exact(tq[None], scale))[0]))
    slope = _slope([t1 / n for n in ns], errors)
    assert abs(slope - expected) <= TOL, f"{method}: dense slope {slope:.3f}, errors {errors}"


def test_constant_controller_ignores_error_estimate():
    """A constant step controller fixes the steps, whatever the error estimate says (diffrax's
    ``ConstantStepSize``, torchdiffeq's fixed-grid methods): a rejected step could only be retried unchanged."""
    scale = torch.ones(1, 1, dtype=F64)
    sol = dxdt.solve(
        _linear,
        Y0,
        0.0,
        2.0,
        args=scale,
        solver="tsit5",
        dt0=0.5,
        controller=dxdt.ConstantStepController(),
        max_steps=50,
    )
    assert sol.stats.n_steps.tolist() == [4]
    assert sol.stats.n_rejected.tolist() == [0]
