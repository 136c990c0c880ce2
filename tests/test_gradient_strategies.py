"""Gradient strategies (issue #4): ``solve(gradient=...)`` = autodiff, checkpoint, backsolve, interpolate, forward.

Autodiff and checkpoint give the exact gradient of the computed (discrete) solution; the continuous adjoints and
forward sensitivities give the gradient of the exact ODE solution up to the tolerances, which is not the exact
gradient of the discrete solution. So every comparison with finite differences below solves at tight tolerances
(rtol = 1e-10) and allows a gradient error of about 1e-7: well above the ~1e-9 those tolerances leave (measured),
far below what a wrong term in an adjoint produces. Slow checks (full gradcheck matrix, Lorenz, Van der Pol) live
in ``test_gradient_strategies_slow.py``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import dxdt
from dxdt import SaveAt, Status
from dxdt.adjoints import BacksolveAdjoint, Checkpointed, ForwardSensitivity, InterpolatingAdjoint

F64 = torch.float64
STRATEGIES = ["autodiff", "checkpoint", "backsolve", "interpolate", "forward"]
ADJOINTS = ["backsolve", "interpolate", "forward"]  # the strategies that also differentiate t0
MODES = ["per_sample", "joint"]
FAMILIES = ["tsit5", "rodas5p", "kvaerno5"]  # explicit RK, Rosenbrock, ESDIRK


class Field(nn.Module):
    """A small neural vector field with an ``args`` rate ``k`` and explicit time dependence (``t`` is ``(B, 1)``
    per sample and 0-d in joint mode; it broadcasts either way)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, dtype=F64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-0.4, 0.9], [-1.1, -0.2]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.2]))

    def forward(self, t, y, k):
        return self.lin(torch.tanh(y)) - k * y + 0.2 * torch.sin(t) * y.flip(-1)


def y0_batch() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)


