"""solve(compile=True): the torch.compile'd step gives the eager solution (to rounding) and its gradients."""

from __future__ import annotations

import math

import pytest
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


def test_compiled_nonfinite_step_is_redone_eagerly_and_does_not_poison_the_gradient():
    """A step that meets NaN is rejected; with gradients it is redone with a zero step so that no NaN reaches
    the backward pass. Compiled, that test would split the graph, so the host redoes such an iteration
    eagerly: same steps as eager, and the exact gradient dy(t1)/dy0 = exp(−10 t1)."""
    nans = []

    def f(t, y):  # NaN wherever a stage value falls below −0.5: the first, too large, step
        return -10.0 * y + 0.0 * torch.sqrt(y + 0.5)

    def watched(t, y):
        out = f(t, y)
        nans.append(bool(out.isnan().any()))
        return out

    kw = dict(solver="tsit5", dt0=1.0, rtol=1e-8, atol=1e-10)
    y0 = torch.tensor([[1.0], [0.5]], dtype=F64)
    eager = dxdt.solve(watched, y0, 0.0, 0.3, **kw)
    assert any(nans) and (eager.stats.n_rejected >= 1).all()  # the premise: a NaN step was rejected
    y0 = y0.clone().requires_grad_()
    compiled = dxdt.solve(f, y0, 0.0, 0.3, compile=True, **kw)
    (g,) = torch.autograd.grad(compiled.ys.sum(), y0)
    assert torch.equal(compiled.stats.n_steps, eager.stats.n_steps)
    torch.testing.assert_close(compiled.ys, eager.ys.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(g, torch.full_like(g, math.exp(-3.0)), rtol=1e-7, atol=0)


def test_compiled_iteration_is_reused_across_solves():
    """A second solve with other values (same shapes, dtypes, f and settings) reuses the compiled iteration:
    dynamo is told to fail rather than recompile (it would, for instance, for another batch size)."""
    import torch._dynamo

    k = torch.tensor([[1.0], [4.0]], dtype=F64)
    first = dict(saveat=torch.linspace(0.0, 2.0, 5, dtype=F64), rtol=1e-7, atol=1e-7, compile=True)
    dxdt.solve(field, torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64), 0.0, 2.0, args=k, **first)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = dxdt.solve(field, torch.tensor([[0.3, -1.0], [2.0, 0.1]], dtype=F64), 0.0, 2.0, args=2 * k, **first)
    eager = dxdt.solve(
        field, torch.tensor([[0.3, -1.0], [2.0, 0.1]], dtype=F64), 0.0, 2.0, args=2 * k, **first | {"compile": False}
    )
    torch.testing.assert_close(again.ys, eager.ys, rtol=1e-10, atol=1e-12)


def lotka_volterra(t, y, p):
    x, z = y[:, 0], y[:, 1]
    return torch.stack([p[:, 0] * x - p[:, 1] * x * z, -p[:, 2] * z + p[:, 3] * x * z], dim=1)


