"""The explicit Runge–Kutta methods: each is its tableau (see :mod:`dxdt.tableaus`) and nothing else."""

from __future__ import annotations

from ..tableaus import BOSH3, DOPRI5, DOPRI8, EULER, HEUN, MIDPOINT, RALSTON, RK4, TSIT5, VERN7
from .explicit_rk import ExplicitRungeKutta


class Euler(ExplicitRungeKutta):
    """Forward Euler, order 1, fixed step (needs ``dt0``)."""

    tableau = EULER


class Midpoint(ExplicitRungeKutta):
    """Explicit midpoint rule, order 2, fixed step (needs ``dt0``)."""

    tableau = MIDPOINT


class Heun(ExplicitRungeKutta):
    """Heun's method with embedded Euler, order 2(1), adaptive (torchdiffeq's ``adaptive_heun``)."""

    tableau = HEUN


class Ralston(ExplicitRungeKutta):
    """Ralston's second-order method (minimal truncation error), fixed step (needs ``dt0``)."""

    tableau = RALSTON


class RK4(ExplicitRungeKutta):
    """The classical fourth-order Runge–Kutta method, fixed step (needs ``dt0``)."""

    tableau = RK4


class Bosh3(ExplicitRungeKutta):
    """Bogacki–Shampine 3(2), adaptive, first same as last."""

    tableau = BOSH3


class Dopri5(ExplicitRungeKutta):
    """Dormand–Prince 5(4), adaptive, with its own fourth-order dense output."""

    tableau = DOPRI5


class Tsit5(ExplicitRungeKutta):
    """Tsitouras 5(4), adaptive, with its own fourth-order dense output. The default."""

    tableau = TSIT5


class Dopri8(ExplicitRungeKutta):
    """Dormand–Prince 8(5,3) (Hairer's DOP853), adaptive; steps land on save times (Hermite dense output)."""

    tableau = DOPRI8


class Vern7(ExplicitRungeKutta):
    """Verner's "most efficient" 7(6) pair; steps land on save times (Hermite dense output)."""

    tableau = VERN7
