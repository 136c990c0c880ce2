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


def param_list(params: Iterable[Any] | None) -> list[torch.Tensor] | None:
    """A strategy's ``params=`` option as a list, or ``None`` (find them); anything but tensors is an error."""
    if params is None:
        return None
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be a list of tensors (e.g. list(model.parameters())); got a single tensor")
    params = list(params)
    bad = [type(p).__name__ for p in params if not isinstance(p, torch.Tensor)]
    if bad:
        raise TypeError(f"params must be tensors (e.g. list(model.parameters())); got {bad[:3]}")
    return params


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
        _collect_function(obj, found, depth)
    elif callable(obj) and hasattr(obj, "__dict__"):  # an object with __call__: what it holds and its method reads
        for value in vars(obj).values():
            if isinstance(value, (torch.Tensor, nn.Module)):
                _collect(value, found, depth + 1)
        call = vars(type(obj)).get("__call__")
        if inspect.isfunction(call):
            _collect_function(call, found, depth + 1)


def _collect_function(obj: Any, found: list[torch.Tensor], depth: int) -> None:
    """Modules and tensors a function closes over or names as globals."""
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


def untracked_leaves(out: torch.Tensor, known: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors requiring grad that ``out``'s autograd graph reaches besides ``known`` (leaves, or non-leaf
    tensors whose graph is not followed further): what a strategy that differentiates only ``known`` would
    silently leave without a gradient."""
    stop_nodes = {x.grad_fn for x in known if x.grad_fn is not None}
    stop_leaves = {id(x) for x in known if x.grad_fn is None}
    found: list[torch.Tensor] = []
    seen: set = set()
    stack = [out.grad_fn]
    while stack:  # bounded: every node of the (finite) graph is visited once
        node = stack.pop()
        if node is None or node in seen or node in stop_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            if id(variable) not in stop_leaves:
                found.append(variable)
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def check_tracked(out: torch.Tensor, known: list[torch.Tensor], strategy: str) -> None:
    """Raise if ``f``'s output depends on tensors requiring grad outside ``known``."""
    missed = untracked_leaves(out, known)
    if missed:
        shapes = [tuple(x.shape) for x in missed[:4]]
        raise ValueError(
            f"f reads {len(missed)} tensor(s) requiring grad (shapes {shapes}) that gradient={strategy!r} did not "
            "find and would leave without a gradient: pass every tensor to differentiate in params=[...] (e.g. "
            "list(model.parameters())) or in args, or make f an nn.Module"
        )
