"""Classic models of population dynamics, mechanics and chemical kinetics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .base import MechanisticModel, Param

__all__ = ["DampedPendulum", "Logistic", "Lorenz", "LotkaVolterra", "Robertson", "VanDerPol"]


class Logistic(MechanisticModel):
    """Verhulst's logistic growth: ``dN/dt = r N (1 - N / K)``.

    ``r`` (1/time): intrinsic growth rate; ``K`` (units of N): carrying capacity. Solution:
    ``N(t) = K / (1 + (K / N0 - 1) exp(-r t))``.
    """

    name = "logistic"
    title = "logistic growth (Verhulst 1838)"
    states = ("N",)
    state_defaults = (1.0,)
    param_info: ClassVar[dict[str, Param]] = {
        "r": Param(1.0, "1/time", "intrinsic growth rate", "r"),
        "K": Param(100.0, "units of N", "carrying capacity", "K"),
    }
    equations = "dN/dt = r N (1 - N / K)"
    nonnegative = True

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = y[..., 0]
        return (p["r"] * n * (1 - n / p["K"])).unsqueeze(-1)


class LotkaVolterra(MechanisticModel):
    """Lotka–Volterra predator–prey model.

    .. code-block:: text

        dx/dt = α x - β x y        (prey)
        dy/dt = δ x y - γ y        (predators)

    ``α`` (1/time): prey growth rate; ``β`` (1/(time·predator)): predation rate; ``δ`` (1/(time·prey)):
    predator growth per prey eaten; ``γ`` (1/time): predator death rate. The quantity
    ``δ x - γ log x + β y - α log y`` is conserved.
    """

    name = "lotka-volterra"
    title = "predator-prey dynamics (Lotka 1925, Volterra 1926)"
    states = ("prey", "predator")
    state_defaults = (10.0, 5.0)
    param_info: ClassVar[dict[str, Param]] = {
        "alpha": Param(1.0, "1/time", "prey growth rate", "α"),
        "beta": Param(0.1, "1/(time predator)", "predation rate", "β"),
        "delta": Param(0.075, "1/(time prey)", "predator growth per prey eaten", "δ"),
        "gamma": Param(1.5, "1/time", "predator death rate", "γ"),
    }
    equations = """
d(prey)/dt     = alpha prey - beta prey predator
d(predator)/dt = delta prey predator - gamma predator
"""
    nonnegative = True

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, z = y.unbind(-1)
        return torch.stack([p["alpha"] * x - p["beta"] * x * z, p["delta"] * x * z - p["gamma"] * z], dim=-1)

    def invariant(self, y: torch.Tensor, p: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The conserved quantity ``δ x - γ log x + β y - α log y`` for states ``(..., 2)``."""
        p = self.params if p is None else p
        x, z = y[..., 0], y[..., 1]
        return p["delta"] * x - p["gamma"] * x.log() + p["beta"] * z - p["alpha"] * z.log()


