"""Level-1 tests of the stiff tableaus (Rosenbrock and ESDIRK) with small float64 numpy reference steppers.

The steppers here are written from the conventions documented in :mod:`dxdt._tableau`, independently of the
library's torch solvers, so they check the DATA: a transcription error or a sign-convention mismatch (e.g.
OrdinaryDiffEq's ``W = J − I/(dt γ)``) shows up as a wrong empirical order.

Test problem: a manufactured, nonlinear, non-autonomous 2-D system ``y' = F(y) + u'(t) − F(u(t))`` with exact
solution ``u``, so that the ``d_i ∂f/∂t`` terms of the Rosenbrock methods and the stage times ``c`` matter.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from dxdt._tableau import DIRKTableau, RosenbrockTableau
from dxdt.tableaus import KVAERNO3, KVAERNO4, KVAERNO5, RODAS4, RODAS5P, STIFF_TABLEAUS, TABLEAUS

ROSENBROCK = {"rodas4": RODAS4, "rodas5p": RODAS5P}
DIRK = {"kvaerno3": KVAERNO3, "kvaerno4": KVAERNO4, "kvaerno5": KVAERNO5}

# --------------------------------------------------------------------------------------------------------
# Reference steppers


def rosenbrock_step(tab: RosenbrockTableau, f, jac, dfdt, t: float, y: np.ndarray, dt: float):
    """One step in the transformed form: ``(I/(dt γ) − J) U_i = f(t + c_i dt, y + Σ a_ij U_j)
    + Σ (C_ij/dt) U_j + dt d_i ∂f/∂t``. Returns ``(y1, err, U)``."""
    s = tab.stages
    J = jac(t, y)
    W = np.eye(len(y)) / (dt * tab.gamma) - J
    ft = dfdt(t, y)
    U: list[np.ndarray] = []
    for i in range(s):
        yi = y + sum((a * u for a, u in zip(tab.a[i], U)), np.zeros_like(y))
        rhs = f(t + tab.c[i] * dt, yi) + sum((C / dt * u for C, u in zip(tab.C[i], U)), np.zeros_like(y))
        U.append(np.linalg.solve(W, rhs + dt * tab.d[i] * ft))
    y1 = y + sum(m * u for m, u in zip(tab.m, U))
    err = sum(m * u for m, u in zip(tab.m_err, U))
    return y1, err, U


def rosenbrock_dense(tab: RosenbrockTableau, y0: np.ndarray, y1: np.ndarray, U, theta: float) -> np.ndarray:
    """``(1 − θ) y0 + θ (y1 + (1 − θ)(h_1 + θ (h_2 + θ h_3 ...)))`` with ``h_k = Σ_j H_kj U_j``."""
    h = [sum(H * u for H, u in zip(row, U)) for row in tab.dense]
    inner = h[-1]
    for hk in reversed(h[:-1]):
        inner = hk + theta * inner
    return (1 - theta) * y0 + theta * (y1 + (1 - theta) * inner)


def dirk_step(tab: DIRKTableau, f, jac, dfdt, t: float, y: np.ndarray, dt: float):
    """One DIRK step; each implicit stage ``Z = y + dt Σ_{j<i} a_ij k_j + dt a_ii f(t + c_i dt, Z)`` is solved
    by Newton's method to 1e-14. Returns ``(y1, err, k)``."""
    del dfdt
    k: list[np.ndarray] = []
    n = len(y)
    for i in range(tab.stages):
        ti = t + tab.c[i] * dt
        base = y + dt * sum((a * kj for a, kj in zip(tab.a[i][:-1], k)), np.zeros_like(y))
        aii = tab.a[i][-1]
        Z = base.copy()
        if aii != 0.0:
            for _ in range(50):
                G = Z - base - dt * aii * f(ti, Z)
                dZ = np.linalg.solve(np.eye(n) - dt * aii * jac(ti, Z), -G)
                Z = Z + dZ
                if np.max(np.abs(dZ)) <= 1e-14 * (1 + np.max(np.abs(Z))):
                    break
            else:
                raise RuntimeError("Newton did not converge")
        k.append(f(ti, Z))
    y1 = y + dt * sum(b * kj for b, kj in zip(tab.b, k))
    err = dt * sum(b * kj for b, kj in zip(tab.b_err, k))
    return y1, err, k


