"""Level-1 tests of the Butcher tableaus: validation, order conditions via rooted trees, dense output.

Order conditions (Butcher): a Runge–Kutta method ``(A, b)`` has order ``p`` iff for every rooted tree ``t``
with ``|t| <= p`` nodes, ``Σ_i b_i Φ_i(t) = 1/γ(t)``, where the stage weights are ``Φ(•) = 1`` and
``Φ([t_1, ..., t_m]) = Π_j (A Φ(t_j))`` (component-wise product), and the density is
``γ(t) = |t| Π_j γ(t_j)``. A dense output ``b(θ)`` of order ``q`` satisfies
``Σ_i b_i(θ) Φ_i(t) = θ^{|t|}/γ(t)`` for ``|t| <= q``.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from dxdt._tableau import ButcherTableau
from dxdt.tableaus import TABLEAUS

# A rooted tree is the sorted tuple of the subtrees hanging from its root; the single node is ``()``.
Tree = tuple

MAX_ORDER = 9  # DOP853 has order 8, and we check that order 9 fails.

# Relative tolerance of a satisfied condition (rounding of float64 coefficients) and the smallest relative
# defect that counts as a violated one.
RTOL = 1e-12
DEFECT = 1e-6

EXPECTED = {
    # name: (order, embedded_order, fsal, adaptive, has_dense)
    "euler": (1, None, False, False, False),
    "midpoint": (2, None, False, False, False),
    "heun": (2, 1, False, True, False),
    "ralston": (2, None, False, False, False),
    "rk4": (4, None, False, False, False),
    "bosh3": (3, 2, True, True, False),
    "dopri5": (5, 4, True, True, True),
    "tsit5": (5, 4, True, True, True),
    "dopri8": (8, 5, False, True, False),
    "vern7": (7, 6, False, True, False),
}
REQUIRED = {"euler", "midpoint", "heun", "ralston", "bosh3", "rk4", "dopri5", "tsit5", "dopri8"}


# --------------------------------------------------------------------------------------------------------
# Rooted trees


def _graft(t: Tree) -> set[Tree]:
    """All trees obtained from ``t`` by attaching one new leaf to one of its nodes."""
    out = {tuple(sorted((*t, ())))}
    for j, child in enumerate(t):
        if j > 0 and child == t[j - 1]:
            continue
        for g in _graft(child):
            out.add(tuple(sorted((*t[:j], g, *t[j + 1 :]))))
    return out


@cache
def trees_of_order(n: int) -> tuple[Tree, ...]:
    if n == 1:
        return ((),)
    return tuple(sorted({g for t in trees_of_order(n - 1) for g in _graft(t)}))


@cache
def size(t: Tree) -> int:
    return 1 + sum(size(u) for u in t)


@cache
def density(t: Tree) -> int:
    return size(t) * math.prod(density(u) for u in t)


def stage_weights(A: np.ndarray, max_order: int) -> dict[Tree, np.ndarray]:
    """``Φ(t)`` (a vector over the stages) for every tree with at most ``max_order`` nodes."""
    phi: dict[Tree, np.ndarray] = {}
    ones = np.ones(A.shape[0])
    for n in range(1, max_order + 1):
        for t in trees_of_order(n):
            v = ones.copy()
            for u in t:
                v = v * (A @ phi[u])
            phi[t] = v
    return phi


def test_tree_generator_counts():
    # OEIS A000081: number of rooted trees with n nodes.
    assert [len(trees_of_order(n)) for n in range(1, MAX_ORDER + 1)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]
    # Densities of the order-4 trees: bushy [•,•,•] = 4, [•,[•]] = 8, [[•,•]] = 12, tall [[[•]]] = 24.
    assert sorted(density(t) for t in trees_of_order(4)) == [4, 8, 12, 24]
    assert all(size(t) == 5 for t in trees_of_order(5))


# --------------------------------------------------------------------------------------------------------
# Helpers on tableaus


def matrix(tab: ButcherTableau, stages: int) -> np.ndarray:
    """The coefficient matrix ``A``; with ``stages == s + 1`` the extra stage is ``f(t0 + h, y1)``:
    ``c = 1`` and ``a = b``."""
    s = tab.stages
    A = np.zeros((stages, stages))
    for i, row in enumerate(tab.a):
        A[i, :i] = row
    if stages == s + 1:
        A[s, :s] = tab.b
    else:
        assert stages == s
    return A


def defects(A: np.ndarray, weights: np.ndarray, order: int, theta: float = 1.0) -> list[tuple[Tree, float, float]]:
    """For each tree with ``order`` nodes: ``(tree, defect, tolerance)`` of ``Σ w_i Φ_i(t) = θ^|t|/γ(t)``."""
    phi = stage_weights(A, order)
    out = []
    for t in trees_of_order(order):
        target = theta ** size(t) / density(t)
        terms = weights * phi[t]
        defect = math.fsum(terms) - target
        tol = RTOL * (float(np.abs(terms).sum()) + target)
        out.append((t, defect, tol))
    return out


def assert_order(A: np.ndarray, weights: np.ndarray, order: int, label: str, theta: float = 1.0) -> None:
    for n in range(1, order + 1):
        for t, defect, tol in defects(A, weights, n, theta):
            assert abs(defect) <= tol, f"{label}: order condition for tree {t} (|t| = {n}) off by {defect:.3e}"


def assert_order_exceeded_fails(A: np.ndarray, weights: np.ndarray, order: int, label: str, theta: float = 1.0) -> None:
    """At least one condition of order ``order + 1`` is violated, by more than rounding could explain."""
    n = order + 1
    worst = max(abs(d) * density(t) / theta**n for t, d, _ in defects(A, weights, n, theta))
    assert worst > DEFECT, f"{label}: satisfies all conditions of order {n} (worst relative {worst:.2e})"


def dense_weights(tab: ButcherTableau, theta: float) -> np.ndarray:
    return np.array([sum(d * theta ** (k + 1) for k, d in enumerate(row)) for row in tab.dense])


def padded(weights, n: int) -> np.ndarray:
    w = np.zeros(n)
    w[: len(weights)] = weights
    return w


# --------------------------------------------------------------------------------------------------------
# Construction, flags


def test_registry_contents():
    assert REQUIRED <= set(TABLEAUS)
    assert set(TABLEAUS) <= set(EXPECTED)
    for key, tab in TABLEAUS.items():
        assert isinstance(tab, ButcherTableau)
        assert tab.name.lower() == key
        assert tab.reference


@pytest.mark.parametrize("key", sorted(TABLEAUS))
def test_tableau_flags(key):
    tab = TABLEAUS[key]
    order, embedded_order, fsal, adaptive, has_dense = EXPECTED[key]
    assert tab.order == order
    assert tab.embedded_order == embedded_order
    assert tab.fsal is fsal
    assert tab.adaptive is adaptive
    assert (tab.dense is not None) is has_dense
    # DOP853's combined estimator scales like dt^8: its controller uses order - 1 (Hairer's dop853.f, scipy).
    expected_error_order = order - 1 if tab.b_err_low is not None else min(order, embedded_order or order)
    assert tab.error_order == expected_error_order
    # Coefficients are plain Python floats (no Fractions, no ints), so tensors can be built from them.
    fields = [tab.c, tab.b, *tab.a, tab.b_err or (), tab.b_err_low or (), *(tab.dense or ())]
    assert all(type(x) is float for row in fields for x in row)


@pytest.mark.parametrize("key", sorted(TABLEAUS))
def test_tableau_reconstructs(key):
    # The validation in __post_init__ passes on a fresh copy built from the public fields.
    tab = TABLEAUS[key]
    copy = ButcherTableau(
        name=tab.name,
        c=tab.c,
        a=tab.a,
        b=tab.b,
        order=tab.order,
        b_err=tab.b_err,
        embedded_order=tab.embedded_order,
        b_err_low=tab.b_err_low,
        dense=tab.dense,
        dense_order=tab.dense_order,
        reference=tab.reference,
    )
    assert copy == tab


# --------------------------------------------------------------------------------------------------------
# Order conditions


@pytest.mark.parametrize("key", sorted(TABLEAUS))
def test_order_conditions(key):
    tab = TABLEAUS[key]
    A, b = matrix(tab, tab.stages), np.array(tab.b)
    assert_order(A, b, tab.order, key)
    assert_order_exceeded_fails(A, b, tab.order, key)


@pytest.mark.parametrize("key", sorted(k for k, t in TABLEAUS.items() if t.adaptive))
def test_embedded_order_conditions(key):
    tab = TABLEAUS[key]
    n = len(tab.b_err)
    A = matrix(tab, n)
    b_hat = padded(tab.b, n) - np.array(tab.b_err)
    assert_order(A, b_hat, tab.embedded_order, f"{key} embedded")
    assert_order_exceeded_fails(A, b_hat, tab.embedded_order, f"{key} embedded")


def test_dop853_third_order_estimator():
    tab = TABLEAUS["dopri8"]
    n = len(tab.b_err_low)
    A = matrix(tab, n)
    bhh = padded(tab.b, n) - np.array(tab.b_err_low)
    assert_order(A, bhh, 3, "dop853 bhh")
    assert_order_exceeded_fails(A, bhh, 3, "dop853 bhh")
    # bhh lives on stages 1, 9 and 12 only.
    assert [i for i, w in enumerate(bhh) if w != 0.0] == [0, 8, 11]


def test_order_checker_detects_perturbations():
    # The checker itself must be able to fail: a tiny change to any weight or coefficient breaks the order.
    tab = TABLEAUS["dopri5"]
    A, b = matrix(tab, tab.stages), np.array(tab.b)
    b_hat = b - np.array(tab.b_err)
    for i in range(tab.stages):
        for j in range(i):
            if A[i, j] == 0.0:
                continue
            bad = A.copy()
            bad[i, j] += 1e-6
            # The FSAL stage has weight 0 in b: only the embedded method sees it.
            weights, order = (b_hat, tab.embedded_order) if i == tab.stages - 1 else (b, tab.order)
            with pytest.raises(AssertionError, match="order condition"):
                assert_order(bad, weights, order, f"perturbed a[{i}][{j}]")
    bad_b = b.copy()
    bad_b[2] += 1e-6
    bad_b[3] -= 1e-6  # keeps Σ b = 1: order 1 still holds, a higher tree catches it
    with pytest.raises(AssertionError, match="order condition"):
        assert_order(A, bad_b, tab.order, "perturbed")
    # RK4 really is not of order 5.
    rk4 = TABLEAUS["rk4"]
    with pytest.raises(AssertionError, match="order condition"):
        assert_order(matrix(rk4, 4), np.array(rk4.b), 5, "rk4")


def test_tsit5_printed_sign_is_not_an_embedded_method():
    # With Tsitouras' printed +1/66 the "embedded" weights are not even consistent.
    tab = TABLEAUS["tsit5"]
    b_err = np.array(tab.b_err)
    b_err[-1] = 1 / 66
    b_hat = np.array(tab.b) - b_err
    with pytest.raises(AssertionError, match="order condition"):
        assert_order(matrix(tab, 7), b_hat, 1, "tsit5 printed")


def test_only_dop853_has_low_estimator():
    assert [k for k, t in TABLEAUS.items() if t.b_err_low is not None] == ["dopri8"]


# --------------------------------------------------------------------------------------------------------
# Dense output


@pytest.mark.parametrize("key", sorted(k for k, t in TABLEAUS.items() if t.dense is not None))
@pytest.mark.parametrize("theta", [0.3, 0.5, 0.8])
def test_dense_order_conditions(key, theta):
    tab = TABLEAUS[key]
    A = matrix(tab, len(tab.dense))
    weights = dense_weights(tab, theta)
    assert_order(A, weights, tab.dense_order, f"{key} dense θ={theta}", theta=theta)
    assert_order_exceeded_fails(A, weights, tab.dense_order, f"{key} dense θ={theta}", theta=theta)


@pytest.mark.parametrize("key", sorted(k for k, t in TABLEAUS.items() if t.dense is not None))
def test_dense_endpoints(key):
    tab = TABLEAUS[key]
    n = len(tab.dense)
    np.testing.assert_allclose(dense_weights(tab, 1.0), padded(tab.b, n), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(dense_weights(tab, 0.0), np.zeros(n))
    # The derivative at θ = 0 is f(t0, y0) = k_1: b_i'(0) = δ_i1.
    np.testing.assert_allclose([row[0] for row in tab.dense], np.eye(n)[0], rtol=0, atol=1e-15)


def test_dopri5_dense_matches_hairer():
    # Hairer's CONTD5 form evaluated directly, in units of h k_i:
    # b(θ) = θ b + θ(1-θ)(e1 - b) + θ²(1-θ)(2b - e1 - e7) + θ²(1-θ)² d.
    tab = TABLEAUS["dopri5"]
    b = np.array(tab.b)
    e1, e7 = np.eye(7)[0], np.eye(7)[6]
    d = np.array(
        [
            -12715105075 / 11282082432,
            0.0,
            87487479700 / 32700410799,
            -10690763975 / 1880347072,
            701980252875 / 199316789632,
            -1453857185 / 822651844,
            69997945 / 29380423,
        ]
    )
    for theta in np.linspace(0.0, 1.0, 11):
        hairer = theta * b + theta * (1 - theta) * (e1 - b)
        hairer = hairer + theta**2 * (1 - theta) * (2 * b - e1 - e7) + theta**2 * (1 - theta) ** 2 * d
        np.testing.assert_allclose(dense_weights(tab, theta), hairer, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------------------
# Published coefficients


def test_tsit5_error_weights_errata():
    tab = TABLEAUS["tsit5"]
    assert len(tab.b_err) == 7
    assert tab.b_err[-1] == -1 / 66
    # Tsitouras (2011), Table 1, "b̃" (printed to 15 digits): these are b - b_hat, not b_hat.
    printed = [0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263, -0.582357165452555]
    printed.append(0.458082105929187)
    np.testing.assert_allclose(tab.b_err[:6], printed, rtol=0, atol=1e-15)
    # With the sign as printed (+1/66) the weights no longer sum to zero.
    assert abs(math.fsum(tab.b_err[:6]) + 1 / 66) > 0.03


def test_dop853_matches_scipy():
    coefficients = pytest.importorskip("scipy.integrate._ivp.dop853_coefficients")
    tab = TABLEAUS["dopri8"]
    s = coefficients.N_STAGES
    assert tab.stages == s == 12

    def close(ours, theirs):
        np.testing.assert_allclose(np.asarray(ours, dtype=float), theirs, rtol=1e-15, atol=1e-15)

    close(tab.c, coefficients.C[:s])
    close(matrix(tab, s), coefficients.A[:s, :s])
    close(tab.b, coefficients.B)
    close(padded(tab.b_err, s + 1), coefficients.E5)
    close(padded(tab.b_err_low, s + 1), coefficients.E3)


def test_classical_coefficients_match_scipy():
    rk = pytest.importorskip("scipy.integrate._ivp.rk")
    # SciPy stores E = b_hat - b; ours is b - b_hat. Its RK45.P is Hairer's dense output in the same form.
    for key, cls in (("bosh3", rk.RK23), ("dopri5", rk.RK45)):
        tab = TABLEAUS[key]
        s = cls.n_stages
        assert tab.stages == s + 1  # SciPy leaves out the FSAL stage
        np.testing.assert_allclose(tab.c[:s], cls.C, rtol=0, atol=1e-16)
        rows, cols = cls.A.shape
        np.testing.assert_allclose(matrix(tab, tab.stages)[:rows, :cols], cls.A, rtol=0, atol=1e-16)
        np.testing.assert_allclose(tab.b[:s], cls.B, rtol=0, atol=1e-16)
        np.testing.assert_allclose(tab.b_err, -cls.E, rtol=0, atol=1e-16)
    np.testing.assert_allclose(np.array(TABLEAUS["dopri5"].dense), rk.RK45.P, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------------------
# Validation rejects malformed tableaus


def _make(**overrides):
    fields = dict(name="bad", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
    fields.update(overrides)
    return ButcherTableau(**fields)


def test_valid_baseline_constructs():
    tab = _make()
    assert tab.stages == 2 and not tab.fsal and not tab.adaptive


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"a": ((), (0.4,))}, r"row 1 of a sums to 0\.4"),
        ({"b": (0.5, 0.4)}, r"sum\(b\)"),
        ({"a": ((), (0.5, 0.0))}, r"strictly lower triangular"),
        ({"a": ((0.0,), (0.5,))}, r"strictly lower triangular"),
        ({"a": ((),)}, r"strictly lower triangular"),
        ({"b": (1.0,)}, r"len\(b\)"),
        ({"c": (0.1, 0.5), "a": ((), (0.5,))}, r"c\[0\]"),
        ({"b_err": (0.5, -0.4), "embedded_order": 1}, r"sum\(b_err\)"),
        ({"b_err": (0.5, -0.5, 0.0, 0.0), "embedded_order": 1}, r"len\(b_err\)"),
        ({"b_err": (0.5, -0.5)}, r"embedded_order"),
        ({"b_err": (-1.0, 1.0), "embedded_order": 1, "b_err_low": (0.1, 0.0)}, r"sum\(b_err_low\)"),
        ({"dense": ((1.0, -1.0), (0.0, 0.9))}, r"dense row 1"),
        ({"dense": ((1.0,),)}, r"dense needs"),
    ],
)
def test_invalid_tableaus_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        _make(**overrides)


def test_fsal_detection():
    # A FSAL layout: last stage at c = 1 with a = b[:-1] and b[-1] = 0.
    fsal = ButcherTableau(name="f", c=(0.0, 1.0), a=((), (1.0,)), b=(1.0, 0.0), order=1)
    assert fsal.fsal
    # Same nodes, but the last weight is used: not FSAL.
    assert not _make(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5)).fsal
