"""Time-stepping methods, by name or as classes."""

from __future__ import annotations

from .base import AbstractSolver as AbstractSolver
from .base import StepResult as StepResult
from .explicit_methods import RK4, Bosh3, Dopri5, Dopri8, Euler, Heun, Midpoint, Ralston, Tsit5, Vern7
from .explicit_rk import ExplicitRungeKutta as ExplicitRungeKutta

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
}


def get_solver(solver: str | AbstractSolver) -> AbstractSolver:
    """A solver instance from a name (case-insensitive) or an instance."""
    if isinstance(solver, AbstractSolver):
        return solver
    if isinstance(solver, type) and issubclass(solver, AbstractSolver):
        return solver()
    if isinstance(solver, str) and solver.lower() in SOLVERS:
        return SOLVERS[solver.lower()]()
    raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(sorted(SOLVERS))}, or pass an instance")


__all__ = [
    "RK4",
    "SOLVERS",
    "AbstractSolver",
    "Bosh3",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRungeKutta",
    "Heun",
    "Midpoint",
    "Ralston",
    "StepResult",
    "Tsit5",
    "Vern7",
    "get_solver",
]
