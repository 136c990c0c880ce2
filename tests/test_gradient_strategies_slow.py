"""Slow gradient-strategy checks (``pytest -m slow``): the gradcheck cases left out of the default run, full-Jacobian
gradchecks, and the chaotic and stiff problems on which the backsolve adjoint goes wrong (for docs/gradients.md)."""

from __future__ import annotations

import re

import pytest
import torch
from test_gradient_strategies import (
    _SLOW_GRADCHECK,
    ADJOINTS,
    MODES,
    STRATEGIES,
    gradcheck_strategy,
    stiff_accumulator,
    stiff_accumulator_exact,
)

import dxdt

pytestmark = pytest.mark.slow

F64 = torch.float64


@pytest.mark.parametrize(("gradient", "solver", "mode"), _SLOW_GRADCHECK)
def test_gradcheck_rest_of_matrix(gradient, solver, mode):
    """The strategy × family × mode cases the default run skips (slow, see test_gradient_strategies.py)."""
    assert gradcheck_strategy(gradient, solver, mode, fast=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gradient", STRATEGIES)
def test_gradcheck_full_jacobian_dopri5(gradient, mode):
    """Every entry of the Jacobian (not one random projection) against central differences, with Dopri5."""
    assert gradcheck_strategy(gradient, "dopri5", mode, fast=False)


def lorenz(t, y, p):
    sigma, rho, beta = p.unbind(-1)
    x, yy, z = y.unbind(-1)
    return torch.stack([sigma * (yy - x), x * (rho - z) - yy, x * yy - beta * z], dim=-1)


def test_lorenz_backsolve_is_silently_wrong():
    """For the docs. Lorenz (σ, ρ, β = 10, 28, 8/3) over [0, 2], loss x(2), Tsit5 at rtol 1e-8.

    Backwards in time the Lorenz flow expands volumes at rate σ + 1 + β ≈ 13.7, so the y that backsolve
    re-integrates leaves the forward trajectory: at rtol 1e-8 its backward solve succeeds and returns, without any
    warning, a gradient off by about half its norm, three of its six components with the wrong sign; at rtol 1e-7
    or 1e-6 it instead runs out of steps and raises a RuntimeError that suggests 'interpolate' or 'checkpoint'. The
    interpolating adjoint and autodiff stay within 1e-7 of central differences (measured: 3e-8).
    """
    p0 = torch.tensor([10.0, 28.0, 8 / 3], dtype=F64)
    y00 = torch.tensor([[1.0, 1.0, 1.0]], dtype=F64)

    def loss(y0, p, **kwargs):
        return dxdt.solve(lorenz, y0, 0.0, 2.0, args=p, **kwargs).ys[0, -1, 0]

    x0 = torch.cat([y00.flatten(), p0])
    fd = torch.zeros_like(x0)
    with torch.no_grad():
        for i in range(6):
            values = []
            for sign in (1, -1):
                x = x0.clone()
                x[i] += sign * 1e-7
                values.append(loss(x[:3].reshape(1, 3), x[3:], solver="vern7", rtol=1e-13, atol=1e-13))
            fd[i] = (values[0] - values[1]) / 2e-7
    errors = {}
    for gradient in ("backsolve", "interpolate", "autodiff"):
        y0, p = y00.clone().requires_grad_(), p0.clone().requires_grad_()
        grads = torch.autograd.grad(loss(y0, p, rtol=1e-8, atol=1e-10, gradient=gradient), (y0, p))
        grad = torch.cat([g.flatten() for g in grads])
        errors[gradient] = ((grad - fd).abs().max() / fd.abs().max()).item()
    assert errors["backsolve"] > 0.2, errors
    assert max(errors["interpolate"], errors["autodiff"]) < 1e-6, errors

    y0, p = y00.clone().requires_grad_(), p0.clone().requires_grad_()
    value = loss(y0, p, rtol=1e-6, atol=1e-8, gradient="backsolve")
    with pytest.raises(RuntimeError, match=re.escape("ran out of steps (max_steps)")):
        value.backward()


def test_stiff_solver_backsolve_fails_loudly():
    """For the docs. The stiff accumulator of test_gradient_strategies with k = 1000, solved with Rodas5P: backwards
    the fast mode grows like e^{1000 (1 - t)}, which overflows, and the backsolve adjoint raises (after a long,
    futile backward solve) a RuntimeError naming the cause and the alternatives; the interpolating adjoint gets dL/dk
    within 1e-6 of the closed form."""
    y0_value, k_value = torch.tensor([[2.0, 0.0]], dtype=F64), 1000.0
    y0, k = y0_value.clone().requires_grad_(), torch.tensor(k_value, dtype=F64, requires_grad=True)
    exact = torch.autograd.grad(stiff_accumulator_exact(y0, k, 1.0).sum(), k)[0]
    kwargs = dict(solver="rodas5p", rtol=1e-8, atol=1e-10)

    k = torch.tensor(k_value, dtype=F64, requires_grad=True)
    sol = dxdt.solve(stiff_accumulator, y0_value, 0.0, 1.0, args=k, gradient="interpolate", **kwargs)
    (g_k,) = torch.autograd.grad(sol.ys[0, -1, 1], k)
    assert abs((g_k - exact) / exact).item() < 1e-6

    sol = dxdt.solve(stiff_accumulator, y0_value, 0.0, 1.0, args=k, gradient="backsolve", **kwargs)
    message = (
        "the 'backsolve' adjoint's backward solve failed (1 sample: 1 nonfinite) on the interval from t = [1.0] back "
        "to [0.0]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)) as info:
        torch.autograd.grad(sol.ys[0, -1, 1], k)
    assert "Try gradient='interpolate' or 'checkpoint'" in str(info.value)


def van_der_pol(t, y, mu):
    return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=1)


@pytest.mark.parametrize("gradient", ["checkpoint", *ADJOINTS])
def test_van_der_pol_auto_switching(gradient):
    """For the docs. Per-sample Van der Pol with μ = 50 (stiff: the automatic solver switches to its stiff method)
    and μ = 1 (not stiff), over [0, 1], solver="auto". Every strategy but backsolve matches autodiff to 1e-6 on both
    samples; backsolve matches it on the non-stiff sample but is off by far more than 100% on the stiff one."""
    results = []
    for g in ("autodiff", gradient):
        y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=F64, requires_grad=True)
        mu = torch.tensor([50.0, 1.0], dtype=F64, requires_grad=True)
        sol = dxdt.solve(van_der_pol, y0, 0.0, 1.0, args=mu, solver="auto", rtol=1e-8, atol=1e-10, gradient=g)
        assert sol.stats.n_switches.tolist() == [1, 0]  # the premise: only the stiff sample switched
        results.append(torch.autograd.grad(sol.ys.sum(), (y0, mu)))
    (ref_y0, ref_mu), (g_y0, g_mu) = results
    errors = [
        max(((g_y0[i] - ref_y0[i]).abs().max() / ref_y0[i].abs().max()).item(), abs((g_mu[i] - ref_mu[i]) / ref_mu[i]))
        for i in range(2)
    ]
    assert errors[1] < 1e-6, errors
    if gradient == "backsolve":
        assert errors[0] > 1.0, errors
    else:
        assert errors[0] < 1e-6, errors