def rate() -> torch.Tensor:
    return torch.tensor([0.3, 0.6], dtype=F64)


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Componentwise ``|actual - expected| <= tol * max|expected|`` (scale-relative)."""
    scale = expected.abs().max().clamp_min(1e-300)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


# --- 1. gradcheck: every strategy × solver family × batch mode ------------------------------------------------

# Checkpointing an implicit solver recomputes segments during the forward pass (see
# test_checkpoint_forward_evaluates_f_once): 1-15 s per gradcheck. Checkpoint equals autodiff bit for bit (tested
# below for both implicit families), so autodiff's gradcheck covers it here; these cases run in the slow file, as do
# the forward sensitivities of the implicit methods and of Tsit5 in joint mode (1.5-2.5 s of CPU each).
_SLOW_GRADCHECK = [
    *[("checkpoint", solver, mode) for solver in ("rodas5p", "kvaerno5") for mode in MODES],
    *[("forward", solver, mode) for solver in ("rodas5p", "kvaerno5") for mode in MODES],
    ("forward", "tsit5", "joint"),
]
_FAST_GRADCHECK = [(g, s, m) for g in STRATEGIES for s in FAMILIES for m in MODES if (g, s, m) not in _SLOW_GRADCHECK]


def gradcheck_strategy(gradient: str | dxdt.adjoints.AbstractGradient, solver: str, mode: str, fast: bool) -> bool:
    """gradcheck w.r.t. y0, the ``args`` rate, the module's weight (the Linear's own parameter), an interior save
    time, t1 (the last save time) and, for the adjoints and forward sensitivities, t0.

    ``fast_mode`` compares one random projection ``vᵀ J u`` per input with central differences: two solves per
    input, and as sensitive to a wrong gradient as the full Jacobian. Tolerances: rtol 1e-10 for explicit methods;
    1e-7 for the implicit ones (each of their steps costs a Jacobian), whose Newton iterations also stop at a
    tolerance, so their solutions are not smooth in the inputs at the 1e-12 level: their differences use eps = 1e-4
    (truncation error ~1e-9 here) instead of 1e-6. The explicit cases pass with atol = 1e-9, rtol = 1e-8 and the
    implicit ones with atol = 1e-7, rtol = 1e-6 even at solver rtol 1e-6 (measured).
    """
    field = Field()
    field.lin.bias.requires_grad_(False)  # not checked: spare the forward sensitivities two columns
    name = gradient if isinstance(gradient, str) else gradient.name
    explicit = solver in ("tsit5", "dopri5")

    def fn(y0, k, weight, t0, t_mid, t1):
        # The module's parameter is gradcheck's input itself; the strategies find it through field.parameters().
        field.lin._parameters["weight"] = weight
        ts = torch.stack([t_mid, t1])
        rtol = 1e-10 if explicit else 1e-7
        kwargs = dict(solver=solver, rtol=rtol, atol=1e-2 * rtol, gradient=gradient, batch_mode=mode)
        return dxdt.solve(field, y0, t0, t1, args=k, saveat=ts, **kwargs).ys

    inputs = (
        y0_batch().requires_grad_(),
        rate().requires_grad_(),
        field.lin.weight.detach().clone().requires_grad_(),
        torch.tensor(0.0, dtype=F64, requires_grad=name in ADJOINTS),
        torch.tensor(0.15, dtype=F64, requires_grad=True),
        torch.tensor(0.3, dtype=F64, requires_grad=True),
    )
    eps = 1e-6 if explicit else 1e-4
    return gradcheck(fn, inputs, eps=eps, atol=1e-7, rtol=1e-6, fast_mode=fast)


@pytest.mark.parametrize(("gradient", "solver", "mode"), _FAST_GRADCHECK)
def test_gradcheck(gradient, solver, mode):
    assert gradcheck_strategy(gradient, solver, mode, fast=True)


# --- t0 and t1 by themselves -------------------------------------------------------------------------------------


def pendulum(t, y):
    return torch.stack([y[:, 1], -torch.sin(y[:, 0])], dim=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gradient", STRATEGIES)
def test_time_gradients_without_save_times(gradient, mode):
    """Only y(t1) saved: ∂y(t1)/∂t1 = f(y(t1)) (the straight-through path), and, f being autonomous,
    ∂y(t1)/∂t0 = -f(y(t1)). Per-sample intervals of shape (B,) in per-sample mode."""
    y0 = y0_batch()
    per_sample = mode == "per_sample"
    t0 = torch.tensor([0.1, -0.2] if per_sample else 0.1, dtype=F64, requires_grad=gradient in ADJOINTS)
    t1 = torch.tensor([1.3, 0.9] if per_sample else 1.3, dtype=F64, requires_grad=True)
    v = torch.tensor([[0.7, -1.1], [0.4, 0.9]], dtype=F64)
    sol = dxdt.solve(pendulum, y0, t0, t1, rtol=1e-10, atol=1e-12, gradient=gradient, batch_mode=mode)
    inputs = (t1, t0) if gradient in ADJOINTS else (t1,)
    grads = torch.autograd.grad((sol.ys[:, -1] * v).sum(), inputs)
    expected = (v * pendulum(None, sol.ys[:, -1].detach())).sum(-1)
    expected = expected if per_sample else expected.sum()
    torch.testing.assert_close(grads[0], expected, rtol=1e-8, atol=1e-10)
    if gradient in ADJOINTS:
        torch.testing.assert_close(grads[1], -expected, rtol=1e-8, atol=1e-10)


# --- 2. strategies agree --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_all_strategies_agree(mode):
    """All five on one problem (Dopri5): gradients w.r.t. y0, args, both module parameters and the save times."""
    ts = torch.tensor([0.2, 0.45, 0.6], dtype=F64)
    results = {}
    for gradient in STRATEGIES:
        field = Field()
        y0, k, tq = y0_batch().requires_grad_(), rate().requires_grad_(), ts.clone().requires_grad_()
        sol = dxdt.solve(
            field,
            y0,
            0.0,
            0.6,
            args=k,
            saveat=tq,
            solver="dopri5",
            rtol=1e-10,
            atol=1e-12,
            gradient=gradient,
            batch_mode=mode,
        )
        loss = (sol.ys.square() * torch.tensor([1.0, -2.0], dtype=F64)).sum()
        results[gradient] = torch.autograd.grad(loss, (y0, k, tq, field.lin.weight, field.lin.bias))
    for gradient in STRATEGIES[1:]:
        for name, got, ref in zip(("y0", "k", "ts", "weight", "bias"), results[gradient], results["autodiff"]):
            assert_rel(got, ref, 1e-7, f"{gradient} {name}")


# Solve options: a fixed-step method; an adaptive one whose large dt0 forces rejected steps; the two implicit
# families at a loose tolerance (few steps: their checkpointed forward pass recomputes, see below).
CHECKPOINT_CASES = {
    "rk4": dict(solver="rk4", dt0=0.05),
    "tsit5-rejections": dict(solver="tsit5", dt0=0.5, rtol=1e-8, atol=1e-10),
    "rodas5p": dict(solver="rodas5p", rtol=1e-6, atol=1e-8),
    "kvaerno5": dict(solver="kvaerno5", rtol=1e-6, atol=1e-8),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_equals_autodiff(case, mode):
    """Recursive checkpointing replays the same operations: the solution bit for bit and every gradient to
    rounding, with nested segments (checkpoints=2) and the default, and with save times (interior and t1)."""
    kwargs = CHECKPOINT_CASES[case]
    t1 = 2.0 if case.startswith(("rk4", "tsit5")) else 1.2
    ts = torch.tensor([0.3 * t1, 0.55 * t1, t1], dtype=F64)
    strategies = ["autodiff", Checkpointed(checkpoints=2)] + (["checkpoint"] if case == "tsit5-rejections" else [])
    results = []
    for gradient in strategies:
        field = Field()
        y0, k, tq = y0_batch().requires_grad_(), rate().requires_grad_(), ts.clone().requires_grad_()
        sol = dxdt.solve(field, y0, 0.0, t1, args=k, saveat=tq, gradient=gradient, batch_mode=mode, **kwargs)
        grads = torch.autograd.grad(sol.ys.pow(3).sum(), (y0, k, tq, field.lin.weight, field.lin.bias))
        results.append((sol.ys.detach(), *grads))
        if case == "tsit5-rejections":
            assert (sol.stats.n_rejected > 0).all()  # the premise
        assert int(sol.stats.n_iterations) >= 7  # top-level segments of 2, 4, 8 iterations: three levels of nesting
    for other in results[1:]:
        for name, a, b in zip(("ys", "y0", "k", "ts", "weight", "bias"), results[0], other):
            if name == "ys":
                assert torch.equal(a, b), name
            else:  # parameter gradients are summed per segment: the same to rounding, not bit for bit
                assert torch.allclose(a, b, rtol=1e-12, atol=1e-15), name


@pytest.mark.parametrize("solver", ["tsit5", "rodas5p", "kvaerno5"])
def test_checkpoint_forward_evaluates_f_once(solver):
    """Checkpointing trades memory for recomputation in the backward pass only: the forward pass evaluates f at most
    as often as autodiff's, and forward + backward at most (levels + 1) times as often."""
    calls = []
    scale = torch.tensor([1.0, 2.0], dtype=F64)

    def f(t, y):
        calls.append(1)
        return -scale * y + 0.1 * y.flip(-1)

    counts = {}
    for gradient in ("autodiff", Checkpointed(checkpoints=2)):
        y0 = torch.tensor([[1.0, 0.5]], dtype=F64, requires_grad=True)
        calls.clear()
        sol = dxdt.solve(f, y0, 0.0, 1.0, solver=solver, rtol=1e-5, gradient=gradient)
        forward = len(calls)
        sol.ys.sum().backward()
        counts[str(gradient)] = (forward, len(calls), int(sol.stats.n_iterations))
    (fwd_ad, _, n_iter), (fwd_cp, total_cp, _) = counts.values()
    assert fwd_cp <= fwd_ad  # fewer for ESDIRK: its gradient reattachment only runs when the graph is recorded
    levels = n_iter.bit_length()  # log2 of the iterations, rounded up: the nesting depth for checkpoints=2
    assert total_cp <= (levels + 1) * fwd_ad