@pytest.mark.parametrize(
    "gradient, batch_mode",
    [
        ("backsolve", "joint"),
        pytest.param("backsolve", "per_sample", marks=pytest.mark.slow),
        pytest.param("interpolate", "joint", marks=pytest.mark.slow),
        pytest.param("interpolate", "per_sample", marks=pytest.mark.slow),
    ],
)
def test_compiled_adjoint_backward_solve_matches_eager(gradient, batch_mode):
    """With an explicit method, compile=True compiles the continuous adjoints' backward iterations too (their
    autograd.grad vector-Jacobian products traced into the graph): new graphs in the backward pass, none of
    them broken, and the eager gradient w.r.t. parameters and y0 to rounding."""
    from torch._dynamo.utils import counters

    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)
    ts = torch.linspace(0.0, 4.0, 5, dtype=F64)
    grads, compiled_in_backward = [], 0
    for compile in (False, True):
        p = torch.tensor([[1.5, 1.0, 3.0, 1.0]], dtype=F64).repeat(2, 1).requires_grad_()
        y = y0.clone().requires_grad_()
        sol = dxdt.solve(
            lotka_volterra, y, 0.0, 4.0, args=p, saveat=ts, rtol=1e-9, atol=1e-9, solver="tsit5",
            gradient=gradient, batch_mode=batch_mode, compile=compile,
        )  # fmt: skip
        counters.clear()
        grads.append(torch.autograd.grad(sol.ys.square().sum(), [p, y]))
        if compile:
            compiled_in_backward = counters["stats"]["unique_graphs"]
            assert not counters["graph_break"], dict(counters["graph_break"])
    assert compiled_in_backward >= 1
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_compiled_step_past_t1_interpolates_back_to_t1_as_eager():
    """torchdiffeq's semantics compiled: the step that crosses t1 is interpolated back inside the compiled
    iteration (masked for the others), per sample, with the eager value and gradient."""
    k = torch.tensor([[1.0], [4.0], [9.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64).repeat(3, 1)
    t1 = torch.tensor([2.0, 2.5, 3.0], dtype=F64)
    results = []
    for compile in (False, True):
        sol = dxdt.solve(field, y0, 0.0, t1, args=k, rtol=1e-7, atol=1e-9, step_past_t1=True, compile=compile)
        (grad,) = torch.autograd.grad(sol.ys.square().sum(), k)
        results.append((sol, grad))
    (eager, g_eager), (compiled, g_compiled) = results
    assert torch.equal(eager.stats.n_steps, compiled.stats.n_steps)
    assert torch.equal(compiled.t_final, t1)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-9, atol=1e-12)


def robertson(t, y, k):
    y1, y2, y3 = y.unbind(-1)
    fast = k[:, 2] * y2 * y3
    return torch.stack([-k[:, 0] * y1 + fast, k[:, 0] * y1 - fast - k[:, 1] * y2 * y2, k[:, 1] * y2 * y2], dim=-1)


def robertson_jac(t, y, k):
    y1, y2, y3 = y.unbind(-1)
    zero = torch.zeros_like(y1)
    rows = (
        (-k[:, 0] + zero, k[:, 2] * y3, k[:, 2] * y2),
        (k[:, 0] + zero, -k[:, 2] * y3 - 2 * k[:, 1] * y2, -k[:, 2] * y2),
        (zero, 2 * k[:, 1] * y2, zero),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


@pytest.mark.slow
@pytest.mark.parametrize("jac", ["autodiff", "fd", robertson_jac], ids=["autodiff", "fd", "callable"])
def test_compiled_rosenbrock_step_matches_eager_with_gradients(jac):
    """A stiff problem: the compiled Rodas5P step (its Jacobian evaluated inside the graph on every attempt; by
    forward mode for jac="autodiff") takes the eager steps and gives the eager solution and rate-constant
    gradients (slow: ~40 s of compiling)."""
    k = torch.tensor([[0.04, 3e7, 1e4], [0.08, 3e7, 2e4]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64).repeat(2, 1)
    ts = torch.tensor([1.0, 10.0, 100.0], dtype=F64)
    results = []
    for compile in (False, True):
        solver = dxdt.Rodas5P(jac=jac)
        sol = dxdt.solve(
            robertson, y0, 0.0, 100.0, args=k, saveat=ts, solver=solver, rtol=1e-6, atol=1e-10, compile=compile
        )
        (grad,) = torch.autograd.grad(sol.ys[..., 0].sum(), k)
        results.append((sol, grad))
    (eager, g_eager), (compiled, g_compiled) = results
    assert torch.equal(eager.stats.n_steps, compiled.stats.n_steps)
    assert torch.equal(eager.stats.n_jac_evals, compiled.stats.n_jac_evals)
    # Finite differences in fused (reordered) arithmetic round differently: Jacobians agree to ~1e-8, solutions
    # to well within the tolerance. An exact Jacobian leaves only the rounding of the step.
    tol = 1e-6 if jac == "fd" else 1e-9
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=tol, atol=1e-14)
    torch.testing.assert_close(g_compiled, g_eager, rtol=100 * tol, atol=1e-14)


def prothero_robinson(t, y, lam):
    """Stiff until t ≈ 5 for λ > 0 (as in test_stiff.py); the exact solution is sin t."""
    return -(1 + lam * torch.sigmoid(20 * (5 - t))) * (y - torch.sin(t)) + torch.cos(t)


@pytest.mark.slow
def test_compiled_automatic_solver_switches_as_eager_with_gradients():
    """solver="auto" with compile=True compiles whole iterations (the host passes in what its clock decides and
    reads the switching summary back, so nothing in the graph synchronises or changes every iteration): a
    batch of a sample that switches to Rodas5P and back and one that never switches takes the eager steps,
    switches and solution, with the eager gradient; a second solve with other values compiles nothing new
    (slow: ~60 s of compiling)."""
    import torch._dynamo

    lam = torch.tensor([[1e5], [0.0]], dtype=F64, requires_grad=True)
    y0 = torch.zeros(2, 1, dtype=F64)
    ts = torch.linspace(0.0, 8.0, 17, dtype=F64)  # dense output, through plain, tested and stiff iterations
    results = []
    for compile in (False, True):
        sol = dxdt.solve(
            prothero_robinson, y0, 0.0, 8.0, args=lam, saveat=ts, solver="auto", rtol=1e-6, atol=1e-9, compile=compile
        )
        (grad,) = torch.autograd.grad(sol.ys.sum(), lam)
        results.append((sol, grad))
    (eager, g_eager), (compiled, g_compiled) = results
    assert compiled.stats.n_switches.tolist() == eager.stats.n_switches.tolist() == [2, 0]
    assert torch.equal(eager.stats.n_steps, compiled.stats.n_steps)
    # Fused kernels round differently (sigmoid, exp), and λ = 1e5 amplifies that enough to move a step-size
    # decision slightly: the dense output agrees to well within the tolerance, not to rounding.
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-12)
    lam2 = (2 * lam).detach().requires_grad_()  # gradients tracked as in the first solve (another guard)
    kw = dict(saveat=ts, solver="auto", rtol=1e-6, atol=1e-9)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = dxdt.solve(prothero_robinson, y0, 0.0, 8.0, args=lam2, compile=True, **kw)
    eager = dxdt.solve(prothero_robinson, y0, 0.0, 8.0, args=lam2, **kw)
    assert again.stats.n_switches.tolist() == eager.stats.n_switches.tolist()
    torch.testing.assert_close(again.ys, eager.ys, rtol=1e-6, atol=1e-9)
    # Without gradients the non-stiff stretches between scheduled tests run back to back (advance_tallied).
    with torch.no_grad():
        plain = [dxdt.solve(prothero_robinson, y0, 0.0, 8.0, args=lam, compile=c, **kw) for c in (False, True)]
    assert plain[1].stats.n_switches.tolist() == plain[0].stats.n_switches.tolist() == [2, 0]
    assert torch.equal(plain[1].stats.n_steps, plain[0].stats.n_steps)
    torch.testing.assert_close(plain[1].ys, plain[0].ys, rtol=1e-6, atol=1e-9)


def test_compiled_plain_iterations_run_back_to_back_as_eager():
    """Without gradients, compiled Tsit5 iterations, and the automatic solver's between two scheduled stiffness
    tests, run back to back with no solver bookkeeping in between (Loop.advance_tallied): the same steps, tests
    (f evaluations) and solution as eager, dense output included (every step recorded), and max_steps still
    stops the solve after exactly that many."""
    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)
    p = torch.tensor([[1.5, 1.0, 3.0, 1.0]], dtype=F64).expand(2, 4)
    ts = torch.linspace(0.0, 20.0, 9, dtype=F64)
    for solver in ("tsit5", "auto"):
        for max_steps, saveat in ((10_000, ts), (150, None)):
            eager, compiled = (
                dxdt.solve(
                    lotka_volterra,
                    y0,
                    0.0,
                    20.0,
                    args=p,
                    saveat=saveat,
                    solver=solver,
                    rtol=1e-8,
                    atol=1e-8,
                    max_steps=max_steps,
                    throw=False,
                    compile=compile,
                )
                for compile in (False, True)
            )
            for name in ("n_steps", "n_accepted", "n_f_evals"):
                assert torch.equal(getattr(compiled.stats, name), getattr(eager.stats, name)), (solver, name)
            assert torch.equal(compiled.status, eager.status)
            torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert eager.stats.n_steps.tolist() == [150, 150]
        assert eager.status.tolist() == [dxdt.Status.MAX_STEPS] * 2


@pytest.mark.slow
def test_compiled_automatic_solver_under_an_adjoint_compiles_its_steps():
    """With a per-step hook (the adjoints' quadrature) only attempted steps compile; the automatic solver's
    attempt synchronises, so its Tsit5 and Rodas5P steps compile instead: the interpolating adjoint's gradient
    equals the eager one (backsolve fails on this stiff problem, eager or not; slow: ~60 s of compiling)."""
    lam = torch.tensor([[1e5], [0.0]], dtype=F64)
    y0 = torch.zeros(2, 1, dtype=F64)
    grads = []
    for compile in (False, True):
        p = lam.clone().requires_grad_()
        sol = dxdt.solve(
            prothero_robinson,
            y0,
            0.0,
            8.0,
            args=p,
            solver="auto",
            gradient="interpolate",
            rtol=1e-6,
            atol=1e-9,
            compile=compile,
        )
        (g,) = torch.autograd.grad(sol.ys.sum(), p)
        grads.append((sol, g))
    (eager, g_eager), (compiled, g_compiled) = grads
    assert compiled.stats.n_switches.tolist() == eager.stats.n_switches.tolist() == [2, 0]
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-6, atol=1e-12)
