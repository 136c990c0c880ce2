"""dxdt.models: equations against independent facts (conservation laws, analytic solutions, scipy references),
positive log-parameterisation, batches of parameters, initial-state helpers, complex-step safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

import dxdt
from dxdt.models import (
    MODELS,
    SEIR,
    SIR,
    SIRD,
    DampedPendulum,
    FunctionModel,
    Logistic,
    Lorenz,
    LotkaVolterra,
    NeuralTransmissionSIR,
    Robertson,
    UniversalODE,
    VanDerPol,
    get_model,
)

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)


def _solve(model, y0, t1, ts=None, **kw):
    with torch.no_grad():
        return dxdt.solve(model, y0, 0.0, t1, saveat=ts, **{**TIGHT, **kw})


@pytest.mark.parametrize("cls", [SIR, SEIR, SIRD])
def test_epidemic_models_conserve_population(cls):
    model = cls(beta=1.3, gamma=0.4)
    y0 = model.initial_state(population=1000, I=5)
    assert float(y0.sum()) == pytest.approx(1000.0)
    assert float(y0[0, model.state_index("S")]) == pytest.approx(995.0)
    sol = _solve(model, y0, 60.0, torch.linspace(0, 60, 31, dtype=F64))
    total = sol.ys.sum(-1)
    torch.testing.assert_close(total, torch.full_like(total, 1000.0), rtol=1e-9, atol=1e-7)
    assert bool((sol.ys > -1e-8).all())


def test_sir_final_size_relation():
    """Kermack–McKendrick final size: log(S∞/S0) = R0 (S∞ - N) / N (R(0) = 0), solved with brentq."""
    beta, gamma, n = 1.5, 0.5, 1000.0
    model = SIR(beta=beta, gamma=gamma)
    y0 = model.initial_state(population=n, I=1)
    s_inf = float(_solve(model, y0, 400.0).ys[0, -1, 0])
    r0 = beta / gamma
    s0 = float(y0[0, 0])
    expected = brentq(lambda s: math.log(s / s0) - r0 * (s - n) / n, 1e-9, s0 * (1 - 1e-6))
    assert s_inf == pytest.approx(expected, rel=1e-6)
    assert float(model.derived(model.params)["R0"].detach()) == pytest.approx(r0)


def test_sird_derived_quantities_and_deaths():
    model = SIRD(beta=0.9, gamma=0.25, mu=0.05)
    d = model.derived(model.params)
    assert float(d["R0"].detach()) == pytest.approx(0.9 / 0.3)
    assert float(d["IFR"].detach()) == pytest.approx(0.05 / 0.3)
    sol = _solve(model, model.initial_state(population=1000, I=1), 400.0)
    _, _, r, dead = sol.ys[0, -1]
    assert float(dead / (r + dead)) == pytest.approx(0.05 / 0.3, rel=1e-6)  # every recovery/death splits μ : γ


def test_logistic_analytic_solution():
    model = Logistic(r=0.7, K=50.0)
    ts = torch.linspace(0, 15, 16, dtype=F64)
    sol = _solve(model, model.initial_state(N=2.0), 15.0, ts)
    exact = 50.0 / (1 + (50.0 / 2.0 - 1) * torch.exp(-0.7 * ts))
    torch.testing.assert_close(sol.ys[0, :, 0], exact, rtol=1e-8, atol=1e-8)


def test_lotka_volterra_invariant():
    model = LotkaVolterra()
    sol = _solve(model, model.initial_state(), 30.0, torch.linspace(0, 30, 61, dtype=F64))
    h = model.invariant(sol.ys[0])
    torch.testing.assert_close(h, torch.full_like(h, float(h[0].detach())), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    ("model", "y0", "t1"),
    [
        (Lorenz(), [1.0, 1.0, 1.0], 2.0),
        (VanDerPol(mu=2.0), [2.0, 0.0], 10.0),
        (DampedPendulum(damping=0.3), [2.5, 0.0], 10.0),
        (SEIR(beta=1.0, sigma=0.3, gamma=0.25), [990.0, 5.0, 5.0, 0.0], 50.0),
        (Robertson(), [1.0, 0.0, 0.0], 0.05),
    ],
    ids=["lorenz", "van-der-pol", "pendulum", "seir", "robertson"],
)
def test_models_match_scipy_reference(model, y0, t1):
    """The models' equations, written independently for scipy, give the same trajectories."""
    p = {k: float(v) for k, v in model.params.items()}

    def ref(t, y):
        if isinstance(model, Lorenz):
            x, u, z = y
            return [p["sigma"] * (u - x), x * (p["rho"] - z) - u, x * u - p["beta"] * z]
        if isinstance(model, VanDerPol):
            return [y[1], p["mu"] * (1 - y[0] ** 2) * y[1] - y[0]]
        if isinstance(model, DampedPendulum):
            return [y[1], -p["g"] / p["length"] * math.sin(y[0]) - p["damping"] * y[1]]
        if isinstance(model, SEIR):
            s, e, i, _ = y
            inf = p["beta"] * s * i / sum(y)
            return [-inf, inf - p["sigma"] * e, p["sigma"] * e - p["gamma"] * i, p["gamma"] * i]
        y1, y2, y3 = y
        return [-p["k1"] * y1 + p["k3"] * y2 * y3, p["k1"] * y1 - p["k2"] * y2**2 - p["k3"] * y2 * y3, p["k2"] * y2**2]

    ts = np.linspace(0, t1, 11)
    method = "Radau" if model.stiff else "DOP853"
    expected = solve_ivp(ref, (0, t1), y0, t_eval=ts, method=method, rtol=1e-12, atol=1e-12).y.T
    sol = _solve(model, torch.tensor([y0], dtype=F64), t1, torch.tensor(ts, dtype=F64), max_steps=200_000)
    np.testing.assert_allclose(sol.ys[0].numpy(), expected, rtol=1e-6, atol=1e-8)


