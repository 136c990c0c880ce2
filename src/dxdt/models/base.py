"""The base of every mechanistic model: named positive parameters, documented equations, initial states.

A model is an ``nn.Module`` whose parameters are stored as logarithms (``log_beta``), so that gradient
steps and optimizers can never make them negative, and read back by name (``model.beta``). The vector field
is written once, as :meth:`MechanisticModel.rhs`, a pure function of ``(t, y, params)`` where each parameter
is a tensor of shape ``()`` or ``(B,)`` (one value per sample): the same code serves ``model(t, y)`` inside
:func:`dxdt.solve` and the fitting code, which solves a batch of parameter vectors at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["FunctionModel", "MechanisticModel", "Param"]


@dataclass(frozen=True)
class Param:
    """Documentation and default of one model parameter.

    Attributes:
        default: the value used when none is given.
        unit: physical unit, e.g. ``"1/day"``.
        meaning: one line saying what the parameter is.
        symbol: how tables print it (e.g. ``"β"``).
        positive: stored as a logarithm and always positive (rates, sizes); ``False`` for real-valued
            parameters such as the weights of a neural term.
    """

    default: float
    unit: str
    meaning: str
    symbol: str = ""
    positive: bool = True


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype).detach().clone()
    if t.ndim > 1:
        raise ValueError(f"a parameter is a number or a (B,) tensor (one value per sample); got shape {tuple(t.shape)}")
    return t


class MechanisticModel(nn.Module):
    """An ODE ``dy/dt = f(t, y; θ)`` with named, positive parameters θ.

    Subclasses set the class attributes and implement :meth:`rhs`:

    Attributes:
        name: the short name used by ``dxdt models`` and ``dxdt fit --model``.
        title: a one-line description.
        states: names of the state components, in order.
        state_defaults: a default initial state (one value per state).
        param_info: ``{name: Param}``, in order.
        equations: the equations as text (shown by ``dxdt models``).
        time_unit: unit of ``t`` the parameters' units refer to.
        nonnegative: the states are amounts (counts, concentrations) that cannot be negative.
        stiff: the model is stiff for its default parameters (needs an implicit solver).
        susceptible, seed: for compartmental epidemic models, the state made up by the rest of the population
            and the state that holds the initial case(s) (see :meth:`initial_state`).

    Args:
        **params: parameter values (numbers or ``(B,)`` tensors); missing ones take their defaults.
        dtype: the parameters' dtype (default float64: fitting needs it).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    states: ClassVar[tuple[str, ...]] = ()
    state_defaults: ClassVar[tuple[float, ...]] = ()
    param_info: ClassVar[dict[str, Param]] = {}
    equations: ClassVar[str] = ""
    time_unit: ClassVar[str] = "time"
    nonnegative: ClassVar[bool] = False
    stiff: ClassVar[bool] = False
    susceptible: ClassVar[str | None] = None
    seed: ClassVar[str | None] = None
    #: ``rhs`` is analytic and works on complex tensors (no abs/max/comparisons): fits then get exact
    #: Jacobians by complex-step forward sensitivities, much cheaper than autodiff through the solver.
    complex_step: ClassVar[bool] = True

    def __init__(self, *, dtype: torch.dtype = torch.float64, **params: Any):
        super().__init__()
        unknown = sorted(set(params) - set(self.param_info))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are {', '.join(self.param_info)}"
            )
        for pname, info in self.param_info.items():
            value = _as_tensor(params.get(pname, info.default), dtype)
            if not bool(torch.isfinite(value).all()) or (info.positive and bool((value <= 0).any())):
                need = "positive and finite" if info.positive else "finite"
                raise ValueError(f"{type(self).__name__}: parameter {pname} must be {need}; got {value}")
            if info.positive:
                self.register_parameter("log_" + pname, nn.Parameter(value.log()))
            else:
                self.register_parameter("raw_" + pname, nn.Parameter(value))

    # --- parameters by name ---------------------------------------------------------------------------

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.param_info)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The parameter values by name (differentiable: ``exp`` of the stored logarithms for positive ones)."""
        return {p: self._value(p, info) for p, info in self.param_info.items()}

    def _value(self, name: str, info: Param) -> torch.Tensor:
        if info.positive:
            return nn.Module.__getattr__(self, "log_" + name).exp()
        return nn.Module.__getattr__(self, "raw_" + name)

    def __getattr__(self, name: str) -> Any:
        info = self.param_info.get(name)
        if info is not None:
            return self._value(name, info)
        return nn.Module.__getattr__(self, name)

    def set_params(self, **params: Any) -> MechanisticModel:
        """Set parameter values in place (positive numbers or ``(B,)`` tensors); returns ``self``."""
        for pname, value in params.items():
            if pname not in self.param_info:
                raise TypeError(
                    f"{type(self).__name__} has no parameter {pname!r}; it has {', '.join(self.param_info)}"
                )
            positive = self.param_info[pname].positive
            key = ("log_" if positive else "raw_") + pname
            raw = nn.Module.__getattr__(self, key)
            value = _as_tensor(value, raw.dtype)
            if positive and bool((value <= 0).any()):
                raise ValueError(f"parameter {pname} must be positive; got {value}")
            stored = value.log() if positive else value
            with torch.no_grad():
                if stored.shape == raw.shape:
                    raw.copy_(stored)
                else:
                    setattr(self, key, nn.Parameter(stored.to(raw.device)))
        return self

    # --- the vector field -----------------------------------------------------------------------------

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``dy/dt`` for states ``y`` of shape ``(B, n)`` and parameters ``p[name]`` of shape ``()`` or ``(B,)``."""
        raise NotImplementedError

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``f(t, y)`` with the model's own parameters: pass the model to :func:`dxdt.solve` as ``f``."""
        return self.rhs(t, y, self.params)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Quantities computed from the parameters (e.g. ``R0``); fits report them with intervals."""
        return {}

    def regularization(self, p: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Residuals ``(B, R)`` whose half sum of squares a fit adds to its objective (a Gaussian prior, e.g.
        weight decay on a neural term), or ``None``."""
        return None

    derived_info: ClassVar[dict[str, str]] = {}

    # --- initial states -------------------------------------------------------------------------------

    def initial_state(
        self, *, population: float | None = None, dtype: torch.dtype = torch.float64, **values: float
    ) -> torch.Tensor:
        """An initial state ``(1, n)`` from state values by name; unnamed states take their defaults.

        For epidemic models, ``population=N`` fills the susceptible compartment with whatever the others
        leave (``S = N - I - R``); the seed compartment (``I``) then defaults to one case and the rest to 0.

        Raises:
            ValueError: an unknown state name, a negative amount, or a population smaller than the rest.
        """
        unknown = sorted(set(values) - set(self.states))
        if unknown:
            raise ValueError(
                f"{self.name or type(self).__name__} has no state {', '.join(map(repr, unknown))}; "
                f"its states are {', '.join(self.states)}"
            )
        if population is not None:
            if self.susceptible is None:
                raise ValueError(f"population= is for epidemic models; {self.name} has no susceptible compartment")
            if not math.isfinite(population) or population <= 0:
                raise ValueError(f"population must be a positive number; got {population}")
            if self.susceptible in values:
                raise ValueError(f"give either population= or {self.susceptible}=, not both")
            state = {s: 0.0 for s in self.states}
            if self.seed is not None:
                state[self.seed] = 1.0
            state.update(values)
            rest = sum(v for s, v in state.items() if s != self.susceptible)
            if rest > population:
                raise ValueError(
                    f"the initial compartments other than {self.susceptible} add up to {rest} > {population}"
                )
            state[self.susceptible] = population - rest
        else:
            state = dict(zip(self.states, self.state_defaults))
            state.update(values)
        out = torch.tensor([[float(state[s]) for s in self.states]], dtype=dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"initial state values must be finite; got {state}")
        if self.nonnegative and bool((out < 0).any()):
            bad = [s for s in self.states if state[s] < 0]
            raise ValueError(
                f"{self.name}: the states are amounts and cannot be negative; got {bad[0]}={state[bad[0]]}"
            )
        return out

    def state_index(self, state: str) -> int:
        if state not in self.states:
            raise ValueError(
                f"{self.name or type(self).__name__} has no state {state!r}; its states are {', '.join(self.states)}"
            )
        return self.states.index(state)

    def extra_repr(self) -> str:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return values

    def describe(self) -> str:
        """Equations, states and parameters as text (what ``dxdt models`` prints)."""
        lines = [f"{self.name}: {self.title}", "", *("    " + ln for ln in self.equations.strip().splitlines()), ""]
        defaults = ", ".join(f"{s}={_fmt(v)}" for s, v in zip(self.states, self.state_defaults))
        lines.append(f"  states: {', '.join(self.states)} (default initial state {defaults}; time in {self.time_unit})")
        lines.append("  parameters:")
        width = max((len(p) for p in self.param_info), default=0)
        for pname, info in self.param_info.items():
            lines.append(f"    {pname:<{width}}  {_fmt(info.default):>9}  {info.unit:<12} {info.meaning}")
        for dname, meaning in self.derived_info.items():
            lines.append(f"  derived: {dname} = {meaning}")
        if self.stiff:
            lines.append("  stiff: use an implicit solver (explicit ones need very many steps)")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return f"{v.item():.6g}" if v.numel() == 1 else str([float(f"{x:.6g}") for x in v.tolist()])
    return f"{v:.6g}"


