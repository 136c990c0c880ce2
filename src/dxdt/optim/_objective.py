"""The loss as the optimizers see it: parameters flattened into one vector, gradients and Hessian-vector
products of the user's closure, every evaluation counted.

The closure reads the parameters in place (the ``torch.optim`` convention), so the functional transforms
of ``torch.func`` cannot see them: Hessian-vector products here use double backward through the closure's
graph instead (``dxdt.optim.hvp`` offers the ``torch.func`` version for pure functions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Closure = Callable[[], torch.Tensor]


class ClosureObjective:
    """``L(θ)`` given by a closure over a list of parameter tensors; ``θ`` is their concatenation.

    Args:
        params: the parameters (leaf tensors), all of one dtype and device.
        closure: re-evaluates the model and returns the loss (a scalar tensor). It may call ``backward()``
            itself (first-order use); methods that need Hessian-vector products require that it does not.

    Attributes:
        n_grad: closure + gradient evaluations so far.
        n_hvp: Hessian-vector products so far.
    """

    def __init__(self, params: Sequence[torch.Tensor], closure: Closure | None = None):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        p0 = self.params[0]
        for p in self.params:
            if p.dtype != p0.dtype or p.device != p0.device:
                raise ValueError(
                    f"all parameters must share one dtype and device; got {p0.dtype} on {p0.device} and "
                    f"{p.dtype} on {p.device}"
                )
            if not p.is_floating_point():
                raise TypeError(f"parameters must be floating point; got {p.dtype}")
        self.closure = closure
        self.numel = sum(p.numel() for p in self.params)
        self.n_grad = 0
        self.n_hvp = 0
        # The last few evaluations: (θ, loss, gradient tuple, has_graph). Solvers evaluate f at a point and
        # later need its gradient again (FSAL) or its Hessian (the next Rosenbrock step).
        self._cache: list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], bool]] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def set_closure(self, closure: Closure, keep_cache: bool = False) -> None:
        """Use ``closure`` from now on. Cached evaluations are dropped unless it is the same callable or
        ``keep_cache`` says the loss is the same function (full batch)."""
        if closure is not self.closure and not keep_cache:
            self._cache.clear()
        self.closure = closure

    def get_flat(self) -> torch.Tensor:
        """The current parameters as one detached vector ``(n,)``."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def set_flat(self, theta: torch.Tensor) -> None:
        """Write the vector ``θ`` (``(n,)`` or ``(1, n)``) into the parameters, in place."""
        theta = theta.detach().reshape(-1)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                k = p.numel()
                p.copy_(theta[offset : offset + k].view_as(p))
                offset += k

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector cut into tensors shaped like the parameters."""
        out, offset = [], 0
        v = v.reshape(-1)
        for p in self.params:
            out.append(v[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    @staticmethod
    def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _lookup(self, theta: torch.Tensor, need_graph: bool):
        for i in range(len(self._cache) - 1, -1, -1):
            entry = self._cache[i]
            if (entry[3] or not need_graph) and torch.equal(entry[0], theta):
                self._cache.append(self._cache.pop(i))  # least recently used goes first
                return entry
        return None

    def _evaluate(self, create_graph: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if self.closure is None:
            raise RuntimeError("no closure: pass one to optimizer.step(closure)")
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = self.closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("the closure must return the loss as a scalar tensor")
            if any(p.grad is not None for p in self.params):  # the closure called backward() itself
                if create_graph:
                    raise ValueError(
                        "this method needs Hessian-vector products: the closure must return the loss without "
                        "calling loss.backward() (the optimizer differentiates it itself)"
                    )
                grads = tuple(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params)
            elif not loss.requires_grad:
                raise ValueError("the loss returned by the closure does not depend on the parameters (no graph)")
            else:
                grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=create_graph, allow_unused=True)
                grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params))
        self.n_grad += 1
        return loss.detach().reshape(()), grads

    def loss_grad(self, theta: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and flat gradient at ``θ`` (``(n,)``); the parameters are left at ``θ``."""
        theta = theta.detach().reshape(-1)
        entry = self._lookup(theta, create_graph)
        if entry is not None:
            if not torch.equal(self.get_flat(), theta):
                self.set_flat(theta)
            return entry[1], self.flat(entry[2]).detach()
        self.set_flat(theta)
        loss, grads = self._evaluate(create_graph)
        self._cache.append((theta.clone(), loss, grads, create_graph))
        del self._cache[:-3]
        return loss, self.flat(grads).detach()

    def hvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``H(θ) v`` for flat ``v`` (``(n,)`` or ``(k, n)`` for several at once) by double backward."""
        theta = theta.detach().reshape(-1)
        entry = self._lookup(theta, need_graph=True)
        if entry is None:
            self.loss_grad(theta, create_graph=True)
            entry = self._lookup(theta, need_graph=True)
        if v.ndim != 1:
            return torch.stack([self.hvp(theta, vi) for vi in v])
        self.n_hvp += 1
        # A gradient that does not depend on the parameters (a loss linear in them) has no graph: its
        # Hessian block is zero.
        pairs = [(g, vi) for g, vi in zip(entry[2], self.split(v)) if g.requires_grad]
        if not pairs:
            return torch.zeros_like(v)
        out = torch.autograd.grad(
            [g for g, _ in pairs],
            self.params,
            grad_outputs=[vi for _, vi in pairs],
            retain_graph=True,
            allow_unused=True,
        )
        return self.flat([torch.zeros_like(p) if o is None else o for o, p in zip(out, self.params)]).detach()