STEPPERS = {RosenbrockTableau: rosenbrock_step, DIRKTableau: dirk_step}


def integrate(tab, problem, n: int, embedded: bool = False) -> np.ndarray:
    """``n`` equal steps over ``[t0, t1]``; with ``embedded`` the embedded solution ``y1 − err`` is propagated."""
    step = STEPPERS[type(tab)]
    t0, t1 = problem.span
    dt = (t1 - t0) / n
    y = problem.y0.copy()
    for i in range(n):
        y1, err, _ = step(tab, problem.f, problem.jac, problem.dfdt, t0 + i * dt, y, dt)
        y = y1 - err if embedded else y1
    return y


def observed_order(tab, problem, ns, embedded: bool = False) -> float:
    """Least-squares slope of ``log(error)`` against ``log(dt)``."""
    errs = [np.max(np.abs(integrate(tab, problem, n, embedded) - problem.exact_t1)) for n in ns]
    slope = np.polyfit(np.log(1.0 / np.asarray(ns, dtype=float)), np.log(errs), 1)[0]
    return float(slope)


# --------------------------------------------------------------------------------------------------------
# Problems


@dataclasses.dataclass
class Problem:
    f: object
    jac: object
    dfdt: object
    y0: np.ndarray
    span: tuple[float, float]
    exact_t1: np.ndarray
    exact: object = None


def _F(y):
    return np.array([-y[0] * y[1], y[0] ** 2 - 2.0 * y[1]])


def _JF(y):
    return np.array([[-y[1], -y[0]], [2.0 * y[0], -2.0]])


def _u(t):
    return np.array([2.0 + math.sin(t), math.exp(-t) + 0.5 * math.sin(2 * t)])


def _du(t):
    return np.array([math.cos(t), -math.exp(-t) + math.cos(2 * t)])


def _ddu(t):
    return np.array([-math.sin(t), math.exp(-t) - 2.0 * math.sin(2 * t)])


def _nonautonomous() -> Problem:
    # y' = F(y) + u'(t) − F(u(t)) has the exact solution y = u.
    return Problem(
        f=lambda t, y: _F(y) + _du(t) - _F(_u(t)),
        jac=lambda t, y: _JF(y),
        dfdt=lambda t, y: _ddu(t) - _JF(_u(t)) @ _du(t),
        y0=_u(0.0),
        span=(0.0, 0.5),
        exact_t1=_u(0.5),
        exact=_u,
    )


def _vdp(mu: float = 2.0) -> Problem:
    def f(t, y):
        return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def jac(t, y):
        return np.array([[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1.0, mu * (1 - y[0] ** 2)]])

    y0 = np.array([2.0, 0.0])
    ref = solve_ivp(f, (0.0, 0.5), y0, method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]
    return Problem(f=f, jac=jac, dfdt=lambda t, y: np.zeros(2), y0=y0, span=(0.0, 0.5), exact_t1=ref)


NONAUT = _nonautonomous()
VDP = _vdp()

# Step counts in the asymptotic range (errors from ~1e-5 down to ~1e-13, well above rounding). On [0, 0.5]
# the leading error terms do not cancel; on [0, 1] the embedded Kvaerno5 solution's h^4 term nearly does.
NS = (8, 16, 32, 64)
TOL = 0.2


# --------------------------------------------------------------------------------------------------------
# Registry


def test_registry():
    assert STIFF_TABLEAUS == {
        "rodas4": RODAS4,
        "rodas5p": RODAS5P,
        "kvaerno3": KVAERNO3,
        "kvaerno4": KVAERNO4,
        "kvaerno5": KVAERNO5,
    }
    assert not set(STIFF_TABLEAUS) & set(TABLEAUS), "explicit and stiff registries must stay separate"
    assert [(t.order, t.embedded_order) for t in STIFF_TABLEAUS.values()] == [(4, 3), (5, 4), (3, 2), (4, 3), (5, 4)]
    assert (RODAS4.stages, RODAS5P.stages, KVAERNO3.stages, KVAERNO4.stages, KVAERNO5.stages) == (6, 8, 4, 5, 7)
    assert (len(RODAS4.dense), RODAS4.dense_order, len(RODAS5P.dense), RODAS5P.dense_order) == (2, 3, 3, 4)


