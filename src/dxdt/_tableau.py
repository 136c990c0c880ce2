"""Butcher tableaus as frozen, self-validating data.

A Runge–Kutta method is data: the coefficients ``a``, ``b``, ``c``, the error weights ``b_err`` of its
embedded pair and, optionally, the polynomial weights of its own dense output. One generic step
(:mod:`dxdt.solvers.explicit_rk`) runs every tableau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_TOL = 1e-12


def _close(x: float, y: float, scale: float = 1.0) -> bool:
    return abs(x - y) <= _TOL * max(1.0, scale)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Args:
        name: the method's name, e.g. ``"Tsit5"``.
        c: stage times, ``len(c) == s``; ``c[0] == 0``.
        a: strictly lower-triangular stage coefficients; ``a[i]`` holds the ``i`` entries of row ``i``
            (so ``a[0] == ()``).
        b: solution weights, ``len(b) == s``.
        order: classical order of the solution ``b``.
        b_err: error weights ``b - b_hat`` of the embedded method (sum zero), or ``None`` for a
            fixed-step method. May have ``s + 1`` entries when the last one multiplies
            ``f(t1, y1)`` (first-same-as-last pairs such as Bosh3 written without the extra stage).
        embedded_order: order of ``b_hat``; the step-size controller uses ``min(order, embedded_order)``.
        b_err_low: DOP853 only: the weights of its additional third-order estimate, combined with
            ``b_err`` as in Hairer's DOP853 code.
        dense: the method's own continuous extension: ``dense[i]`` holds the coefficients
            ``(d_1, ..., d_m)`` of ``b_i(θ) = Σ_k d_k θ^k``; one row per stage (plus, optionally, one for
            ``f(t1, y1)``). ``None`` means cubic Hermite interpolation is used.
        dense_order: order of the method's own dense output (ignored when ``dense`` is ``None``).
        reference: where the coefficients come from.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    embedded_order: int | None = None
    b_err_low: tuple[float, ...] | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int = 3
    reference: str = ""
    fsal: bool = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: a must be strictly lower triangular with {s} rows")
        if len(self.b) != s:
            raise ValueError(f"{self.name}: len(b) = {len(self.b)} != number of stages {s}")
        if self.c[0] != 0.0:
            raise ValueError(f"{self.name}: c[0] must be 0, got {self.c[0]}")
        for i, row in enumerate(self.a):
            if not _close(math.fsum(row), self.c[i]):
                raise ValueError(f"{self.name}: row {i} of a sums to {math.fsum(row)}, c[{i}] = {self.c[i]}")
        if not _close(math.fsum(self.b), 1.0):
            raise ValueError(f"{self.name}: sum(b) = {math.fsum(self.b)} != 1")
        for label, weights in (("b_err", self.b_err), ("b_err_low", self.b_err_low)):
            if weights is None:
                continue
            if len(weights) not in (s, s + 1):
                raise ValueError(f"{self.name}: len({label}) = {len(weights)}, expected {s} or {s + 1}")
            if not _close(math.fsum(weights), 0.0, max(abs(w) for w in weights)):
                raise ValueError(f"{self.name}: sum({label}) = {math.fsum(weights)} != 0")
        if self.b_err is not None and self.embedded_order is None:
            raise ValueError(f"{self.name}: an embedded pair needs embedded_order")
        if self.dense is not None:
            if len(self.dense) not in (s, s + 1):
                raise ValueError(f"{self.name}: dense needs {s} or {s + 1} rows, got {len(self.dense)}")
            # b_i(1) must equal b_i so that the interpolant ends at y1.
            for i in range(len(self.dense)):
                bi = self.b[i] if i < s else 0.0
                if not _close(math.fsum(self.dense[i]), bi):
                    raise ValueError(f"{self.name}: dense row {i} at θ=1 is {math.fsum(self.dense[i])}, b = {bi}")
        # First same as last: the last stage is evaluated at (t1, y1), so it is the next step's first.
        fsal = self.c[-1] == 1.0 and all(_close(x, y) for x, y in zip(self.a[-1], self.b[:-1])) and self.b[-1] == 0.0
        object.__setattr__(self, "fsal", fsal)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def error_order(self) -> int:
        """The order that sets the controller's exponent: ``min(order, embedded_order)``.

        DOP853's combined estimate ``e5² / sqrt(e5² + 0.01 e3²)`` scales like ``dt^8`` (``e5 ~ dt^6``,
        ``e3 ~ dt^4``), so its controller uses ``order - 1 = 7`` as Hairer's dop853.f and scipy do.
        """
        if self.b_err_low is not None:
            return self.order - 1
        if self.embedded_order is None:
            return self.order
        return min(self.order, self.embedded_order)


def _check_lower(name: str, rows: tuple[tuple[float, ...], ...], s: int, label: str, diagonal: bool) -> None:
    extra = 1 if diagonal else 0
    if len(rows) != s or any(len(row) != i + extra for i, row in enumerate(rows)):
        kind = "lower triangular (with diagonal)" if diagonal else "strictly lower triangular"
        raise ValueError(f"{name}: {label} must be {kind} with {s} rows")


@dataclass(frozen=True)
class DIRKTableau:
    """A diagonally implicit Runge–Kutta method (ESDIRK when ``a[0] == (0.0,)``).

    Args:
        name: the method's name, e.g. ``"Kvaerno5"``.
        c: stage times.
        a: lower-triangular coefficients including the diagonal: ``a[i]`` has ``i + 1`` entries.
        b: solution weights.
        b_err: error weights ``b - b_hat``.
        order, embedded_order: orders of ``b`` and ``b_hat``.
        reference: where the coefficients come from.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]
    order: int
    embedded_order: int
    reference: str = ""
    explicit_first_stage: bool = field(init=False)
    stiffly_accurate: bool = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        _check_lower(self.name, self.a, s, "a", diagonal=True)
        if len(self.b) != s or len(self.b_err) != s:
            raise ValueError(f"{self.name}: b and b_err need {s} entries")
        for i, row in enumerate(self.a):
            if not _close(math.fsum(row), self.c[i]):
                raise ValueError(f"{self.name}: row {i} of a sums to {math.fsum(row)}, c[{i}] = {self.c[i]}")
        if not _close(math.fsum(self.b), 1.0):
            raise ValueError(f"{self.name}: sum(b) = {math.fsum(self.b)} != 1")
        if not _close(math.fsum(self.b_err), 0.0):
            raise ValueError(f"{self.name}: sum(b_err) = {math.fsum(self.b_err)} != 0")
        diag = {row[-1] for row in self.a[1:]}
        if len(diag) != 1:
            raise ValueError(f"{self.name}: the diagonal of a must be constant after the first stage, got {diag}")
        object.__setattr__(self, "explicit_first_stage", self.a[0][0] == 0.0)
        object.__setattr__(
            self, "stiffly_accurate", all(_close(x, y) for x, y in zip(self.a[-1], self.b)) and self.c[-1] == 1.0
        )

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def gamma(self) -> float:
        """The diagonal coefficient shared by the implicit stages."""
        return self.a[-1][-1]


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in Hairer & Wanner's transformed form (*Solving ODEs II*, IV.7, (7.25)).

    With ``W = I / (dt γ) − J``, stage ``i`` solves ``W U_i = f(t + c_i dt, y + Σ_j a_ij U_j)
    + Σ_j (C_ij / dt) U_j + dt d_i ∂f/∂t``; then ``y1 = y + Σ m_i U_i`` and the error estimate is
    ``Σ m_err_i U_i``.

    Args:
        name: e.g. ``"Rodas5P"``.
        gamma: the diagonal γ.
        a: strictly lower-triangular transformed stage coefficients (``a[i]`` has ``i`` entries).
        C: strictly lower-triangular transformed coupling coefficients.
        c: stage times (``α_i``).
        d: ``γ_i = Σ_j Γ_ij``, the weights of ``∂f/∂t``.
        m: solution weights; ``m_err``: error weights.
        order, embedded_order: orders of the solution and of the embedded method.
        dense: rows ``H_k`` (each of ``s`` entries) of the continuous extension
            ``y(θ) = (1 − θ) y0 + θ (y1 + (1 − θ)(h_1 + θ (h_2 + θ h_3 ...)))`` with ``h_k = Σ_j H_kj U_j``;
            ``None`` means cubic Hermite.
        dense_order: order of that continuous extension.
        reference: where the coefficients come from.
    """

    name: str
    gamma: float
    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    d: tuple[float, ...]
    m: tuple[float, ...]
    m_err: tuple[float, ...]
    order: int
    embedded_order: int
    dense: tuple[tuple[float, ...], ...] | None = None
    dense_order: int = 3
    reference: str = ""

    def __post_init__(self) -> None:
        s = len(self.c)
        _check_lower(self.name, self.a, s, "a", diagonal=False)
        _check_lower(self.name, self.C, s, "C", diagonal=False)
        for label, vec in (("d", self.d), ("m", self.m), ("m_err", self.m_err)):
            if len(vec) != s:
                raise ValueError(f"{self.name}: {label} needs {s} entries, got {len(vec)}")
        if not self.gamma > 0:
            raise ValueError(f"{self.name}: gamma must be positive, got {self.gamma}")
        if self.dense is not None and any(len(row) != s for row in self.dense):
            raise ValueError(f"{self.name}: every dense row needs {s} entries")

    @property
    def stages(self) -> int:
        return len(self.c)