# --- 3. Lotka–Volterra fit: every strategy vs central finite differences ------------------------------------------


def lotka_volterra(t, y, theta):
    alpha, beta, delta, gamma = theta.unbind(-1)
    prey, predator = y.unbind(-1)
    return torch.stack([alpha * prey - beta * prey * predator, delta * prey * predator - gamma * predator], dim=-1)


LV_TS = torch.linspace(0.5, 3.0, 6, dtype=F64)
LV_Y0 = torch.tensor([[10.0, 5.0], [8.0, 6.0]], dtype=F64)
LV_THETA = torch.tensor([1.1, 0.09, 0.08, 1.4], dtype=F64)  # the fit's current guess; the data come from LV_TRUE
LV_TRUE = torch.tensor([1.0, 0.1, 0.075, 1.5], dtype=F64)


def lv_loss(theta, y0, data, **kwargs):
    sol = dxdt.solve(lotka_volterra, y0, 0.0, 3.0, args=theta, saveat=LV_TS, **kwargs)
    return (sol.ys - data).square().sum()


@pytest.fixture(scope="module")
def lv_reference():
    """Data (the true model with a fixed 5% perturbation) and central differences of the sum-of-squares loss w.r.t.
    (θ, y0): relative step 1e-5, Vern7 at rtol = atol = 1e-12. Steps of 1e-6 and 1e-4 change it by 2e-9 and 5e-8
    relative (measured); the strategies, at rtol 1e-9, land within 5e-9 of it."""
    with torch.no_grad():
        data = dxdt.solve(lotka_volterra, LV_Y0, 0.0, 3.0, args=LV_TRUE, saveat=LV_TS, rtol=1e-12, atol=1e-12).ys
        data = data * (1 + 0.05 * torch.sin(torch.arange(data.numel(), dtype=F64)).reshape(data.shape))
        x0 = torch.cat([LV_THETA, LV_Y0.flatten()])
        fd = torch.zeros_like(x0)
        for i in range(x0.numel()):
            h = 1e-5 * abs(x0[i].item())
            values = []
            for sign in (1, -1):
                x = x0.clone()
                x[i] += sign * h
                values.append(lv_loss(x[:4], x[4:].reshape(2, 2), data, solver="vern7", rtol=1e-12, atol=1e-12))
            fd[i] = (values[0] - values[1]) / (2 * h)
    return data, fd


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gradient", STRATEGIES)
def test_lotka_volterra_fit_matches_finite_differences(gradient, mode, lv_reference):
    """[issue #4 acceptance] every strategy within 1e-6 relative, per component, of central differences."""
    data, fd = lv_reference
    theta, y0 = LV_THETA.clone().requires_grad_(), LV_Y0.clone().requires_grad_()
    loss = lv_loss(theta, y0, data, rtol=1e-9, atol=1e-9, gradient=gradient, batch_mode=mode)
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, (theta, y0))])
    rel = ((grad - fd).abs() / fd.abs()).max().item()
    assert rel < 1e-6, f"max relative error {rel:.2e}"


