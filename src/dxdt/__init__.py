"""dxdt: differentiable ODE solvers for machine learning, on PyTorch."""

from ._saveat import SaveAt as SaveAt
from ._solution import Solution as Solution
from ._solution import SolveError as SolveError
from ._solution import Stats as Stats
from ._solution import Status as Status
from ._solve import solve as solve
from ._tableau import ButcherTableau as ButcherTableau
from .controllers import ConstantStepController as ConstantStepController
from .controllers import IController as IController
from .controllers import PIController as PIController
from .solvers import RK4 as RK4
from .solvers import AutoSwitch as AutoSwitch
from .solvers import Bosh3 as Bosh3
from .solvers import Dopri5 as Dopri5
from .solvers import Dopri8 as Dopri8
from .solvers import Euler as Euler
from .solvers import ExplicitRungeKutta as ExplicitRungeKutta
from .solvers import Heun as Heun
from .solvers import Kvaerno3 as Kvaerno3
from .solvers import Kvaerno4 as Kvaerno4
from .solvers import Kvaerno5 as Kvaerno5
from .solvers import Midpoint as Midpoint
from .solvers import Ralston as Ralston
from .solvers import Rodas4 as Rodas4
from .solvers import Rodas5P as Rodas5P
from .solvers import Tsit5 as Tsit5
from .solvers import Vern7 as Vern7

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "AutoSwitch",
    "Bosh3",
    "ButcherTableau",
    "ConstantStepController",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRungeKutta",
    "Heun",
    "IController",
    "Kvaerno3",
    "Kvaerno4",
    "Kvaerno5",
    "Midpoint",
    "PIController",
    "Ralston",
    "Rodas4",
    "Rodas5P",
    "SaveAt",
    "Solution",
    "SolveError",
    "Stats",
    "Status",
    "Tsit5",
    "Vern7",
    "solve",
]


_SUBMODULES = ("adjoints", "compat", "fit", "models", "nn", "optim", "plot")


def __getattr__(name: str):
    """Submodules load on first use (``dxdt.fit``, ``dxdt.models``, ...), keeping ``import dxdt`` light."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dxdt' has no attribute {name!r}")
