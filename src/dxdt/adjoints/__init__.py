"""How gradients flow through a solve: one strategy per class, chosen with ``solve(gradient=...)``.

==================  =====================================================  ==============================
strategy            gradient                                               memory
==================  =====================================================  ==============================
``Autodiff``        exact gradient of the computed solution                graph of every step
``Checkpointed``    the same, recomputing segments in the backward pass    logarithmic in the steps
``BacksolveAdjoint``  continuous adjoint, y re-integrated backwards        flat
``InterpolatingAdjoint``  continuous adjoint, y from the dense solution    the dense solution (no graph)
``ForwardSensitivity``  forward sensitivity equations (few parameters)     sensitivities at save times
==================  =====================================================  ==============================

See ``docs/gradients.md`` for which to pick.
"""

from __future__ import annotations

from .backsolve import BacksolveAdjoint
from .base import AbstractGradient, Autodiff
from .checkpointed import Checkpointed
from .continuous import ContinuousAdjoint
from .forward import ForwardSensitivity
from .interpolating import InterpolatingAdjoint

_BY_NAME = {
    cls.name: cls for cls in (Autodiff, Checkpointed, BacksolveAdjoint, InterpolatingAdjoint, ForwardSensitivity)
}


def get_gradient(gradient: str | AbstractGradient) -> AbstractGradient:
    """A strategy instance from its name (default options) or as given."""
    if isinstance(gradient, AbstractGradient):
        return gradient
    if isinstance(gradient, str) and gradient in _BY_NAME:
        return _BY_NAME[gradient]()
    raise ValueError(f"gradient must be one of {sorted(_BY_NAME)} or an instance from dxdt.adjoints; got {gradient!r}")


__all__ = [
    "AbstractGradient",
    "Autodiff",
    "BacksolveAdjoint",
    "Checkpointed",
    "ContinuousAdjoint",
    "ForwardSensitivity",
    "InterpolatingAdjoint",
    "get_gradient",
]