# --- 4. where backsolve fails: a stiff mode, re-integrated backwards -----------------------------------------------


def stiff_accumulator(t, y, k):
    """y₁' = -k (y₁ - sin t) (relaxes fast onto sin t), y₂' = y₁ (slowly accumulates it)."""
    return torch.stack([-k * (y[:, 0] - torch.sin(t.reshape(-1))), y[:, 0]], dim=1)


def stiff_accumulator_exact(y0: torch.Tensor, k: torch.Tensor, t1: float) -> torch.Tensor:
    """y₂(t1) in closed form: y₁ = y_p + (y₁(0) - y_p(0)) e^{-kt} with y_p = (k² sin t - k cos t) / (k² + 1)."""
    t1 = torch.tensor(t1, dtype=F64)
    integral_yp = (k**2 * (1 - torch.cos(t1)) - k * torch.sin(t1)) / (k**2 + 1)
    yp0 = -k / (k**2 + 1)
    return y0[:, 1] + integral_yp + (y0[:, 0] - yp0) * (1 - torch.exp(-k * t1)) / k


def test_backsolve_fails_on_stiff_mode_where_others_do_not():
    """For the docs. The loss is y₂(1) with k = 40 (Tsit5, rtol 1e-8: no stiff solver needed forward).

    What happens: backsolve re-integrates y backwards from y(1). Backwards in time the fast mode grows like
    e^{k(1-t)} = e^{40} ≈ 2e17, so the forward solution's ~1e-10 error at t = 1 swamps the reconstructed y₁ long
    before t = 0. The backward solve does not fail: it returns, silently, a dL/dk off by a factor of ~1e8 (the
    parameter gradient integrates a₁ ∂f₁/∂k = -a₁ (y₁ - sin t) along the wrong y₁). Its dL/dy0 is still right: the
    adjoint equation of this linear field does not involve y. The interpolating adjoint (y from the forward dense
    output) and autodiff (so checkpoint, equal to it bit for bit) stay within 1e-7 of the closed form (measured:
    2e-9 and 4e-9).
    """
    k_value, t1 = 40.0, 1.0
    y0_value = torch.tensor([[2.0, 0.0]], dtype=F64)
    y0, k = y0_value.clone().requires_grad_(), torch.tensor(k_value, dtype=F64, requires_grad=True)
    exact = torch.autograd.grad(stiff_accumulator_exact(y0, k, t1).sum(), (y0, k))
    errors = {}
    for gradient in ("backsolve", "interpolate", "autodiff"):
        y0, k = y0_value.clone().requires_grad_(), torch.tensor(k_value, dtype=F64, requires_grad=True)
        sol = dxdt.solve(stiff_accumulator, y0, 0.0, t1, args=k, rtol=1e-8, atol=1e-10, gradient=gradient)
        g_y0, g_k = torch.autograd.grad(sol.ys[0, -1, 1], (y0, k))
        torch.testing.assert_close(g_y0, exact[0], rtol=1e-8, atol=1e-12)
        errors[gradient] = abs((g_k - exact[1]) / exact[1]).item()
    assert errors["backsolve"] > 1e3, errors
    assert max(errors["interpolate"], errors["autodiff"]) < 1e-7, errors