class FunctionModel(MechanisticModel):
    """A user's vector field ``f(t, y, p)`` with named positive parameters, usable everywhere a model is.

    Args:
        f: ``f(t, y, p)`` with ``y`` of shape ``(B, n)`` and ``p`` a dict of tensors of shape ``()`` or ``(B,)``;
            returns ``dy/dt`` shaped like ``y``.
        params: initial parameter values by name (positive).
        states: state names (default ``y0, y1, ...``; ``n_states`` must then be given).
        derived: optional ``derived(p) -> {name: tensor}`` (e.g. ``lambda p: {"R0": p["beta"] / p["gamma"]}``).
        nonnegative: the states are amounts (enables log-parameterized initial states when estimated).
        complex_step: ``f`` is analytic and accepts complex tensors (no ``abs``, ``max``, comparisons, ``.real``):
            fits may then differentiate it by complex step, which is much faster than autodiff.

    Example::

        def decay(t, y, p):
            return -p["k"][..., None] * y if p["k"].ndim else -p["k"] * y
        model = FunctionModel(decay, {"k": 0.5}, states=("x",))
    """

    def __init__(
        self,
        f: Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor],
        params: Mapping[str, float],
        *,
        states: tuple[str, ...] | None = None,
        n_states: int | None = None,
        derived: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        nonnegative: bool = False,
        complex_step: bool = False,
        name: str = "function",
        dtype: torch.dtype = torch.float64,
    ):
        if not callable(f):
            raise TypeError(f"f must be callable as f(t, y, p); got {type(f).__name__}")
        if not params:
            raise ValueError("FunctionModel needs at least one parameter: params={'name': initial value}")
        if states is None:
            if n_states is None:
                raise ValueError("give states=('x', ...) or n_states=")
            states = tuple(f"y{i}" for i in range(n_states))
        # Instance attributes shadow MechanisticModel's class-level description of a model.
        self.name = name
        self.title = f"user model {getattr(f, '__name__', 'f')}"
        self.states = tuple(states)
        self.state_defaults = (0.0,) * len(states)
        self.param_info = {k: Param(float(v), "", "user parameter") for k, v in params.items()}
        self.nonnegative = nonnegative
        self.complex_step = complex_step
        super().__init__(dtype=dtype, **{k: float(v) for k, v in params.items()})
        self._f = f
        self._derived = derived

    def rhs(self, t: torch.Tensor, y: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._f(t, y, p)

    def derived(self, p: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._derived(p) if self._derived is not None else {}
