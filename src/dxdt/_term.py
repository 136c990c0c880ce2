"""Wraps the user's vector field: one calling convention for the loop, shapes checked once."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch

# Plain functions (and the functions behind bound methods) by their code and defaults: inspecting a signature
# costs more than a short solve of a small system, and fits call solve with the same field many times.
_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _accepts_args(f: Callable) -> bool | None:
    """True if ``f`` takes (t, y, args), False if (t, y), None if it cannot be told (``*args``)."""
    if isinstance(f, torch.nn.Module):  # its own signature is Module.__call__'s (*args, **kwargs)
        f = f.forward
    fn = f.__func__ if inspect.ismethod(f) else f
    if not inspect.isfunction(fn):
        return _inspect_args(f)
    key = (fn.__code__, fn.__defaults__, fn is not f)
    cached = _SIGNATURES.get(fn)
    if cached is None or cached[0] != key:
        cached = (key, _inspect_args(f))
        _SIGNATURES[fn] = cached
    return cached[1]


def _inspect_args(f: Callable) -> bool | None:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) >= 3:
        return True
    if len(positional) >= 3:  # a third, optional parameter: pass args to it only if given
        return None
    if len(positional) == 2:
        return False
    raise TypeError(
        f"f must take (t, y) or (t, y, args); got a callable with signature {sig}. "
        "Wrap it, e.g. `lambda t, y: model(y)`."
    )


class Term:
    """The vector field as the loop calls it: ``term(t, y)`` with float64 times.

    Args:
        f: ``f(t, y)`` or ``f(t, y, args)``.
        args: passed through to ``f`` as its third argument.
        time_shape: the shape ``t`` is given to ``f`` in (beyond conversion to ``y``'s dtype):
            ``(B, 1, ..., 1)`` (broadcastable against ``y``) in per-sample mode, ``()`` in joint mode.
        unwrap/wrap: joint mode integrates a ``(1, B, *S)`` state; these strip and restore the leading 1
            so that ``f`` sees ``(B, *S)``.
    """

    def __init__(
        self,
        f: Callable,
        args: Any,
        time_shape: tuple[int, ...],
        joint: bool = False,
    ):
        takes_args = _accepts_args(f)
        if takes_args is False and args is not None:
            raise TypeError(
                "args was given but f takes only (t, y): give f a third parameter, f(t, y, args), or drop args."
            )
        self.f = f
        self.args = args
        self.pass_args = takes_args is True or (takes_args is None and args is not None)
        self.time_shape = time_shape
        self.joint = joint
        # Set when forward-mode AD cannot differentiate f (implicit solvers then use reverse mode for the solve).
        self.forward_jacobian_failed = False

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``t``: float64, ``(B,)`` (per-sample) or ``(1,)`` (joint); ``y``: the loop's state."""
        return self.call(t.to(y.dtype).reshape(self.time_shape), y)

    def stage_times(self, t: torch.Tensor, dt: torch.Tensor, c: torch.Tensor, dtype: torch.dtype):
        """``t + c_i dt`` for every stage at once (float64 sums), ready for :meth:`call`; a tuple of tensors."""
        times = torch.addcmul(t.unsqueeze(-1), dt.unsqueeze(-1), c).to(dtype)  # (B, s)
        if not self.time_shape:  # joint mode: a batch of one, 0-d times
            return times.reshape(-1).unbind(0)
        return times.reshape((times.shape[0], c.shape[0], *self.time_shape[1:])).unbind(1)

    def call(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate ``f`` with ``t`` already in the shape and dtype ``f`` receives."""
        if self.joint:
            # squeeze, not y[0]: its backward is a view, where select's allocates and copies a full gradient
            y = y.squeeze(0)
            out = self.f(t, y, self.args) if self.pass_args else self.f(t, y)
            return out.unsqueeze(0) if isinstance(out, torch.Tensor) else out
        return self.f(t, y, self.args) if self.pass_args else self.f(t, y)

    def check(self, out: Any, y: torch.Tensor) -> None:
        """Raise a clear error if ``f``'s output does not match the state (called on the first evaluation)."""
        shape = tuple(y.shape[1:]) if self.joint else tuple(y.shape)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f must return a torch.Tensor of shape {shape}; it returned {type(out).__name__}")
        got = tuple(out.shape[1:]) if self.joint else tuple(out.shape)
        if got != shape:
            raise ValueError(
                f"f returned shape {got} but y0 has shape {shape}: f(t, y) must return dy/dt with y's shape "
                "(including the batch dimension)"
            )
        if out.dtype != y.dtype:
            raise ValueError(
                f"f returned dtype {out.dtype} but y0 has dtype {y.dtype}: make f compute in y's dtype "
                "(e.g. move the model with .to(y0.dtype))"
            )
        if out.device != y.device:
            raise ValueError(f"f returned a tensor on {out.device} but y0 is on {y.device}")