# --- 5. per-sample batch invariance of the gradients -------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["checkpoint", "backsolve", "interpolate", "forward"])
def test_per_sample_gradients_are_batch_invariant(gradient):
    """Sample i's loss has exactly zero gradient w.r.t. sample j's y0 and t1 (per-sample intervals of different
    lengths, so the samples take different steps), and a batched solve gives each sample's loss the gradients (y0,
    t1, and the shared args and module parameters) of its own single solve."""
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], dtype=F64)
    t1 = torch.tensor([1.0, 0.6, 0.8], dtype=F64)
    kwargs = dict(rtol=1e-7, atol=1e-9, gradient=gradient)
    field = Field()
    params = [field.lin.weight, field.lin.bias]
    yb, tb, k = y0.clone().requires_grad_(), t1.clone().requires_grad_(), rate().requires_grad_()
    sol = dxdt.solve(field, yb, 0.0, tb, args=k, **kwargs)
    batched = []
    for i in range(3):
        loss = sol.ys[i].pow(2).sum()
        g_y0, g_t1, *g_params = torch.autograd.grad(loss, (yb, tb, k, *params), retain_graph=True)
        others = [j for j in range(3) if j != i]
        assert (g_y0[others] == 0).all() and (g_t1[others] == 0).all()
        batched.append((g_y0[i], g_t1[i], g_params))
    for i in range(3):
        ys, ts, ks = y0[i : i + 1].clone().requires_grad_(), t1[i : i + 1].clone().requires_grad_(), rate()
        ks.requires_grad_()
        single = dxdt.solve(field, ys, 0.0, ts, args=ks, **kwargs)
        torch.testing.assert_close(single.ys[0], sol.ys[i].detach(), rtol=1e-12, atol=1e-14)
        g_y0, g_t1, *g_params = torch.autograd.grad(single.ys.pow(2).sum(), (ys, ts, ks, *params))
        torch.testing.assert_close(g_y0[0], batched[i][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_t1[0], batched[i][1], rtol=1e-12, atol=1e-14)
        for got, ref in zip(g_params, batched[i][2]):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-13)


# --- options, closures, parameter selection ----------------------------------------------------------------------


