"""Time-stepping methods, by name or as classes."""

from __future__ import annotations

from .auto_switch import AutoSwitch as AutoSwitch
from .base import AbstractSolver as AbstractSolver
from .base import StepResult as StepResult
from .dirk import DIRK as DIRK
from .explicit_methods import RK4, Bosh3, Dopri5, Dopri8, Euler, Heun, Midpoint, Ralston, Tsit5, Vern7
from .explicit_rk import ExplicitRungeKutta as ExplicitRungeKutta
from .rosenbrock import Rosenbrock as Rosenbrock
from .stiff_methods import Kvaerno3, Kvaerno4, Kvaerno5, Rodas4, Rodas5P

SOLVERS: dict[str, type[AbstractSolver]] = {
    "euler": Euler,
    "midpoint": Midpoint,
    "heun": Heun,
    "ralston": Ralston,
    "rk4": RK4,
    "bosh3": Bosh3,
    "dopri5": Dopri5,
    "tsit5": Tsit5,
    "dopri8": Dopri8,
    "vern7": Vern7,
    "rodas4": Rodas4,
    "rodas5p": Rodas5P,
    "kvaerno3": Kvaerno3,
    "kvaerno4": Kvaerno4,
    "kvaerno5": Kvaerno5,
    "auto": AutoSwitch,
}


# Solvers hold no per-solve state (only caches of their constants), so a name maps to one shared instance:
# building one (its weight tables) costs more than a short solve of a small system.
_BY_NAME: dict[str, AbstractSolver] = {}


def get_solver(solver: str | AbstractSolver) -> AbstractSolver:
    """A solver instance from a name (case-insensitive) or an instance."""
    if isinstance(solver, AbstractSolver):
        return solver
    if isinstance(solver, type) and issubclass(solver, AbstractSolver):
        return solver()
    if isinstance(solver, str) and solver.lower() in SOLVERS:
        name = solver.lower()
        if name not in _BY_NAME:
            _BY_NAME[name] = SOLVERS[name]()
        return _BY_NAME[name]
    raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(sorted(SOLVERS))}, or pass an instance")


__all__ = [
    "DIRK",
    "RK4",
    "SOLVERS",
    "AbstractSolver",
    "AutoSwitch",
    "Bosh3",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRungeKutta",
    "Heun",
    "Kvaerno3",
    "Kvaerno4",
    "Kvaerno5",
    "Midpoint",
    "Ralston",
    "Rodas4",
    "Rodas5P",
    "Rosenbrock",
    "StepResult",
    "Tsit5",
    "Vern7",
    "get_solver",
]
