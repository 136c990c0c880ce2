"""``dxdt.compat.torchdiffeq.odeint``: torchdiffeq's own test problems and error bounds, and parity with torchdiffeq.

ConstantODE, SineODE and LinearODE with their exact solutions, ``rel_error`` and the per-method bounds are ported
from torchdiffeq's ``tests/problems.py`` and ``tests/odeint_tests.py`` (rtqichen/torchdiffeq); the gradcheck
loop from its ``tests/gradient_tests.py``. The rest checks the API contract and compares against torchdiffeq
itself where it is installed.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import dxdt
from dxdt.compat.torchdiffeq import odeint

F64 = torch.float64
DTYPES = (torch.float32, torch.float64)
ADAPTIVE = ("adaptive_heun", "bosh3", "dopri5", "tsit5", "dopri8")
FIXED = ("euler", "midpoint", "rk4")

# ---------------------------------------------------------------------------------------------------------------
# torchdiffeq's test problems (tests/problems.py)


class ConstantODE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.2))
        self.b = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, t, y):
        return self.a + (y - (self.a * t + self.b)) ** 5

    def y_exact(self, t):
        return self.a * t + self.b


class SineODE(torch.nn.Module):
    def forward(self, t, y):
        return 2 * y / t + t**4 * torch.sin(2 * t) - t**2 + 4 * t**3

    def y_exact(self, t):
        return (
            -0.5 * t**4 * torch.cos(2 * t)
            + 0.5 * t**3 * torch.sin(2 * t)
            + 0.25 * t**2 * torch.cos(2 * t)
            - t**3
            + 2 * t**4
            + (math.pi - 0.25) * t**2
        )


class LinearODE(torch.nn.Module):
    def __init__(self, dim: int = 10):
        super().__init__()
        self.dim = dim
        u = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)) * 0.1
        self.A = torch.nn.Parameter(2 * u - (u + u.T))

    def forward(self, t, y):
        return torch.mm(self.A, y.reshape(self.dim, 1)).reshape(-1)

    def y_exact(self, t):
        a = self.A.detach().to(F64)
        ones = torch.ones(self.dim, dtype=F64)
        return torch.stack([torch.linalg.matrix_exp(a * ti) @ ones for ti in t.detach().to(F64)]).to(t.dtype)


PROBLEMS = {"constant": ConstantODE, "linear": LinearODE, "sine": SineODE}


def construct_problem(ode: str = "constant", dtype: torch.dtype = F64, reverse: bool = False, npts: int = 10):
    f = PROBLEMS[ode]().to(dtype=dtype)
    t = torch.linspace(1, 8, npts, dtype=dtype, requires_grad=True)
    sol = f.y_exact(t).detach()
    if reverse:
        t, sol = t.flip(0).detach(), sol.flip(0)
    return f, sol[0].detach().requires_grad_(True), t, sol


def rel_error(true, estimate):
    return ((true - estimate) / true).abs().max()


def _error_bound(method: str, ode: str) -> float:
    """torchdiffeq's bounds (tests/odeint_tests.py, TestSolverError.test_odeint)."""
    if method in ("adaptive_heun", "bosh3"):
        return 4e-3
    if ode == "linear":
        return 2e-3
    return 3e-4


def _solver_cases():
    # Adaptive methods on every problem, fixed-grid ones on ConstantODE only, as in torchdiffeq.
    for method in (*ADAPTIVE, *FIXED):
        for ode in PROBLEMS if method in ADAPTIVE else ("constant",):
            for dtype in DTYPES:
                for reverse in (False, True):
                    # ~20k steps of a second-order method
                    marks = [pytest.mark.slow] if method == "adaptive_heun" and ode != "constant" else []
                    name = f"{method}-{ode}-{str(dtype)[6:]}-{'reverse' if reverse else 'forward'}"
                    yield pytest.param(method, ode, dtype, reverse, marks=marks, id=name)


@pytest.mark.parametrize(("method", "ode", "dtype", "reverse"), list(_solver_cases()))
def test_solver_error_within_torchdiffeq_bounds(method, ode, dtype, reverse):
    f, y0, t, sol = construct_problem(ode, dtype, reverse)
    kwargs = {}
    if method == "dopri8":  # torchdiffeq tightens the tolerances for dopri8
        kwargs = dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=1e-7, atol=1e-7)
    # torchdiffeq's max_num_steps is unbounded; dxdt's default (10 000) is too few for adaptive_heun here.
    options = dict(max_num_steps=100_000) if method in ADAPTIVE else None
    y = odeint(f, y0, t, method=method, options=options, **kwargs)
    assert y.shape == sol.shape and y.dtype == dtype
    assert torch.equal(y[0], y0)
    assert rel_error(sol, y) < _error_bound(method, ode)