def test_adjoint_options_keep_the_gradient():
    """Joint mode (where the seminorm applies). A different backward solver with its own tolerances, and the full
    (not semi-) norm, change the work, not the gradient; ``params=`` restricts what gets one."""
    field = Field()
    ts = torch.tensor([0.5, 1.0], dtype=F64)

    def grads(gradient):
        y0, k = y0_batch().requires_grad_(), rate().requires_grad_()
        for p in field.parameters():
            p.grad = None
        kwargs = dict(saveat=ts, rtol=1e-10, atol=1e-12, gradient=gradient, batch_mode="joint")
        dxdt.solve(field, y0, 0.0, 1.0, args=k, **kwargs).ys.pow(2).sum().backward()
        return [x.grad for x in (y0, k, field.lin.weight, field.lin.bias)]

    reference = grads("autodiff")
    for gradient in (
        BacksolveAdjoint(solver="dopri5", rtol=1e-11, atol=1e-13),
        InterpolatingAdjoint(solver="vern7", seminorm=False, max_steps=500),
    ):
        for got, ref in zip(grads(gradient), reference):
            assert_rel(got, ref, 1e-7, repr(gradient))
    for gradient in (InterpolatingAdjoint(params=[field.lin.weight]), ForwardSensitivity(params=[field.lin.weight])):
        y0_grad, k_grad, weight_grad, bias_grad = grads(gradient)
        assert k_grad is None and bias_grad is None
        assert_rel(y0_grad, reference[0], 1e-7, repr(gradient))
        assert_rel(weight_grad, reference[2], 1e-7, repr(gradient))


@pytest.mark.parametrize("gradient", ["checkpoint", "backsolve", "interpolate"])
def test_closure_captured_module_and_tensor(gradient):
    """``lambda t, y: field(t, y, k)``: the adjoints find the module and the tensor through the closure."""
    field, k = Field(), rate().requires_grad_()
    results = []
    for g in ("autodiff", gradient):
        y0 = y0_batch().requires_grad_()
        sol = dxdt.solve(lambda t, y: field(t, y, k), y0, 0.0, 1.0, rtol=1e-10, atol=1e-12, gradient=g)
        results.append(torch.autograd.grad(sol.ys.pow(2).sum(), (y0, k, field.lin.weight, field.lin.bias)))
    for got, ref in zip(*reversed(results)):
        assert_rel(got, ref, 1e-7, gradient)


# --- 6. errors -------------------------------------------------------------------------------------------------


def decay(t, y):
    return -y