class VanDerPol(MechanisticModel):
    """Van der Pol oscillator: ``x'' - μ (1 - x²) x' + x = 0`` as ``x' = v, v' = μ (1 - x²) v - x``.

    ``μ`` (dimensionless): strength of the nonlinear damping; large ``μ`` (≳ 100) makes the problem stiff.
    """

    name = "van-der-pol"
    title = "Van der Pol relaxation oscillator (1926)"
    states = ("x", "v")
    state_defaults = (2.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {"mu": Param(1.0, "-", "nonlinear damping strength", "μ")}
    equations = """
dx/dt = v
dv/dt = mu (1 - x^2) v - x
"""

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, v = y.unbind(-1)
        return torch.stack([v, p["mu"] * (1 - x * x) * v - x], dim=-1)


class Lorenz(MechanisticModel):
    """Lorenz's convection model (J. Atmos. Sci. 20, 1963), chaotic for the default parameters.

    .. code-block:: text

        dx/dt = σ (y - x)
        dy/dt = x (ρ - z) - y
        dz/dt = x y - β z

    ``σ``: Prandtl number; ``ρ``: Rayleigh number (relative to its critical value); ``β``: aspect-ratio
    factor. Nearby trajectories separate like ``exp(0.9 t)``: fit long series with multiple shooting.
    """

    name = "lorenz"
    title = "Lorenz convection model (1963), chaotic"
    states = ("x", "y", "z")
    state_defaults = (1.0, 1.0, 1.0)
    param_info: ClassVar[dict[str, Param]] = {
        "sigma": Param(10.0, "-", "Prandtl number", "σ"),
        "rho": Param(28.0, "-", "Rayleigh number", "ρ"),
        "beta": Param(8.0 / 3.0, "-", "geometric factor", "β"),
    }
    equations = """
dx/dt = sigma (y - x)
dy/dt = x (rho - z) - y
dz/dt = x y - beta z
"""

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x, u, z = y.unbind(-1)
        return torch.stack([p["sigma"] * (u - x), x * (p["rho"] - z) - u, x * u - p["beta"] * z], dim=-1)


class DampedPendulum(MechanisticModel):
    """A damped pendulum: ``θ'' + c θ' + (g / L) sin θ = 0``.

    ``g`` (m/s²): gravitational acceleration; ``length`` (m): pendulum length; ``damping`` (1/s): friction
    coefficient per unit moment of inertia. Only ``g / length`` enters the dynamics: fix one of them when
    fitting.
    """

    name = "pendulum"
    title = "damped pendulum"
    states = ("theta", "omega")
    state_defaults = (1.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {
        "g": Param(9.81, "m/s^2", "gravitational acceleration", "g"),
        "length": Param(1.0, "m", "pendulum length", "L"),
        "damping": Param(0.1, "1/s", "damping coefficient", "c"),
    }
    equations = """
dtheta/dt = omega
domega/dt = -(g / length) sin(theta) - damping omega
"""
    time_unit = "s"
    derived_info: ClassVar[dict[str, str]] = {"period": "2 pi sqrt(length / g) (small-amplitude period, undamped)"}

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        theta, omega = y.unbind(-1)
        return torch.stack([omega, -(p["g"] / p["length"]) * torch.sin(theta) - p["damping"] * omega], dim=-1)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"period": 2 * torch.pi * torch.sqrt(p["length"] / p["g"])}


class Robertson(MechanisticModel):
    """Robertson's autocatalytic reaction (1966), the classic stiff test problem.

    .. code-block:: text

        dy1/dt = -k1 y1 + k3 y2 y3
        dy2/dt =  k1 y1 - k2 y2² - k3 y2 y3
        dy3/dt =  k2 y2²

    Rate constants ``k1 = 0.04``, ``k2 = 3·10⁷``, ``k3 = 10⁴`` (concentration⁻¹ time⁻¹ for the last two);
    ``y1 + y2 + y3`` is conserved. The rates differ by nine orders of magnitude: explicit methods need
    ~10⁵ steps per unit time; use a stiff solver.
    """

    name = "robertson"
    title = "Robertson's stiff chemical kinetics (1966)"
    states = ("y1", "y2", "y3")
    state_defaults = (1.0, 0.0, 0.0)
    param_info: ClassVar[dict[str, Param]] = {
        "k1": Param(0.04, "1/time", "rate of y1 -> y2", "k1"),
        "k2": Param(3.0e7, "1/(conc time)", "rate of 2 y2 -> y2 + y3", "k2"),
        "k3": Param(1.0e4, "1/(conc time)", "rate of y2 + y3 -> y1 + y3", "k3"),
    }
    equations = """
dy1/dt = -k1 y1 + k3 y2 y3
dy2/dt =  k1 y1 - k2 y2^2 - k3 y2 y3
dy3/dt =  k2 y2^2
"""
    nonnegative = True
    stiff = True

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        y1, y2, y3 = y.unbind(-1)
        a = p["k1"] * y1
        b = p["k2"] * y2 * y2
        c = p["k3"] * y2 * y3
        return torch.stack([-a + c, a - b - c, b], dim=-1)