@pytest.mark.parametrize("method", [*ADAPTIVE, *FIXED])
def test_no_integration_returns_y0(method):
    """torchdiffeq's TestNoIntegration: a single time point returns y0."""
    for ode in PROBLEMS:
        for dtype in DTYPES:
            for reverse in (False, True):
                f, y0, t, sol = construct_problem(ode, dtype, reverse)
                y = odeint(f, y0, t[0:1], method=method)
                assert y.shape == (1, *y0.shape)
                assert (sol[0] - y).abs().max() < 1e-12


@pytest.mark.parametrize("method", [*ADAPTIVE, *FIXED])
def test_gradcheck_y0_and_times(method):
    """torchdiffeq's TestGradient.test_odeint (gradcheck on ConstantODE), without t[0], which is detached."""
    f, y0, t, _ = construct_problem("constant")
    t0 = t[:1].detach()

    def func(y0, t_rest):
        return odeint(f, y0, torch.cat([t0, t_rest]), method=method)

    assert torch.autograd.gradcheck(func, (y0, t[1:].detach().requires_grad_(True)))


# ---------------------------------------------------------------------------------------------------------------
# The API contract


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8", "euler", "rk4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_shape_and_what_func_receives(method, dtype):
    k = torch.linspace(0.5, 1.5, 24, dtype=dtype).reshape(2, 3, 4)
    y0 = torch.linspace(-1, 1, 24, dtype=dtype).reshape(2, 3, 4)
    seen = []

    def f(t, y):
        seen.append((tuple(t.shape), t.dtype, tuple(y.shape), y.dtype))
        return -k * y

    t = torch.tensor([0.0, 0.1, 0.25, 0.5], dtype=dtype)
    options = dict(step_size=0.01) if method in FIXED else None
    y = odeint(f, y0, t, method=method, options=options)
    assert y.shape == (4, 2, 3, 4) and y.dtype == dtype
    assert torch.equal(y[0], y0)
    assert set(seen) == {((), dtype, (2, 3, 4), dtype)}
    exact = y0 * torch.exp(-k * t.reshape(-1, 1, 1, 1))
    tol = {"euler": 5e-3, "rk4": 1e-6}.get(method, 1e-5) if dtype == F64 else 5e-3
    torch.testing.assert_close(y, exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "rk4"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scalar_state(method, reverse):
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    if reverse:
        t = t.flip(0)
    y0 = torch.tensor(2.0, dtype=F64)
    y = odeint(lambda t, y: -y, y0, t, method=method, options=dict(step_size=0.01) if method == "rk4" else None)
    assert y.shape == (5,)
    torch.testing.assert_close(y, 2.0 * torch.exp(-(t - t[0])), rtol=1e-7, atol=0)


def _oscillator(t, state):
    x, v, clock = state
    assert x.shape == (2,) and v.shape == (2,) and clock.shape == ()
    return v, -x, torch.ones_like(clock)


@pytest.mark.parametrize(
    ("method", "tol"),
    [("dopri5", 1e-6), ("bosh3", 1e-5), ("dopri8", 1e-6), ("midpoint", 1e-3)],
)
def test_tuple_state(method, tol):
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    y0 = (torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), torch.tensor(0.0, dtype=F64))
    options = dict(step_size=1e-2) if method == "midpoint" else None
    x, v, clock = odeint(_oscillator, y0, t, rtol=1e-7, atol=1e-9, method=method, options=options)
    assert (x.shape, v.shape, clock.shape) == ((7, 2), (7, 2), (7,))
    assert all(torch.equal(out[0], y) for out, y in zip((x, v, clock), y0))
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    torch.testing.assert_close(x, y0[0] * c + y0[1] * s, rtol=0, atol=tol)
    torch.testing.assert_close(v, -y0[0] * s + y0[1] * c, rtol=0, atol=tol)
    torch.testing.assert_close(clock, t, rtol=0, atol=1e-9)


def test_tuple_func_must_return_a_tuple():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match=r"func must return a tuple of 2 tensors; it returned Tensor"):
        odeint(lambda t, y: y[0], y0, torch.tensor([0.0, 1.0], dtype=F64), method="bosh3")
    with pytest.raises(ValueError, match=re.escape("func returned[1] shape (2,) but y0[1] has shape (3,)")):
        odeint(lambda t, y: (y[0], y[0]), y0, torch.tensor([0.0, 1.0], dtype=F64), method="bosh3")


