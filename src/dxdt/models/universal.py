"""Universal differential equations: a mechanistic right-hand side plus a small neural network.

Rackauckas et al., "Universal Differential Equations for Scientific Machine Learning" (2020). The network
learns what the mechanistic part leaves out: an unknown term of the vector field (:class:`UniversalODE`) or a
parameter that changes in time (:class:`NeuralTransmissionSIR`). Both are ordinary ``nn.Module`` vector
fields ``f(t, y)``, so :func:`dxdt.solve` integrates them and :func:`dxdt.fit.fit` trains them (with
``optimizer="adam"`` or ``"lbfgs"``) against data with the same observation and noise models as a
mechanistic fit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .base import MechanisticModel, Param
from .epidemic import SIR

__all__ = ["NeuralTransmissionSIR", "UniversalODE", "mlp"]


def mlp(n_in: int, n_out: int, hidden: int = 16, depth: int = 2, *, zero_last: bool = True) -> nn.Sequential:
    """A small tanh network; with ``zero_last`` its output starts at exactly 0 (the mechanistic model alone)."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth - 1):
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    last = nn.Linear(width, n_out)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers).double()


def _time_column(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` as ``(B, 1)``: per-sample ``(B, 1)`` times pass through, a joint-mode 0-d time is expanded."""
    return t.reshape(-1, 1).expand(batch, 1) if t.numel() == 1 else t.reshape(batch, 1)


class UniversalODE(nn.Module):
    """``dy/dt = model(t, y) + scale · net([y / state_scale, t / time_scale])``.

    Args:
        model: the known mechanistic part (its parameters are trained too unless frozen).
        net: the correction; default: :func:`mlp` with ``n`` (or ``n + 1`` with time) inputs and ``n``
            outputs, zero at start.
        use_time: feed ``t / time_scale`` to the network as well.
        state_scale, time_scale, scale: normalisations: the network sees inputs of order one and its outputs
            are multiplied by ``scale`` (set it to the typical size of ``dy/dt``).
    """

    def __init__(
        self,
        model: MechanisticModel,
        net: nn.Module | None = None,
        *,
        use_time: bool = False,
        hidden: int = 16,
        state_scale: float = 1.0,
        time_scale: float = 1.0,
        scale: float = 1.0,
    ):
        super().__init__()
        n = len(model.states)
        self.model = model
        self.net = net if net is not None else mlp(n + int(use_time), n, hidden)
        self.use_time = use_time
        self.state_scale, self.time_scale, self.scale = state_scale, time_scale, scale
        self.states = model.states

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = y / self.state_scale
        if self.use_time:
            features = torch.cat([features, _time_column(t, y.shape[0]).to(y.dtype) / self.time_scale], dim=-1)
        return self.model(t, y) + self.scale * self.net(features)


class NeuralTransmissionSIR(MechanisticModel):
    """SIR with a transmission rate that a small network learns as a function of time.

    .. code-block:: text

        β(t)  = β · exp(g(t / time_scale)),   g(s) = Σ_j c_j tanh(a_j s + b_j)
        dS/dt = -β(t) S I / N,   dI/dt = β(t) S I / N - γ I,   dR/dt = γ I

    ``g`` is a one-hidden-layer network with ``hidden`` units; its output weights ``c_j`` start at 0 (constant
    ``β``), its inner weights at fixed random values. Training finds how transmission changed over an epidemic
    (school closures, behaviour, weather) without a formula for it.

    The network's weights are real-valued parameters of the model, one per sample like ``β`` and ``γ``, so a
    fit treats them like any other parameter: Levenberg–Marquardt with exact complex-step Jacobians (``tanh``
    is analytic), batched starts, forecasts. :meth:`regularization` adds weight decay
    (``weight_decay · Σ c_j²``): a Gaussian prior that keeps ``β(t)`` smooth where the data say little.

    Args:
        beta, gamma: starting values of the mechanistic parameters (1/day).
        time_scale: typical length of the series (the network sees ``t / time_scale``).
        hidden: width of the network.
        weight_decay: strength of the prior on the output weights.
        random_seed: seeds the inner weights.
    """

    name = "sir-neural-beta"
    title = "SIR with a neural, time-varying transmission rate (universal differential equation)"
    states = SIR.states
    state_defaults = SIR.state_defaults
    equations = """
beta(t) = beta exp(sum_j c_j tanh(a_j t / time_scale + b_j))
dS/dt = -beta(t) S I / N,  dI/dt = beta(t) S I / N - gamma I,  dR/dt = gamma I
"""
    time_unit = "day"
    nonnegative = True
    susceptible = "S"
    seed = "I"
    derived_info = SIR.derived_info

    def __init__(
        self,
        beta: float = 0.5,
        gamma: float = 0.2,
        *,
        time_scale: float = 1.0,
        hidden: int = 8,
        weight_decay: float = 1.0,
        random_seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ):
        gen = torch.Generator().manual_seed(random_seed)
        a = torch.randn(hidden, generator=gen, dtype=torch.float64) * 3.0
        b = (torch.rand(hidden, generator=gen, dtype=torch.float64) * 2 - 1) * 3.0
        info = {
            "beta": Param(beta, "1/day", "transmission rate at g = 0", "β"),
            "gamma": Param(gamma, "1/day", "recovery rate", "γ"),
        }
        for j in range(hidden):
            info[f"a{j}"] = Param(float(a[j]), "-", f"inner weight of unit {j}", positive=False)
            info[f"b{j}"] = Param(float(b[j]), "-", f"inner bias of unit {j}", positive=False)
            info[f"c{j}"] = Param(0.0, "-", f"output weight of unit {j}", positive=False)
        self.param_info = info
        self.hidden = hidden
        super().__init__(dtype=dtype)
        self.time_scale = float(time_scale)
        self.weight_decay = float(weight_decay)

    def transmission(self, t: torch.Tensor, p: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``β(t)`` for times ``t`` of shape ``(T,)`` (with the model's parameters, or ``p`` per sample)."""
        p = self.params if p is None else p
        s = torch.as_tensor(t, dtype=p["beta"].dtype) / self.time_scale
        g = sum(p[f"c{j}"] * torch.tanh(p[f"a{j}"] * s + p[f"b{j}"]) for j in range(self.hidden))
        return p["beta"] * torch.exp(g)

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s_, i, r = y.unbind(-1)
        tt = t.reshape(-1) / self.time_scale if t.ndim else t / self.time_scale
        units = [p[f"c{j}"] * torch.tanh(p[f"a{j}"] * tt + p[f"b{j}"]) for j in range(self.hidden)]
        beta = p["beta"] * torch.exp(torch.stack(torch.broadcast_tensors(*units), dim=0).sum(0))
        infection = beta * s_ * i / (s_ + i + r)
        recovery = p["gamma"] * i
        return torch.stack([-infection, infection - recovery, recovery], dim=-1)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"R0(t=0)": self.transmission(torch.zeros(()), dict(p)) / p["gamma"]}

    def regularization(self, p: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if self.weight_decay <= 0:
            return None
        scale = self.weight_decay**0.5
        return scale * torch.stack([p[f"c{j}"] for j in range(self.hidden)], dim=-1).reshape(-1, self.hidden)
