"""Mechanistic models as ``nn.Module`` vector fields with named, positive parameters.

Every model can be passed to :func:`dxdt.solve` as ``f`` (``model(t, y)`` uses its own parameters) and to
:func:`dxdt.fit.fit`. ``model.rhs(t, y, p)`` evaluates it for parameters given per sample.

>>> import torch, dxdt
>>> from dxdt.models import SIR
>>> model = SIR(beta=1.67, gamma=0.44)
>>> y0 = model.initial_state(population=763, I=1)          # (1, 3): S = 762, I = 1, R = 0
>>> sol = dxdt.solve(model, y0, 0.0, 14.0, saveat=torch.arange(15.0, dtype=torch.float64))
"""

from __future__ import annotations

from .base import FunctionModel as FunctionModel
from .base import MechanisticModel as MechanisticModel
from .base import Param as Param
from .classic import DampedPendulum as DampedPendulum
from .classic import Logistic as Logistic
from .classic import Lorenz as Lorenz
from .classic import LotkaVolterra as LotkaVolterra
from .classic import Robertson as Robertson
from .classic import VanDerPol as VanDerPol
from .epidemic import SEIR as SEIR
from .epidemic import SIR as SIR
from .epidemic import SIRD as SIRD
from .universal import NeuralTransmissionSIR as NeuralTransmissionSIR
from .universal import UniversalODE as UniversalODE
from .universal import mlp as mlp

MODELS: dict[str, type[MechanisticModel]] = {
    cls.name: cls for cls in (SIR, SEIR, SIRD, Logistic, LotkaVolterra, VanDerPol, Lorenz, DampedPendulum, Robertson)
}


def get_model(name: str, **params: float) -> MechanisticModel:
    """A model instance by its name (``"sir"``, ``"lotka-volterra"``, ...; case-insensitive, ``_`` = ``-``)."""
    key = name.lower().replace("_", "-")
    aliases = {
        "lotkavolterra": "lotka-volterra",
        "lv": "lotka-volterra",
        "vanderpol": "van-der-pol",
        "vdp": "van-der-pol",
    }
    key = aliases.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[key](**params)


__all__ = [
    "MODELS",
    "SEIR",
    "SIR",
    "SIRD",
    "DampedPendulum",
    "FunctionModel",
    "Logistic",
    "Lorenz",
    "LotkaVolterra",
    "MechanisticModel",
    "NeuralTransmissionSIR",
    "Param",
    "Robertson",
    "UniversalODE",
    "VanDerPol",
    "get_model",
    "mlp",
]