def _decay_error(rtol, atol, y0, tuple_state):
    """Largest error of component 0 of a decoupled decay solved with bosh3 (the state as one tensor or a tuple)."""
    rates = torch.tensor([1.0, 3.0], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    if tuple_state:
        y = odeint(lambda t, y: (-rates[0] * y[0], -rates[1] * y[1]), (y0[:1], y0[1:]), t, rtol, atol, "bosh3")
        return (y[0][-1, 0] - y0[0] * math.exp(-2.0)).abs().item()
    y = odeint(lambda t, y: -rates * y, y0, t, rtol=rtol, atol=atol, method="bosh3")
    return (y[-1, 0] - y0[0] * math.exp(-2.0)).abs().item()


@pytest.mark.parametrize("tuple_state", [False, True])
def test_per_component_tolerances(tuple_state):
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    loose = _decay_error(1e-3, 1e-3, y0, tuple_state)
    if tuple_state:
        tight = _decay_error((1e-8, 1e-3), (1e-10, 1e-3), y0, tuple_state)
    else:
        tight = _decay_error(torch.tensor([1e-8, 1e-3]), torch.tensor([1e-10, 1e-3]), y0, tuple_state)
    # The tight component sets the steps: its error follows its own tolerance, not the loose one.
    assert loose > 1e-4 and tight < 1e-7
    # A scalar tensor is the same tolerance as the number.
    assert _decay_error(torch.tensor(1e-3, dtype=F64), torch.tensor([1e-3], dtype=F64), y0, tuple_state) == loose


def test_unknown_method_lists_the_valid_ones():
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    valid = "dopri5, dopri8, tsit5, bosh3, adaptive_heun, euler, midpoint, rk4"
    with pytest.raises(ValueError, match=re.escape(f"Invalid method 'rk45'. Must be one of {valid}.")):
        odeint(lambda t, y: -y, y0, t, method="rk45")
    with pytest.raises(ValueError, match=re.escape("torchdiffeq's 'fehlberg2' has no counterpart")):
        odeint(lambda t, y: -y, y0, t, method="fehlberg2")


def test_unknown_or_misplaced_options_are_named():
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"unsupported option\(s\) 'jump_t', 'norm' for the adaptive method 'dopri5'"):
        odeint(f, y0, t, options=dict(norm=None, jump_t=torch.tensor([0.5]), first_step=0.1))
    with pytest.raises(ValueError, match=r"unsupported option\(s\) 'step_size' for the adaptive method 'bosh3'"):
        odeint(f, y0, t, method="bosh3", options=dict(step_size=0.1))
    with pytest.raises(ValueError, match=r"unsupported option\(s\) 'first_step' for the fixed-grid method 'rk4'"):
        odeint(f, y0, t, method="rk4", options=dict(first_step=0.1))
    with pytest.raises(ValueError, match=r"option step_size must be a positive finite number; got -0.1"):
        odeint(f, y0, t, method="rk4", options=dict(step_size=-0.1))
    with pytest.raises(ValueError, match=r"option max_num_steps must be a positive int; got 1.5"):
        odeint(f, y0, t, method="bosh3", options=dict(max_num_steps=1.5))


def test_bad_times_and_tolerances():
    y0, f = torch.ones(2, dtype=F64), lambda t, y: -y
    with pytest.raises(TypeError, match=r"t must be a 1-D floating point torch.Tensor of times; got list"):
        odeint(f, y0, [0.0, 1.0])
    with pytest.raises(
        ValueError, match=r"t must be strictly increasing or strictly decreasing; got \[0.0, 1.0, 1.0\]"
    ):
        odeint(f, y0, torch.tensor([0.0, 1.0, 1.0], dtype=F64), method="bosh3")
    with pytest.raises(ValueError, match=r"t must be one dimensional and non-empty; got shape \(1, 2\)"):
        odeint(f, y0, torch.tensor([[0.0, 1.0]], dtype=F64), method="bosh3")
    with pytest.raises(ValueError, match=r"rtol cannot require gradient"):
        odeint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=torch.tensor(1e-6, requires_grad=True))
    with pytest.raises(ValueError, match=re.escape("atol of shape (3,) does not broadcast to y0's shape (2,)")):
        odeint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), atol=torch.full((3,), 1e-6))


