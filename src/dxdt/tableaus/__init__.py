"""The library's tableaus, as data: one module per method.

Explicit Runge–Kutta methods are collected in :data:`TABLEAUS`; stiff methods (Rosenbrock and ESDIRK) in
:data:`STIFF_TABLEAUS`.
"""

from __future__ import annotations

from .._tableau import ButcherTableau, DIRKTableau, RosenbrockTableau
from .bosh3 import BOSH3
from .dopri5 import DOPRI5
from .dopri8 import DOPRI8
from .euler import EULER
from .heun import HEUN
from .kvaerno3 import KVAERNO3
from .kvaerno4 import KVAERNO4
from .kvaerno5 import KVAERNO5
from .midpoint import MIDPOINT
from .ralston import RALSTON
from .rk4 import RK4
from .rodas4 import RODAS4
from .rodas5p import RODAS5P
from .tsit5 import TSIT5
from .verner7 import VERN7

TABLEAUS: dict[str, ButcherTableau] = {
    "euler": EULER,
    "midpoint": MIDPOINT,
    "heun": HEUN,
    "ralston": RALSTON,
    "bosh3": BOSH3,
    "rk4": RK4,
    "dopri5": DOPRI5,
    "tsit5": TSIT5,
    "dopri8": DOPRI8,
    "vern7": VERN7,
}

STIFF_TABLEAUS: dict[str, RosenbrockTableau | DIRKTableau] = {
    "rodas4": RODAS4,
    "rodas5p": RODAS5P,
    "kvaerno3": KVAERNO3,
    "kvaerno4": KVAERNO4,
    "kvaerno5": KVAERNO5,
}

__all__ = [
    "BOSH3",
    "DOPRI5",
    "DOPRI8",
    "EULER",
    "HEUN",
    "KVAERNO3",
    "KVAERNO4",
    "KVAERNO5",
    "MIDPOINT",
    "RALSTON",
    "RK4",
    "RODAS4",
    "RODAS5P",
    "STIFF_TABLEAUS",
    "TABLEAUS",
    "TSIT5",
    "VERN7",
    "ButcherTableau",
    "DIRKTableau",
    "RosenbrockTableau",
]
