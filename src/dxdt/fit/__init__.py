"""Fitting differential-equation models to data, with uncertainty and forecasts.

>>> from dxdt.data import load
>>> from dxdt.fit import fit
>>> from dxdt.models import SIR
>>> flu = load("boarding_school_influenza_1978")
>>> result = fit(SIR(beta=1.0, gamma=0.3), flu.column("day"), flu.column("in_bed"), observe="I", population=763)
>>> result["R0"]                       # Estimate(value=3.76..., se=..., lower=..., upper=...)
>>> result.profile()                    # profile-likelihood intervals for beta and gamma
>>> result.forecast(7).table()          # a week ahead, with bands

See ``docs/fitting.md``.
"""

from __future__ import annotations

from . import observe as observe
from ._fit import fit as fit
from ._fit import fit_many as fit_many
from .noise import Gaussian as Gaussian
from .noise import LogNormal as LogNormal
from .noise import NegativeBinomial as NegativeBinomial
from .noise import NoiseModel as NoiseModel
from .noise import Poisson as Poisson
from .noise import get_noise as get_noise
from .result import Estimate as Estimate
from .result import FitResult as FitResult
from .result import Forecast as Forecast

__all__ = [
    "Estimate",
    "FitResult",
    "Forecast",
    "Gaussian",
    "LogNormal",
    "NegativeBinomial",
    "NoiseModel",
    "Poisson",
    "fit",
    "fit_many",
    "get_noise",
    "observe",
]