@pytest.mark.parametrize("gradient", ["backsolve", "interpolate", "forward"])
@pytest.mark.parametrize("loss", ["linear", "quadratic"])
def test_second_derivatives_are_refused_with_a_clear_error(gradient, loss):
    """These strategies give first derivatives only: with create_graph=True the gradient is still right, and
    differentiating it again names the strategy and the ones that can (whether or not the loss's own gradient
    depends on the parameters)."""
    k = torch.tensor([[0.7]], dtype=F64, requires_grad=True)
    sol = dxdt.solve(
        lambda t, y, k: -k * y * y,
        torch.ones(1, 1, dtype=F64),
        0.0,
        2.0,
        args=k,
        gradient=gradient,
        rtol=1e-9,
        atol=1e-9,
    )
    value = sol.ys.sum() if loss == "linear" else sol.ys.square().sum()
    (g,) = torch.autograd.grad(value, k, create_graph=True)
    y1 = 1 / (1 + 2 * k.detach())  # y' = -k y², y(0) = 1
    dy1 = -2 * y1 * y1
    torch.testing.assert_close(g, dy1 if loss == "linear" else 2 * y1 * dy1, rtol=1e-6, atol=0)
    message = (
        f"gradient={gradient!r} gives first derivatives only: it computes the gradient without an autograd graph. "
        "For second derivatives (create_graph=True, then another backward pass) use gradient='autodiff' or "
        "'checkpoint'"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        torch.autograd.grad(g.sum(), k)


def test_unknown_gradient_name():
    message = (
        "gradient must be one of ['autodiff', 'backsolve', 'checkpoint', 'forward', 'interpolate'] or an instance "
        "from dxdt.adjoints; got 'adjoint'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dxdt.solve(decay, y0_batch(), 0.0, 1.0, gradient="adjoint")


@pytest.mark.parametrize("saveat", [SaveAt(dense=True), SaveAt(steps=True)])
@pytest.mark.parametrize("gradient", ["backsolve", "interpolate", "forward"])
def test_adjoints_reject_dense_and_step_saving(gradient, saveat):
    fallback = "gradient='autodiff'" if gradient == "forward" else "gradient='autodiff' or 'checkpoint'"
    message = (
        f"gradient={gradient!r} differentiates the states at the save times only; SaveAt(steps=True) and "
        "SaveAt(dense=True) are not supported with it: save at the times you need (saveat=ts), or use " + fallback
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dxdt.solve(decay, y0_batch().requires_grad_(), 0.0, 1.0, saveat=saveat, gradient=gradient)


def test_forward_rejects_a_closure_captured_tensor():
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    message = (
        "gradient='forward' cannot differentiate 1 tensor(s) requiring grad that f reads outside args and its own "
        "module parameters (shapes [()]): pass them in args=..., or use gradient='autodiff' or an adjoint"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dxdt.solve(lambda t, y: -w * y, y0_batch(), 0.0, 1.0, gradient="forward")


def test_forward_counts_an_unreachable_tensor_once():
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape("cannot differentiate 1 tensor(s) requiring grad")):
        dxdt.solve(lambda t, y: -w * y, y0_batch(), 0.0, 1.0, gradient=ForwardSensitivity(params=[w]))


@pytest.mark.parametrize("gradient", ["autodiff", "checkpoint"])
def test_discrete_strategies_reject_t0_requiring_grad(gradient):
    message = (
        f"t0 requires grad, but gradient={gradient!r} does not propagate gradients to t0: pass t0.detach(), or use "
        "gradient='backsolve', 'interpolate' or 'forward', which do"
    )
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dxdt.solve(decay, y0_batch(), t0, 1.0, gradient=gradient)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Checkpointed(checkpoints=1), ValueError, "checkpoints must be an int >= 2; got 1"),
        (lambda: Checkpointed(checkpoints=2.0), ValueError, "checkpoints must be an int >= 2; got 2.0"),
        (
            lambda: BacksolveAdjoint(rtol=-1e-6),
            ValueError,
            "rtol of the adjoint must be a non-negative finite number; got -1e-06",
        ),
        (lambda: InterpolatingAdjoint(atol=0.0), ValueError, "atol of the adjoint must be positive; got 0"),
        (
            lambda: InterpolatingAdjoint(max_steps=0),
            ValueError,
            "max_steps of the adjoint must be a positive int; got 0",
        ),
        (
            lambda: BacksolveAdjoint(params=[1.0]),
            TypeError,
            "params must be tensors (e.g. list(model.parameters())); got ['float']",
        ),
    ],
)
def test_bad_options(make, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        make()


# --- 7. throw=False with a failed sample ------------------------------------------------------------------------


def blow_up(t, y, k):
    return k * y.square()  # y = y0 / (1 - k y0 t): blows up at t = 1 / (k y0)


@pytest.mark.parametrize("gradient", ADJOINTS)
def test_failed_sample_gets_zero_gradient(gradient):
    """Sample 1 (y0 = 2) blows up at t = 0.5, after its first save time (0.25, where it is still finite and enters
    the loss). The adjoints give it zero gradient and the others their exact gradients; the shared k collects the
    successful samples' contributions only. (Autodiff and checkpoint differ here: they differentiate whatever
    finite values the failed sample saved.)"""
    y0 = torch.tensor([[0.5], [2.0], [0.25]], dtype=F64, requires_grad=True)
    k = torch.tensor(1.0, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.25, 1.0], dtype=F64)
    sol = dxdt.solve(
        blow_up, y0, 0.0, 1.0, args=k, saveat=ts, rtol=1e-10, atol=1e-12, dt_min=1e-4, gradient=gradient, throw=False
    )
    assert sol.status.tolist() == [Status.SUCCESS, Status.DT_UNDERFLOW, Status.SUCCESS]
    assert torch.isfinite(sol.ys[1, 0]).all()  # the failed sample's first save time does enter the loss
    g_y0, g_k = torch.autograd.grad(torch.nansum(sol.ys), (y0, k))
    assert torch.isfinite(g_y0).all() and torch.isfinite(g_k)
    assert g_y0[1].item() == 0.0
    ok = torch.tensor([0.5, 0.25], dtype=F64)[:, None]
    denominator = (1 - ok * ts).square()
    torch.testing.assert_close(g_y0[[0, 2], 0], (1 / denominator).sum(1), rtol=1e-8, atol=0)
    torch.testing.assert_close(g_k, (ok.square() * ts / denominator).sum(), rtol=1e-8, atol=0)


