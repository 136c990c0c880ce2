"""Compartmental epidemic models: SIR, SEIR, SIRD.

Transmission is frequency-dependent (``β S I / N`` with ``N`` the total of the compartments), the usual
choice for human diseases: the number of contacts per person does not grow with the population. ``N`` is
computed from the state, so it is conserved by the equations and need not be a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .base import MechanisticModel, Param

__all__ = ["SEIR", "SIR", "SIRD"]


class SIR(MechanisticModel):
    """Kermack–McKendrick SIR model (Proc. R. Soc. A 115, 1927).

    .. code-block:: text

        dS/dt = -β S I / N
        dI/dt =  β S I / N - γ I
        dR/dt =  γ I                  N = S + I + R

    ``β`` (1/day): transmission rate, contacts per day times the probability that one transmits;
    ``γ`` (1/day): recovery rate, the inverse of the mean infectious period. ``R0 = β / γ``.
    """

    name = "sir"
    title = "susceptible-infected-recovered epidemic (Kermack-McKendrick 1927)"
    states = ("S", "I", "R")
    state_defaults = (999.0, 1.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {
        "beta": Param(0.5, "1/day", "transmission rate (contacts/day x transmission probability)", "β"),
        "gamma": Param(0.2, "1/day", "recovery rate (1 / mean infectious period)", "γ"),
    }
    equations = """
dS/dt = -beta S I / N
dI/dt =  beta S I / N - gamma I
dR/dt =  gamma I                    (N = S + I + R)
"""
    time_unit = "day"
    nonnegative = True
    susceptible = "S"
    seed = "I"
    derived_info: ClassVar[dict[str, str]] = {"R0": "beta / gamma (basic reproduction number)"}

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s, i, _ = y.unbind(-1)
        infection = p["beta"] * s * i / y.sum(-1)
        recovery = p["gamma"] * i
        return torch.stack([-infection, infection - recovery, recovery], dim=-1)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"R0": p["beta"] / p["gamma"]}


class SEIR(MechanisticModel):
    """SEIR model: SIR with a latent (exposed, not yet infectious) compartment.

    .. code-block:: text

        dS/dt = -β S I / N
        dE/dt =  β S I / N - σ E
        dI/dt =  σ E - γ I
        dR/dt =  γ I                  N = S + E + I + R

    ``σ`` (1/day): rate of becoming infectious, the inverse of the mean latent period. ``R0 = β / γ``.
    """

    name = "seir"
    title = "susceptible-exposed-infected-recovered epidemic"
    states = ("S", "E", "I", "R")
    state_defaults = (999.0, 0.0, 1.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {
        "beta": Param(0.5, "1/day", "transmission rate", "β"),
        "sigma": Param(0.2, "1/day", "rate of becoming infectious (1 / mean latent period)", "σ"),
        "gamma": Param(0.2, "1/day", "recovery rate (1 / mean infectious period)", "γ"),
    }
    equations = """
dS/dt = -beta S I / N
dE/dt =  beta S I / N - sigma E
dI/dt =  sigma E - gamma I
dR/dt =  gamma I                    (N = S + E + I + R)
"""
    time_unit = "day"
    nonnegative = True
    susceptible = "S"
    seed = "I"
    derived_info: ClassVar[dict[str, str]] = {"R0": "beta / gamma"}

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s, e, i, r = y.unbind(-1)
        infection = p["beta"] * s * i / (s + e + i + r)
        onset = p["sigma"] * e
        recovery = p["gamma"] * i
        return torch.stack([-infection, infection - onset, onset - recovery, recovery], dim=-1)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"R0": p["beta"] / p["gamma"]}


class SIRD(MechanisticModel):
    """SIRD model: SIR in which infected people recover or die.

    .. code-block:: text

        dS/dt = -β S I / N
        dI/dt =  β S I / N - (γ + μ) I
        dR/dt =  γ I
        dD/dt =  μ I                  N = S + I + R + D (the initial population)

    ``μ`` (1/day): death rate of the infected. ``R0 = β / (γ + μ)``; the infection fatality ratio is
    ``μ / (γ + μ)``.
    """

    name = "sird"
    title = "susceptible-infected-recovered-dead epidemic"
    states = ("S", "I", "R", "D")
    state_defaults = (999.0, 1.0, 0.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {
        "beta": Param(0.5, "1/day", "transmission rate", "β"),
        "gamma": Param(0.2, "1/day", "recovery rate", "γ"),
        "mu": Param(0.01, "1/day", "death rate of the infected", "μ"),
    }
    equations = """
dS/dt = -beta S I / N
dI/dt =  beta S I / N - (gamma + mu) I
dR/dt =  gamma I
dD/dt =  mu I                       (N = S + I + R + D)
"""
    time_unit = "day"
    nonnegative = True
    susceptible = "S"
    seed = "I"
    derived_info: ClassVar[dict[str, str]] = {
        "R0": "beta / (gamma + mu)",
        "IFR": "mu / (gamma + mu) (infection fatality ratio)",
    }

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s, i, r, d = y.unbind(-1)
        infection = p["beta"] * s * i / (s + i + r + d)
        recovery = p["gamma"] * i
        death = p["mu"] * i
        return torch.stack([-infection, infection - recovery - death, recovery, death], dim=-1)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        removal = p["gamma"] + p["mu"]
        return {"R0": p["beta"] / removal, "IFR": p["mu"] / removal}
