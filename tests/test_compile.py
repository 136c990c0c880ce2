"""solve(compile=True): the torch.compile'd step gives the eager solution (to rounding) and its gradients."""

from __future__ import annotations

import torch

import dxdt

F64 = torch.float64


def field(t, y, k):
    return torch.stack([y[:, 1], -k[:, 0] * y[:, 0] - 0.1 * y[:, 1] * y[:, 0] ** 2], dim=1)


def test_compiled_step_matches_eager_with_gradients():
    k = torch.tensor([[1.0], [4.0], [9.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64).repeat(3, 1)
    ts = torch.linspace(0.0, 3.0, 7, dtype=F64)
    results = []
    for compile in (False, True):
        sol = dxdt.solve(field, y0, 0.0, 3.0, args=k, saveat=ts, rtol=1e-8, atol=1e-8, compile=compile)
        (grad,) = torch.autograd.grad(sol.ys.square().sum(), k)
        results.append((sol, grad))
    (eager, g_eager), (compiled, g_compiled) = results
    assert torch.equal(eager.stats.n_steps, compiled.stats.n_steps)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-9, atol=1e-12)