def test_max_num_steps_raises_solve_error():
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, 10.0], dtype=F64)
    with pytest.raises(dxdt.SolveError, match=r"1 × MAX_STEPS"):
        odeint(lambda t, y: torch.cos(5 * t) * y, y0, t, method="bosh3", options=dict(max_num_steps=5))
    with pytest.raises(dxdt.SolveError, match=r"1 × MAX_STEPS"):
        odeint(lambda t, y: -y, y0, t, method="rk4", options=dict(step_size=0.1, max_num_steps=50))


def test_rk4_is_fourth_order_with_step_size():
    """torchdiffeq's rk4 (Kutta's 3/8 rule): halving step_size divides the error by 2^4."""
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    errors = []
    for h in (0.125, 0.0625):
        y = odeint(lambda t, y: -y, torch.ones(1, dtype=F64), t, method="rk4", options=dict(step_size=h))
        errors.append((y[-1, 0] - math.exp(-1.0)).abs().item())
    assert abs(math.log2(errors[0] / errors[1]) - 4) < 0.1


def test_fixed_grid_without_step_size_takes_one_step_per_interval():
    t = torch.tensor([0.0, 0.1, 0.35, 0.4, 1.0], dtype=F64)
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    y = odeint(f, torch.ones(1, dtype=F64), t, method="euler")
    # dxdt evaluates f at the end of every step (the next step's first stage): once per interval, plus once at t0.
    assert calls == pytest.approx(t.tolist(), rel=0, abs=1e-15)
    expected = torch.cumprod(torch.cat([torch.ones(1, dtype=F64), 1 - t.diff()]), 0)
    torch.testing.assert_close(y[:, 0], expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Parity with torchdiffeq itself


class MLP(torch.nn.Module):
    """A small time-dependent vector field, float64."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(3, 16, generator=gen, dtype=F64) * 0.5)
        self.b1 = torch.nn.Parameter(torch.randn(16, generator=gen, dtype=F64) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(16, 2, generator=gen, dtype=F64) * 0.5)

    def forward(self, t, y):
        return torch.tanh(torch.cat([y, t.reshape(1)]) @ self.w1 + self.b1) @ self.w2


def _grads(solver, reverse, **kwargs):
    """Outputs and gradients of a fixed random projection of ``solver``'s solution w.r.t. y0, parameters and t."""
    func = MLP()
    y0 = torch.tensor([0.5, -0.3], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.7, 1.2, 2.0], dtype=F64)
    t = (t.flip(0) if reverse else t).requires_grad_(True)
    ys = solver(func, y0, t, **kwargs)
    weights = torch.randn(ys.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    params = list(func.parameters())
    grads = torch.autograd.grad((ys * weights).sum(), [y0, t, *params], allow_unused=True)
    return ys.detach(), grads, (func, weights, t.detach())


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
@pytest.mark.parametrize("reverse", [False, True])
def test_outputs_and_gradients_match_torchdiffeq_adaptive(method, reverse):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    tol = dict(rtol=1e-10, atol=1e-12)
    ys, grads, _ = _grads(odeint, reverse, method=method, **tol)
    ys_ref, grads_ref, _ = _grads(torchdiffeq.odeint, reverse, method="dopri5", **tol)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-8, atol=1e-10)
    g_y0, g_t, *g_params = grads
    r_y0, r_t, *r_params = grads_ref
    torch.testing.assert_close(g_y0, r_y0, rtol=1e-5, atol=1e-8)
    for g, r in zip(g_params, r_params):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)
    # t[0] is detached (documented); the save times' gradients match torchdiffeq's.
    assert g_t[0] == 0
    torch.testing.assert_close(g_t[1:], r_t[1:], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("reverse", [False, True])
def test_fixed_grid_matches_torchdiffeq(method, reverse):
    """One step per interval of t, with torchdiffeq's methods (rk4 = the 3/8 rule): the same numbers to rounding."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ys, grads, (func, weights, t) = _grads(odeint, reverse, method=method)
    ys_ref, grads_ref, _ = _grads(torchdiffeq.odeint, reverse, method=method)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-13, atol=1e-14)
    g_y0, g_t, *g_params = grads
    r_y0, _, *r_params = grads_ref
    torch.testing.assert_close(g_y0, r_y0, rtol=1e-12, atol=1e-14)
    for g, r in zip(g_params, r_params):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    # d y_i / d t_i = f(t_i, y_i), the exact solution's (torchdiffeq differentiates its grid instead).
    with torch.no_grad():
        slopes = torch.stack([(weights[i] * func(t[i], ys[i])).sum() for i in range(1, len(t))])
    assert g_t[0] == 0
    torch.testing.assert_close(g_t[1:], slopes, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("reverse", [False, True])
def test_fixed_grid_with_step_size_matches_torchdiffeq(method, reverse):
    """The grid t[0] + k * step_size and linear interpolation at t (t off the grid): the same numbers to rounding."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    options = dict(step_size=0.11)  # no time in t on the grid, either way
    ys, grads, _ = _grads(odeint, reverse, method=method, options=options)
    ys_ref, grads_ref, _ = _grads(torchdiffeq.odeint, reverse, method=method, options=options)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-13, atol=1e-14)
    g_y0, g_t, *g_params = grads
    r_y0, r_t, *r_params = grads_ref
    torch.testing.assert_close(g_y0, r_y0, rtol=1e-12, atol=1e-14)
    for g, r in zip(g_params, r_params):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    # Inside the grid the gradient w.r.t. a save time is the interpolant's slope in both; t[-1] ends torchdiffeq's
    # grid (it differentiates the last step), t[0] is detached here.
    torch.testing.assert_close(g_t[1:-1], r_t[1:-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_tuple_state_matches_torchdiffeq(method):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    y0 = (torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), torch.tensor(0.0, dtype=F64))
    ours = odeint(_oscillator, y0, t, rtol=1e-9, atol=1e-11, method=method)
    # torchdiffeq's dopri5 is its most accurate interpolant at these tolerances (its dopri8 is off by ~1e-6)
    ref = torchdiffeq.odeint(_oscillator, y0, t, rtol=1e-9, atol=1e-11, method="dopri5")
    assert isinstance(ours, tuple) and len(ours) == 3
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_default_method_is_dopri5():
    f, y0, t, _ = construct_problem("sine")
    torch.testing.assert_close(odeint(f, y0, t), odeint(f, y0, t, method="dopri5"), rtol=0, atol=0)


def test_dopri5_reproduces_torchdiffeq_float64():
    """Same tableau, error weights (Shampine's), controller, overshoot and interpolant as torchdiffeq's dopri5:
    the loss agrees to rounding; gradients differ only by torchdiffeq's differentiable initial step size."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0, target = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    results = []
    for fn in (odeint, torchdiffeq.odeint):
        net.zero_grad()
        calls = []

        def f(t, y, calls=calls):
            calls.append(1)
            return net(y)

        y = fn(f, y0, torch.tensor([0.0, 5.0], dtype=torch.float64), rtol=1e-3, atol=1e-5, method="dopri5")
        loss = ((y[-1] - target) ** 2).mean()
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()]), len(calls)))
    (loss_d, grad_d, n_d), (loss_t, grad_t, n_t) = results
    assert n_d == n_t
    torch.testing.assert_close(loss_d, loss_t, rtol=1e-12, atol=0)
    assert ((grad_d - grad_t).norm() / grad_t.norm()).item() < 1e-5


# -- odeint_adjoint --------------------------------------------------------------------------------------------


class _TimeScaledMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def forward(self, t, y):
        return self.net(y) * (1 + 0.1 * t)


@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_odeint_adjoint_matches_torchdiffeq(norm):
    """Gradients for y0, every entry of t (t[0] included) and the parameters agree with torchdiffeq's adjoint."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    from dxdt.compat.torchdiffeq import odeint_adjoint

    func = _TimeScaledMLP()
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1.5, 4, dtype=F64, requires_grad=True)
    grads = []
    options = {"adjoint_options": {"norm": "seminorm"}} if norm == "seminorm" else {}
    for fn in (torchdiffeq.odeint_adjoint, odeint_adjoint):
        out = fn(func, y0, t, rtol=1e-9, atol=1e-10, **options)
        grads.append(torch.autograd.grad((out**2).sum(), [y0, t, *func.parameters()]))
    for ours, theirs in zip(*grads):
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-8)
    assert grads[1][1][0].abs() > 0  # t[0] gets its gradient


def test_odeint_adjoint_needs_module_or_params():
    from dxdt.compat.torchdiffeq import odeint_adjoint

    w = torch.tensor(2.0, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"func must be an instance of nn\.Module"):
        odeint_adjoint(lambda t, y: -w * y, torch.ones(2, dtype=F64), t)
    out = odeint_adjoint(lambda t, y: -w * y, torch.ones(2, dtype=F64), t, adjoint_params=(w,), rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(out[-1].sum(), w)
    assert torch.allclose(g, torch.tensor(-2 * math.exp(-2.0), dtype=F64), rtol=1e-7)
