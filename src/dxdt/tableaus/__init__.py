"""The library's Butcher tableaus, as data: one module per method, collected in :data:`TABLEAUS`."""

from __future__ import annotations

from .._tableau import ButcherTableau
from .bosh3 import BOSH3
from .dopri5 import DOPRI5
from .dopri8 import DOPRI8
from .euler import EULER
from .heun import HEUN
from .midpoint import MIDPOINT
from .ralston import RALSTON
from .rk4 import RK4
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

__all__ = [
    "BOSH3",
    "DOPRI5",
    "DOPRI8",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RALSTON",
    "RK4",
    "TABLEAUS",
    "TSIT5",
    "VERN7",
    "ButcherTableau",
]
