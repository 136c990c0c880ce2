"""One ``torch.compile`` wrapper per function, shared by every solve in the process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process; dynamo guards (loop settings, solver, f, shapes, dtypes) decide
    recompiles."""
    if fn not in _COMPILED:
        import torch
        import torch._dynamo

        # Every (solver, f, shape, dtype) combination is one more compiled entry of the one function; dynamo's
        # default of 8 would silently drop the 9th back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def tracing_autograd(on: bool) -> contextlib.AbstractContextManager:
    """While ``on``: let dynamo trace ``torch.autograd.grad`` (the adjoints' backward fields call it for their
    vector-Jacobian products) instead of breaking the graph there."""
    if not on:
        return contextlib.nullcontext()
    import torch._dynamo

    return torch._dynamo.config.patch(trace_autograd_ops=True)