# -- which tensors the adjoints and forward sensitivities differentiate ----------------------------------------


class _HeldField:
    """A callable object (neither a function nor an nn.Module) holding its network."""

    def __init__(self, net):
        self.net = net

    def __call__(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("gradient", ["backsolve", "interpolate"])
def test_adjoints_find_the_parameters_a_callable_object_holds(gradient):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.randn(3, 2, dtype=F64)
    grads = []
    for g in ("autodiff", gradient):
        sol = dxdt.solve(_HeldField(net), y0, 0.0, 1.0, rtol=1e-10, atol=1e-12, gradient=g)
        grads.append(torch.autograd.grad(sol.ys.square().sum(), list(net.parameters())))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("gradient", ["backsolve", "interpolate", "forward"])
def test_a_tensor_f_reads_but_no_strategy_can_find_is_an_error(gradient):
    """A parameter hidden in a container is not found; instead of a silently missing gradient, a clear error."""
    w = torch.tensor([0.5], dtype=F64, requires_grad=True)
    hidden = {"w": w}
    y0 = torch.ones(2, 1, dtype=F64, requires_grad=True)
    message = (
        f"f reads 1 tensor(s) requiring grad (shapes [(1,)]) that gradient={gradient!r} did not find and would leave "
        "without a gradient: pass every tensor to differentiate in params=[...] (e.g. list(model.parameters())) or in "
        "args, or make f an nn.Module"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sol = dxdt.solve(lambda t, y: -hidden["w"] * y, y0, 0.0, 1.0, gradient=gradient)
        sol.ys.sum().backward()


def test_checkpoint_with_solver_state_passed_through_unchanged():
    """The automatic solver leaves its stiff method's state untouched while no sample is stiff; a segment that
    returns such a tensor unchanged must not turn the kept input carry into its own output."""
    y0 = torch.tensor([[1.0, 0.5], [0.3, 0.2]], dtype=F64, requires_grad=True)
    k = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    grads = []
    for gradient in ("autodiff", Checkpointed(checkpoints=2)):
        sol = dxdt.solve(lambda t, y, k: -k * y, y0, 0.0, 1.0, args=k, solver="auto", gradient=gradient)
        grads.append(torch.autograd.grad(sol.ys.sum(), (y0, k)))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", [Checkpointed, BacksolveAdjoint, InterpolatingAdjoint, ForwardSensitivity])
def test_params_must_be_tensors(make):
    with pytest.raises(
        TypeError, match=re.escape("params must be tensors (e.g. list(model.parameters())); got ['float']")
    ):
        make(params=[1.0])
    with pytest.raises(TypeError, match=r"params must be a list of tensors .* got a single tensor"):
        make(params=torch.ones(2))


def _graph_nodes(out: torch.Tensor) -> int:
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(fn for fn, _ in node.next_functions)
    return len(seen)


def test_checkpoint_graph_does_not_grow_with_the_steps():
    """The memory claim: after the forward pass the autograd graph holds one node per segment, so its size grows
    logarithmically in the number of steps (autodiff's grows linearly)."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    y0 = torch.randn(4, 2, dtype=F64)
    nodes = {}
    for gradient in ("autodiff", "checkpoint"):
        for n in (32, 512):
            sol = dxdt.solve(lambda t, y: net(y), y0, 0.0, 1.0, solver="rk4", dt0=1 / n, gradient=gradient)
            nodes[gradient, n] = _graph_nodes(sol.ys)
    assert nodes["autodiff", 512] > 10 * nodes["autodiff", 32]
    assert nodes["checkpoint", 512] <= nodes["checkpoint", 32] + 4
    assert nodes["checkpoint", 512] < nodes["autodiff", 32]
