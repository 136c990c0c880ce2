"""Level-6 tests (DESIGN §4): gradients by backpropagation through the loop, the default strategy.

Step-size decisions are detached, so the backpropagated gradient is the exact derivative of the discrete
solution only while the step sequence does not move under a perturbation. Two kinds of test follow:

* ``gradcheck`` (finite differences vs autograd, float64) with fixed steps: a fixed-step method, or an
  adaptive tableau run with ``ConstantStepController`` and tolerances so loose that every step is accepted;
* adaptive solves at tight tolerances against analytic sensitivities (``y' = Ay``: ``∂y(t)/∂y0 = exp(At)``,
  ``∂y(t)/∂t = f(t, y(t))``) and against central differences of a tight-tolerance reference solve.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import dxdt
from dxdt import ConstantStepController

F64 = torch.float64

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64)

# (solver, extra solve kwargs) that take the same fixed steps whatever the input: rk4 is fixed-step; the
# adaptive tableaus keep dt0 under ConstantStepController and accept every step at these tolerances.
FIXED = {
    "rk4": dict(solver="rk4", dt0=0.1),
    "bosh3": dict(solver="bosh3", dt0=0.1, controller=ConstantStepController(), rtol=1e3, atol=1e3),
    "tsit5": dict(solver="tsit5", dt0=0.1, controller=ConstantStepController(), rtol=1e3, atol=1e3),
    "dopri5": dict(solver="dopri5", dt0=0.1, controller=ConstantStepController(), rtol=1e3, atol=1e3),
    "dopri8": dict(solver="dopri8", dt0=0.2, controller=ConstantStepController(), rtol=1e3, atol=1e3),
}
INTERPOLATING = {"tsit5", "dopri5", "bosh3"}  # dense output as accurate as the steps; the others clip
MODES = ["per_sample", "joint"]
SAVE = torch.tensor([0.45, 1.0], dtype=F64)


def nonlinear(t, y):
    """A coupled, time-dependent, nonlinear field (so the Jacobians are not trivial)."""
    return torch.stack([y[:, 1] - 0.3 * y[:, 0] ** 3, -y[:, 0] + torch.sin(y[:, 1]) * t.reshape(-1)], dim=1)


def y0_batch() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.1]], dtype=F64)


# --- gradcheck with fixed steps ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), [(n, "per_sample") for n in FIXED] + [("rk4", "joint"), ("tsit5", "joint")])
def test_gradcheck_y0(name, mode):
    kwargs = FIXED[name]
    check = dxdt.solve(nonlinear, y0_batch(), 0.0, 1.0, batch_mode=mode, **kwargs)
    assert (check.stats.n_rejected == 0).all()  # the premise: fixed steps

    def fn(y0):  # a save time inside [t0, t1] and t1 (full gradcheck: one backward pass per output)
        return dxdt.solve(nonlinear, y0, 0.0, 1.0, batch_mode=mode, saveat=SAVE, **kwargs).ys

    assert gradcheck(fn, (y0_batch().requires_grad_(),))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["rk4", "tsit5", "dopri8"])
def test_gradcheck_args(name, mode):
    def f(t, y, args):
        k, w = args
        return -k * y + w * torch.cos(t) * y.flip(-1)

    def fn(k, w):
        return dxdt.solve(f, y0_batch(), 0.0, 1.0, args=(k, w), batch_mode=mode, **FIXED[name]).ys

    k = torch.tensor([0.7, 1.3], dtype=F64, requires_grad=True)  # per state component
    w = torch.tensor(0.4, dtype=F64, requires_grad=True)
    assert gradcheck(fn, (k, w))


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["rk4", "dopri5"])
def test_gradcheck_module_parameters(name, mode):
    torch.manual_seed(0)
    model = MLP().double()
    names = [n for n, _ in model.named_parameters()]

    def fn(*params):
        def f(t, y):
            return torch.func.functional_call(model, dict(zip(names, params)), (t, y))

        return dxdt.solve(f, y0_batch(), 0.0, 1.0, batch_mode=mode, **FIXED[name]).ys

    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    # 42 parameters: fast mode (random projections u^T J v against central differences) keeps this cheap.
    assert gradcheck(fn, params, fast_mode=True)

    # The usual way (the module's own leaf parameters, captured by f) gives the same gradients.
    grads = torch.autograd.grad(fn(*params).square().sum(), params)
    loss = dxdt.solve(model, y0_batch(), 0.0, 1.0, batch_mode=mode, **FIXED[name]).ys.square().sum()
    loss.backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(FIXED))
def test_gradcheck_save_times(name, mode):
    shared = mode == "joint"
    base = torch.tensor([0.37, 0.81], dtype=F64)
    ts0 = base if shared else torch.stack([base, base - 0.05, base + 0.02])

    def fn(ts):
        return dxdt.solve(nonlinear, y0_batch(), 0.0, 1.0, saveat=ts, batch_mode=mode, **FIXED[name]).ys

    sol = dxdt.solve(nonlinear, y0_batch(), 0.0, 1.0, saveat=ts0, batch_mode=mode, **FIXED[name])
    clipped = (
        sol.stats.n_steps > dxdt.solve(nonlinear, y0_batch(), 0.0, 1.0, batch_mode=mode, **FIXED[name]).stats.n_steps
    ).all()
    assert bool(clipped) == (name not in INTERPOLATING)
    if clipped:
        # Moving ts moves step ends: the gradient (f at the step end) is the derivative of the discrete solution
        # only up to O(dt^p), and later outputs shift by as much; gradcheck's default tolerances cover that.
        assert gradcheck(fn, (ts0.clone().requires_grad_(),))
    else:
        # The steps do not move: ∂y/∂ts is exactly the derivative of the step's interpolant.
        assert gradcheck(fn, (ts0.clone().requires_grad_(),), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["rk4", "tsit5", "dopri8"])
def test_gradcheck_t1(name, mode):
    # t1-only saving: ∂y(t1)/∂t1 = f(t1, y(t1)); moving t1 moves only the last (partial) step.
    t1_0 = torch.tensor(0.93, dtype=F64) if mode == "joint" else torch.tensor([0.93, 0.71, 1.05], dtype=F64)

    def fn(t1):
        return dxdt.solve(nonlinear, y0_batch(), 0.0, t1, batch_mode=mode, **FIXED[name]).ys

    assert gradcheck(fn, (t1_0.clone().requires_grad_(),), atol=1e-6, rtol=1e-4)


# --- adaptive solves against analytic sensitivities ------------------------------------------------------


def linear(t, y):
    return y @ A.T


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "dopri8", "bosh3"])
def test_adaptive_y0_gradient_is_matrix_exponential(solver, mode):
    y0 = y0_batch().requires_grad_()
    t1 = 2.0
    rtol, atol = (1e-8, 1e-10) if solver == "bosh3" else (1e-11, 1e-13)
    sol = dxdt.solve(linear, y0, 0.0, t1, solver=solver, batch_mode=mode, rtol=rtol, atol=atol)
    y1 = sol.ys[:, 0]
    expm = torch.linalg.matrix_exp(A * t1)
    # Row i of the Jacobian of every sample at once: ∂y1[b, i]/∂y0[b', j] = δ_bb' exp(A t1)[i, j].
    for i in range(2):
        (g,) = torch.autograd.grad(y1[:, i].sum(), y0, retain_graph=True)
        torch.testing.assert_close(g, expm[i].expand_as(g), rtol=1e-6, atol=1e-9)
    # Samples do not feed each other's gradients, even in joint mode (the shared step size is detached).
    (g,) = torch.autograd.grad(y1[0].sum(), y0)
    assert torch.equal(g[1:], torch.zeros_like(g[1:]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "dopri8", "bosh3"])
def test_adaptive_save_time_gradient_is_the_vector_field(solver, mode):
    ts = torch.tensor([0.3, 1.1, 1.7, 2.0], dtype=F64, requires_grad=True)
    y0 = y0_batch()
    rtol, atol = (1e-8, 1e-10) if solver == "bosh3" else (1e-10, 1e-12)  # bosh3 is 3rd order: keep it cheap
    sol = dxdt.solve(linear, y0, 0.0, 2.0, solver=solver, saveat=ts, batch_mode=mode, rtol=rtol, atol=atol)
    exact = torch.einsum("tij,bj->bti", torch.linalg.matrix_exp(A * ts.detach()[:, None, None]), y0)
    torch.testing.assert_close(sol.ys.detach(), exact, rtol=100 * rtol, atol=100 * atol)
    for i in range(2):
        # Interpolating methods: the derivative of the dense output; clipping ones: f at the step end.
        (g,) = torch.autograd.grad(sol.ys[..., i].sum(), ts, retain_graph=True)
        torch.testing.assert_close(g, (exact @ A.T)[..., i].sum(0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("solver", ["tsit5", "dopri8"])
def test_adaptive_t1_gradient_is_the_vector_field(solver, mode):
    t1 = (
        torch.tensor(1.6, dtype=F64, requires_grad=True)
        if mode == "joint"
        else torch.tensor([1.6, 0.4, 2.2], dtype=F64, requires_grad=True)
    )
    y0 = y0_batch()
    sol = dxdt.solve(linear, y0, 0.0, t1, solver=solver, batch_mode=mode, rtol=1e-10, atol=1e-12)
    t1_b = t1.detach().expand(3)
    exact = torch.einsum("bij,bj->bi", torch.linalg.matrix_exp(A * t1_b[:, None, None]), y0)
    for i in range(2):
        (g,) = torch.autograd.grad(sol.ys[:, 0, i].sum(), t1, retain_graph=True)
        expected = (exact @ A.T)[:, i]
        torch.testing.assert_close(g, expected.sum() if mode == "joint" else expected, rtol=1e-7, atol=1e-10)


def lotka_volterra(t, y, p):
    alpha, beta, delta, gamma = p
    x, z = y[:, 0], y[:, 1]
    return torch.stack([alpha * x - beta * x * z, delta * x * z - gamma * z], dim=1)


P_LV = torch.tensor([1.5, 1.0, 1.0, 3.0], dtype=F64)
Y0_LV = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)


def _lv_loss(p, solver, rtol, atol, mode="per_sample", t1=2.0):
    y1 = dxdt.solve(lotka_volterra, Y0_LV, 0.0, t1, args=p, solver=solver, rtol=rtol, atol=atol, batch_mode=mode).ys
    return (y1[..., 0] * torch.tensor([1.0, 2.0], dtype=F64)[:, None] + y1[..., 1] ** 2).sum()


@pytest.fixture(scope="module")
def lv_reference_gradient() -> torch.Tensor:
    """Central differences of a dopri8 solve at tolerance 1e-13 (noise ~1e-13/h, truncation ~h²)."""
    grad = torch.empty(4, dtype=F64)
    for i in range(4):
        h = 1e-4 * P_LV[i]
        e = torch.zeros(4, dtype=F64)
        e[i] = h
        plus = _lv_loss(P_LV + e, "dopri8", 1e-13, 1e-13)
        minus = _lv_loss(P_LV - e, "dopri8", 1e-13, 1e-13)
        grad[i] = (plus - minus) / (2 * h)
    return grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("solver", ["tsit5", "dopri8"])
def test_lotka_volterra_parameter_gradient(solver, mode, lv_reference_gradient):
    p = P_LV.clone().requires_grad_()
    (g,) = torch.autograd.grad(_lv_loss(p, solver, 1e-10, 1e-10, mode), p)
    torch.testing.assert_close(g, lv_reference_gradient, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["tsit5", "dopri8"])
def test_rejected_nonfinite_step_does_not_poison_the_gradient(solver):
    # The first attempted step sees NaN from f and is rejected; the NaN must not leak into the backward pass
    # through the masked-out branch (0 · NaN = NaN).
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y * float("nan") if calls[0] in (2, 3) else -y

    y0 = y0_batch().requires_grad_()
    sol = dxdt.solve(f, y0, 0.0, 1.0, solver=solver, dt0=0.5, rtol=1e-10, atol=1e-12)
    assert (sol.stats.n_rejected >= 1).all()
    (g,) = torch.autograd.grad(sol.ys.sum(), y0)
    torch.testing.assert_close(g, torch.full_like(g, torch.e**-1), rtol=1e-8, atol=0)


def test_forward_mode_jvp_matches_central_differences():
    """Forward-mode AD (dual numbers) runs through the loop too: the JVP w.r.t. args equals central differences."""
    import torch.autograd.forward_ad as fwAD

    def lv(t, y, p):
        x, z = y[..., 0], y[..., 1]
        return torch.stack([p[..., 0] * x - x * z, -3 * z + x * z], -1)

    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)
    p = torch.tensor([[1.5], [1.2]], dtype=F64)
    with fwAD.dual_level():
        sol = dxdt.solve(lv, y0, 0.0, 5.0, args=fwAD.make_dual(p, torch.ones_like(p)), rtol=1e-11, atol=1e-11)
        jvp = fwAD.unpack_dual(sol.ys).tangent
    h = 1e-6
    plus = dxdt.solve(lv, y0, 0.0, 5.0, args=p + h, rtol=1e-12, atol=1e-12).ys
    minus = dxdt.solve(lv, y0, 0.0, 5.0, args=p - h, rtol=1e-12, atol=1e-12).ys
    torch.testing.assert_close(jvp, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)