# --------------------------------------------------------------------------------------------------------
# Convergence orders


@pytest.mark.parametrize("name", [*ROSENBROCK, *DIRK])
def test_order_nonautonomous(name):
    tab = STIFF_TABLEAUS[name]
    assert observed_order(tab, NONAUT, NS) == pytest.approx(tab.order, abs=TOL)
    assert observed_order(tab, NONAUT, NS, embedded=True) == pytest.approx(tab.embedded_order, abs=TOL)


@pytest.mark.parametrize("name", ROSENBROCK)
def test_rosenbrock_order_autonomous(name):
    tab = STIFF_TABLEAUS[name]
    assert observed_order(tab, VDP, NS) == pytest.approx(tab.order, abs=TOL)
    assert observed_order(tab, VDP, NS, embedded=True) == pytest.approx(tab.embedded_order, abs=TOL)


@pytest.mark.parametrize(
    "name, mutate",
    [
        ("rodas4", lambda t: dataclasses.replace(t, C=tuple(tuple(-x for x in row) for row in t.C))),
        ("rodas5p", lambda t: dataclasses.replace(t, C=tuple(tuple(-x for x in row) for row in t.C))),
        ("rodas4", lambda t: dataclasses.replace(t, d=(0.0,) * t.stages)),
        ("rodas5p", lambda t: dataclasses.replace(t, d=(0.0,) * t.stages)),
        ("rodas5p", lambda t: dataclasses.replace(t, c=t.d, d=t.c)),
    ],
    ids=["rodas4-C-flipped", "rodas5p-C-flipped", "rodas4-no-d", "rodas5p-no-d", "rodas5p-c-d-swapped"],
)
def test_order_test_detects_convention_errors(name, mutate):
    """The non-autonomous order test is sensitive to the sign of ``C`` and to the ``∂f/∂t`` weights ``d``."""
    tab = STIFF_TABLEAUS[name]
    with np.errstate(all="ignore"):  # a flipped C can overflow: a NaN order also counts as detected
        order = observed_order(mutate(tab), NONAUT, NS)
    assert not order >= tab.order - 0.8


def test_rosenbrock_c_d_consistent_with_a_C():
    """Applied to the autonomised system (t as a state), the transformed method must reproduce ``c`` and ``d``:
    the time component ``u_i = U_i^t/dt`` solves ``u_i/γ = 1 + Σ_j C_ij u_j``, then ``d_i = u_i`` and
    ``c_i = Σ_j a_ij u_j``; and ``y1`` advances time by exactly ``dt`` (``Σ m_i u_i = 1``)."""
    for tab in ROSENBROCK.values():
        u: list[float] = []
        for i in range(tab.stages):
            u.append(tab.gamma * (1.0 + sum(C * uj for C, uj in zip(tab.C[i], u))))
        np.testing.assert_allclose(u, tab.d, atol=1e-12)
        np.testing.assert_allclose(
            [sum(a * uj for a, uj in zip(tab.a[i], u)) for i in range(tab.stages)], tab.c, atol=1e-12
        )
        assert sum(m * ui for m, ui in zip(tab.m, u)) == pytest.approx(1.0, abs=1e-12)
        assert sum(m * ui for m, ui in zip(tab.m_err, u)) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------------
# Dense output


@pytest.mark.parametrize("name", ROSENBROCK)
def test_rosenbrock_dense_order(name):
    """One step from the exact solution: the local error of the dense output inside the step is O(dt^(q+1))."""
    tab = STIFF_TABLEAUS[name]
    t0 = 0.7
    y0 = NONAUT.exact(t0)
    hs = (0.1, 0.05, 0.025, 0.0125)
    errs = []
    for h in hs:
        y1, _, U = rosenbrock_step(tab, NONAUT.f, NONAUT.jac, NONAUT.dfdt, t0, y0, h)
        np.testing.assert_allclose(rosenbrock_dense(tab, y0, y1, U, 1.0), y1, rtol=0, atol=1e-14)
        np.testing.assert_allclose(rosenbrock_dense(tab, y0, y1, U, 0.0), y0, rtol=0, atol=1e-14)
        errs.append(
            max(
                np.max(np.abs(rosenbrock_dense(tab, y0, y1, U, theta) - NONAUT.exact(t0 + theta * h)))
                for theta in (0.25, 0.5, 0.75)
            )
        )
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert slope == pytest.approx(tab.dense_order + 1, abs=TOL)


