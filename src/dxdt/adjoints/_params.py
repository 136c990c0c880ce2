"""Which tensors a vector field depends on: what the adjoints and forward sensitivities differentiate."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten


def find_params(f: Callable, args: Any) -> list[torch.Tensor]:
    """The tensors requiring grad that ``f`` reads: its parameters if it is an ``nn.Module`` (or a bound
    method of one), modules and tensors it closes over or names as globals (``lambda t, y: model(y)``),
    through ``functools.partial``, and the tensors in ``args``. Anything else must be passed as ``params=``.
    """
    found: list[torch.Tensor] = []
    _collect(f, found, depth=0)
    found += [x for x in tree_flatten(args)[0] if isinstance(x, torch.Tensor)]
    return unique_requiring_grad(found)


def unique_requiring_grad(tensors: Iterable[Any]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for x in tensors:
        if isinstance(x, torch.Tensor) and x.requires_grad and id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def _collect(obj: Any, found: list[torch.Tensor], depth: int) -> None:
    if depth > 3:  # closures of closures of ...: bounded
        return
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, nn.Module):
        found.extend(obj.parameters())
    elif isinstance(obj, functools.partial):
        for x in (obj.func, *obj.args, *obj.keywords.values()):
            _collect(x, found, depth + 1)
    elif inspect.ismethod(obj):
        _collect(obj.__self__, found, depth + 1)
        _collect(obj.__func__, found, depth + 1)
    elif inspect.isfunction(obj):
        for cell in obj.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
                _collect(value, found, depth + 1)
        for name in obj.__code__.co_names:
            value = obj.__globals__.get(name)
            if isinstance(value, (torch.Tensor, nn.Module)):
                _collect(value, found, depth + 1)
