"""The stiff methods: each is its tableau (see :mod:`dxdt.tableaus`) and nothing else.

All take ``jac=``: ``"autodiff"`` (``torch.func``, default), ``"fd"`` (finite differences) or a callable
``jac(t, y[, args]) -> (B, N, N)``; the ESDIRK methods also ``max_newton_iters``.
"""

from __future__ import annotations

from ..tableaus import KVAERNO3, KVAERNO4, KVAERNO5, RODAS4, RODAS5P
from .dirk import DIRK
from .rosenbrock import Rosenbrock


class Rodas4(Rosenbrock):
    """Hairer & Wanner's RODAS4: Rosenbrock 4(3), stiffly accurate, L-stable, third-order dense output."""

    tableau = RODAS4


class Rodas5P(Rosenbrock):
    """Steinebach's Rodas5P (2023): Rosenbrock 5(4), stiffly accurate, fourth-order dense output."""

    tableau = RODAS5P


class Kvaerno3(DIRK):
    """Kværnø's ESDIRK 3(2) (2004), stiffly accurate, L-stable."""

    tableau = KVAERNO3


class Kvaerno4(DIRK):
    """Kværnø's ESDIRK 4(3) (2004), stiffly accurate, L-stable."""

    tableau = KVAERNO4


class Kvaerno5(DIRK):
    """Kværnø's ESDIRK 5(4) (2004), stiffly accurate, L-stable."""

    tableau = KVAERNO5