def test_pendulum_small_amplitude_period():
    model = DampedPendulum(g=9.81, length=2.0, damping=1e-9)
    ts = torch.linspace(0, 20, 801, dtype=F64)
    theta = _solve(model, model.initial_state(theta=0.01), 20.0, ts).ys[0, :, 0].numpy()
    t = ts.numpy()
    up = np.nonzero((theta[:-1] < 0) & (theta[1:] >= 0))[0]
    crossings = t[up] - theta[up] * (t[up + 1] - t[up]) / (theta[up + 1] - theta[up])  # linear interpolation
    period = float(np.mean(np.diff(crossings)))
    assert period == pytest.approx(float(model.derived(model.params)["period"].detach()), rel=1e-4)
    assert float(model.derived(model.params)["period"].detach()) == pytest.approx(2 * math.pi * math.sqrt(2.0 / 9.81))


def test_van_der_pol_limit_cycle_amplitude():
    """For μ = 1 the limit cycle's amplitude is 2.0086 (a classical value)."""
    sol = _solve(
        VanDerPol(mu=1.0),
        torch.tensor([[0.5, 0.0]], dtype=F64),
        40.0,
        torch.linspace(32, 40, 801, dtype=F64),
        rtol=1e-8,
        atol=1e-8,
    )
    assert float(sol.ys[0, :, 0].abs().max()) == pytest.approx(2.0086, abs=2e-3)


def test_parameters_are_positive_log_parameterised():
    model = SIR(beta=2.0, gamma=0.5)
    assert {n for n, _ in model.named_parameters()} == {"log_beta", "log_gamma"}
    assert float(model.log_beta.detach()) == pytest.approx(math.log(2.0))
    assert float(model.beta.detach()) == pytest.approx(2.0)
    with torch.no_grad():
        model.log_beta.fill_(-50.0)  # any real value of the logarithm is a valid (positive) rate
    assert float(model.beta.detach()) > 0
    model.set_params(beta=3.0)
    assert float(model.beta.detach()) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="must be positive"):
        SIR(beta=-1.0)
    with pytest.raises(ValueError, match="must be positive"):
        model.set_params(gamma=0.0)
    with pytest.raises(TypeError, match="has no parameter 'delta'"):
        SIR(delta=1.0)


def test_gradient_flows_to_log_parameters():
    """d I(t) / d log β by autograd through the solve equals a central difference."""
    model = SIR(beta=1.5, gamma=0.5)
    y0 = model.initial_state(population=1000)
    i5 = dxdt.solve(model, y0, 0.0, 5.0, **TIGHT).ys[0, -1, 1]
    (grad,) = torch.autograd.grad(i5, model.log_beta)
    eps = 1e-5

    def at(log_beta):
        m = SIR(beta=math.exp(log_beta), gamma=0.5)
        return float(_solve(m, y0, 5.0).ys[0, -1, 1])

    fd = (at(math.log(1.5) + eps) - at(math.log(1.5) - eps)) / (2 * eps)
    assert float(grad) == pytest.approx(fd, rel=1e-5)


def test_batch_of_parameters_equals_single_solves():
    betas = torch.tensor([0.8, 1.5, 2.5], dtype=F64)
    model = SIR(beta=betas, gamma=0.5)
    y0 = SIR().initial_state(population=500).expand(3, -1)
    batched = _solve(model, y0, 20.0, torch.linspace(0, 20, 5, dtype=F64)).ys
    for i, b in enumerate(betas.tolist()):
        single = _solve(SIR(beta=b, gamma=0.5), y0[:1], 20.0, torch.linspace(0, 20, 5, dtype=F64)).ys
        torch.testing.assert_close(batched[i], single[0], rtol=1e-9, atol=1e-8)