# --------------------------------------------------------------------------------------------------------
# Stability


def stability_function(tab, z: complex) -> complex:
    """``R(z)``: one step of size 1 on ``y' = z y`` from ``y0 = 1`` with the reference stepper."""
    step = STEPPERS[type(tab)]
    y1, _, _ = step(
        tab,
        lambda t, y: z * y,
        lambda t, y: np.array([[z]]),
        lambda t, y: np.zeros(1, dtype=complex),
        0.0,
        np.ones(1, dtype=complex),
        1.0,
    )
    return complex(y1[0])


@pytest.mark.parametrize("name", [*ROSENBROCK, *DIRK])
def test_stability(name):
    tab = STIFF_TABLEAUS[name]
    # Sanity: R(z) ≈ e^z for small z.
    assert abs(stability_function(tab, -1e-2) - math.exp(-1e-2)) < 1e-9
    # L-stable: R(−∞) = 0.
    assert abs(stability_function(tab, -1e6)) < 1e-3
    # A-stable: |R| ≤ 1 on the imaginary axis (the poles, at 1/γ > 0, are in the right half-plane).
    for y in np.logspace(-2, 4, 13):
        assert abs(stability_function(tab, 1j * y)) <= 1.0 + 1e-12


# --------------------------------------------------------------------------------------------------------
# DIRK structure


@pytest.mark.parametrize("name", DIRK)
def test_dirk_structure(name):
    tab = STIFF_TABLEAUS[name]
    assert tab.stiffly_accurate
    assert tab.explicit_first_stage and tab.a[0] == (0.0,)
    assert len({row[-1] for row in tab.a[1:]}) == 1 and tab.gamma > 0
    # The embedded solution is the penultimate stage (b_hat = a[s-2] padded with 0).
    b_hat = np.asarray(tab.b) - np.asarray(tab.b_err)
    np.testing.assert_allclose(b_hat, (*tab.a[-2], 0.0), atol=1e-15)


@pytest.mark.parametrize("name", ROSENBROCK)
def test_rosenbrock_structure(name):
    """Stiffly accurate: ``y1`` is the last stage's argument plus ``U_s``, and the error estimate is ``U_s``."""
    tab = STIFF_TABLEAUS[name]
    assert tab.m == (*tab.a[-1], 1.0)
    assert tab.m_err == (0.0,) * (tab.stages - 1) + (1.0,)
    assert tab.c[-1] == 1.0 and tab.d[0] == tab.gamma


# --------------------------------------------------------------------------------------------------------
# Stiff problem: y' = λ (y − cos t), λ = −1e4, from the slow solution


def _prothero_robinson(lam: float) -> Problem:
    # Particular solution y_p = A cos t + B sin t (the slow manifold); y0 = y_p(0) puts us on it.
    B = -lam / (1 + lam**2)
    A = lam**2 / (1 + lam**2)

    def exact(t):
        return np.array([A * math.cos(t) + B * math.sin(t)])

    return Problem(
        f=lambda t, y: lam * (y - math.cos(t)),
        jac=lambda t, y: np.array([[lam]]),
        dfdt=lambda t, y: np.array([lam * math.sin(t)]),
        y0=exact(0.0),
        span=(0.0, 1.0),
        exact_t1=exact(1.0),
        exact=exact,
    )


@pytest.mark.parametrize("name", [*ROSENBROCK, *DIRK])
def test_stiff_linear_large_steps(name):
    """With |dt λ| = 1000 the methods follow the slow solution (an explicit method would blow up)."""
    tab = STIFF_TABLEAUS[name]
    problem = _prothero_robinson(-1e4)
    step = STEPPERS[type(tab)]
    y, dt = problem.y0.copy(), 0.1
    for i in range(10):
        y, err, _ = step(tab, problem.f, problem.jac, problem.dfdt, i * dt, y, dt)
        assert abs(y[0] - problem.exact((i + 1) * dt)[0]) < 1e-6  # measured: 2e-7 (Rodas4) ... 6e-10 (Rodas5P)
        assert abs(err[0]) < 5e-6  # the error estimate stays small too: no spurious rejections (measured <= 8e-7)
