"""Observation models: which function of the state the data measure.

An observation maps a solution ``ys`` of shape ``(B, T, n)`` (at the observation times) and the initial
state ``y0`` ``(B, n)`` to the predicted mean of one data series, ``(B, T)``:

* :class:`State` — one compartment (prevalence: ``I``), optionally scaled (a reporting fraction);
* :class:`Sum` — a scaled sum of states (``I + R``);
* :class:`Cumulative` — how much has entered a group of compartments since ``t0`` (cumulative incidence:
  for SIR, ``(I + R) - (I0 + R0) = S0 - S``);
* :class:`Incidence` — the same per observation interval: new cases between consecutive observation times
  (daily incidence for daily data; the first interval starts at ``t0``);
* :class:`Function` — anything else, from a function of ``ys``.

:func:`parse` reads the short forms used by the command line: ``"I"``, ``"I+R"``, ``"0.1*I"``,
``"incidence"``, ``"cumulative"``, ``"incidence(E+I+R)"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

__all__ = ["Cumulative", "Function", "Incidence", "Observation", "State", "Sum", "parse"]


class Observation:
    """Base class: ``obs(ys, y0)`` returns ``(B, T)``. Bind to a model's state names with :meth:`bind`."""

    name: str = ""
    #: the observed quantity cannot be negative when the states cannot
    amount: bool = True
    #: analytic in the states (works on complex tensors): Jacobians may use the complex step
    analytic: bool = True

    def bind(self, states: Sequence[str]) -> Observation:
        """Resolve state names to indices; raises ``ValueError`` naming an unknown state."""
        return self

    def __call__(self, ys: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _indices(names: Sequence[str], states: Sequence[str]) -> list[int]:
    out = []
    for s in names:
        if s not in states:
            raise ValueError(f"{s!r} is not a state of the model (its states are {', '.join(states)})")
        out.append(list(states).index(s))
    return out


class Sum(Observation):
    """``scale · Σ y[states]`` at each observation time."""

    def __init__(self, states: Sequence[str], scale: float = 1.0, name: str | None = None):
        if isinstance(states, str):
            states = [states]
        if not states:
            raise ValueError("an observation needs at least one state")
        self.states = list(states)
        self.scale = float(scale)
        prefix = "" if self.scale == 1.0 else f"{self.scale:g}*"
        self.name = name or prefix + "+".join(self.states)
        self.idx: list[int] | None = None

    def bind(self, states):
        self.idx = _indices(self.states, states)
        return self

    def _total(self, y: torch.Tensor) -> torch.Tensor:
        if self.idx is None:
            raise RuntimeError(f"observation {self.name!r} is not bound to a model: call .bind(model.states)")
        out = y[..., self.idx[0]]
        for i in self.idx[1:]:
            out = out + y[..., i]
        return out

    def __call__(self, ys, y0):
        return self.scale * self._total(ys)


class State(Sum):
    """One state, optionally scaled: ``scale · y[state]`` (prevalence, a reported fraction of it)."""

    def __init__(self, state: str, scale: float = 1.0, name: str | None = None):
        super().__init__([state], scale, name)


class Cumulative(Sum):
    """``scale · (Σ y[states](t) - Σ y[states](t0))``: the total that has entered these states since ``t0``.

    Default states (``None``): every state but the model's susceptible one (for SIR: new infections
    ``S0 - S``). Compartments that people leave again (``E`` in SEIR) must all be listed downstream.
    """

    def __init__(self, states: Sequence[str] | None = None, scale: float = 1.0, name: str | None = None):
        self._default = states is None
        super().__init__(list(states) if states is not None else ["?"], scale, name or "cumulative")

    def bind(self, states):
        if self._default:
            self.states = list(states[1:])  # epidemic models list the susceptible compartment first
        return super().bind(states)

    def __call__(self, ys, y0):
        return self.scale * (self._total(ys) - self._total(y0).unsqueeze(-1))


class Incidence(Cumulative):
    """New entries per observation interval: differences of :class:`Cumulative` between consecutive times.

    The first value counts from ``t0``. For daily data this is daily incidence.
    """

    def __init__(self, states: Sequence[str] | None = None, scale: float = 1.0, name: str | None = None):
        super().__init__(states, scale, name or "incidence")

    def __call__(self, ys, y0):
        cum = self._total(ys) - self._total(y0).unsqueeze(-1)
        prev = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)
        return self.scale * (cum - prev)


class Function(Observation):
    """``fn(ys, y0) -> (B, T)``: any differentiable function of the solution."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        name: str = "f(y)",
        amount: bool = False,
        analytic: bool = False,
    ):
        self.fn, self.name, self.amount, self.analytic = fn, name, amount, analytic

    def __call__(self, ys, y0):
        return self.fn(ys, y0)


_TERM = r"[A-Za-z_][A-Za-z0-9_]*"
_SUM = rf"^(?:(?P<scale>[0-9.eE+-]+)\s*\*\s*)?(?P<states>{_TERM}(?:\s*\+\s*{_TERM})*)$"


def parse(text: str | Observation) -> Observation:
    """An :class:`Observation` from its short form: ``"I"``, ``"I+R"``, ``"0.3*I"``, ``"incidence"``,
    ``"cumulative"``, ``"incidence(I+R)"``, ``"0.5*incidence"``.

    Raises:
        ValueError: the text is not one of these forms.
    """
    if isinstance(text, Observation):
        return text
    s = str(text).strip()
    m = re.match(r"^(?:(?P<scale>[0-9.eE+-]+)\s*\*\s*)?(?P<kind>incidence|cumulative)(?:\((?P<states>[^)]*)\))?$", s)
    if m:
        scale = float(m["scale"]) if m["scale"] else 1.0
        states = [x.strip() for x in m["states"].split("+")] if m["states"] else None
        cls = Incidence if m["kind"] == "incidence" else Cumulative
        return cls(states, scale)
    m = re.match(_SUM, s)
    if m:
        try:
            scale = float(m["scale"]) if m["scale"] else 1.0
        except ValueError:
            raise ValueError(f"cannot read the scale in observation {text!r}") from None
        states = [x.strip() for x in m["states"].split("+")]
        return State(states[0], scale) if len(states) == 1 else Sum(states, scale)
    raise ValueError(
        f"cannot read observation {text!r}: use a state name (I), a sum (I+R), a scaled state (0.3*I), "
        "incidence, cumulative, or incidence(E+I+R)"
    )