def test_initial_state_helpers_and_errors():
    sir = SIR()
    torch.testing.assert_close(sir.initial_state(population=763), torch.tensor([[762.0, 1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(sir.initial_state(population=100, I=3, R=7), torch.tensor([[90.0, 3.0, 7.0]], dtype=F64))
    torch.testing.assert_close(Lorenz().initial_state(z=5.0), torch.tensor([[1.0, 1.0, 5.0]], dtype=F64))
    with pytest.raises(ValueError, match="no state 'X'"):
        sir.initial_state(X=1)
    with pytest.raises(ValueError, match="cannot be negative"):
        sir.initial_state(S=-1.0)
    with pytest.raises(ValueError, match="add up to"):
        sir.initial_state(population=10, I=20)
    with pytest.raises(ValueError, match="epidemic models"):
        Lorenz().initial_state(population=10)


@pytest.mark.parametrize("name", list(MODELS))
def test_complex_step_matches_autograd(name):
    """Built-in models declare complex_step=True: their rhs on y + ih v gives J v exactly (what fits rely on)."""
    model = get_model(name)
    torch.manual_seed(0)
    y = model.initial_state() + torch.rand(1, len(model.states), dtype=F64)
    v = torch.randn_like(y)
    p = model.params
    h = 1e-20
    t = torch.zeros(1, 1, dtype=F64)
    p = {k: x.detach() for k, x in p.items()}
    out = model.rhs(t, torch.complex(y, h * v), p)
    eps = 1e-6 * float(y.abs().max())
    central = (model.rhs(t, y + eps * v, p) - model.rhs(t, y - eps * v, p)) / (2 * eps)
    torch.testing.assert_close(out.real, model.rhs(t, y, p))
    torch.testing.assert_close(out.imag / h, central, rtol=1e-6, atol=1e-6 * float(central.abs().max()))


@pytest.mark.parametrize("name", list(MODELS))
def test_describe_lists_equations_and_parameters(name):
    model = get_model(name)
    text = model.describe()
    assert model.equations.strip().splitlines()[0].strip() in text
    for p, info in model.param_info.items():
        assert p in text and info.unit in text
    assert model(torch.zeros(1, 1, dtype=F64), model.initial_state()).shape == (1, len(model.states))


def test_get_model_aliases_and_unknown():
    assert isinstance(get_model("Lotka_Volterra"), LotkaVolterra)
    assert isinstance(get_model("vdp"), VanDerPol)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model("nope")


def test_function_model_wraps_a_user_function():
    def decay(t, y, p):
        return -p["k"].reshape(-1, 1) * y

    model = FunctionModel(decay, {"k": 0.5}, states=("x",))
    assert model.states == ("x",) and float(model.k.detach()) == pytest.approx(0.5)
    sol = _solve(model, torch.ones(1, 1, dtype=F64), 2.0)
    assert float(sol.ys[0, -1, 0]) == pytest.approx(math.exp(-1.0), rel=1e-8)


def test_neural_transmission_sir_starts_as_sir():
    ude = NeuralTransmissionSIR(beta=1.2, gamma=0.4, time_scale=30.0, hidden=5)
    sir = SIR(beta=1.2, gamma=0.4)
    y0 = sir.initial_state(population=1000)
    ts = torch.linspace(0, 30, 7, dtype=F64)
    torch.testing.assert_close(_solve(ude, y0, 30.0, ts).ys, _solve(sir, y0, 30.0, ts).ys, rtol=1e-9, atol=1e-8)
    ude.set_params(c0=0.5)
    beta_t = ude.transmission(torch.tensor([0.0, 15.0], dtype=F64))
    a, b = float(ude.a0.detach()), float(ude.b0.detach())
    expected = [1.2 * math.exp(0.5 * math.tanh(a * t / 30.0 + b)) for t in (0.0, 15.0)]
    np.testing.assert_allclose(beta_t.detach().numpy(), expected, rtol=1e-12)
    assert {n for n, _ in ude.named_parameters()} >= {"log_beta", "log_gamma", "raw_a0", "raw_c4"}


def test_universal_ode_adds_a_network_term():
    lv = LotkaVolterra()
    ude = UniversalODE(lv, hidden=8)
    y0 = lv.initial_state()
    t = torch.zeros(1, 1, dtype=F64)
    torch.testing.assert_close(ude(t, y0), lv(t, y0))  # the network starts at exactly 0
    with torch.no_grad():
        ude.net[-1].bias.fill_(0.25)
    torch.testing.assert_close(ude(t, y0), lv(t, y0) + 0.25)
