"""NeuralODE, augmented NODE and the convolutional vector field: shapes, values against closed forms, gradients
against finite differences, evaluation counters, training, and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import dxdt
from dxdt.nn.conv import ConvODEFunc
from dxdt.nn.neural_ode import NeuralODE

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def mlp(dim: int, hidden: int, seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(dtype)


class Autonomous(nn.Module):
    """``func(t, y) = net(y)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class Linear(nn.Module):
    """``dy/dt = y Wᵀ``: the solution is ``y0 exp(t W)ᵀ``."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ self.w.T


# --- values and shapes ----------------------------------------------------------------------------------------


W = torch.tensor([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.5], [0.0, -0.5, -0.3]], dtype=F64)


@pytest.mark.parametrize("batch_mode", ["joint", "per_sample"])
def test_final_state_matches_matrix_exponential(batch_mode):
    y0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    model = NeuralODE(Linear(W.clone()), t_span=(0.5, 2.0), batch_mode=batch_mode, **TIGHT)
    out = model(y0)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, y0 @ torch.linalg.matrix_exp(1.5 * W).T, rtol=1e-8, atol=1e-9)


def test_trajectory_matches_matrix_exponential_at_save_times():
    y0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 0.3, 1.1, 2.5], dtype=F64)
    model = NeuralODE(Linear(W.clone()), t=t, **TIGHT)
    out = model(y0)
    assert out.shape == (4, 4, 3)
    expected = torch.stack([y0 @ torch.linalg.matrix_exp(ti * W).T for ti in t], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-9)
    # The same save times, final state only.
    final = NeuralODE(Linear(W.clone()), t=t, return_trajectory=False, **TIGHT)(y0)
    assert final.shape == (4, 3)
    torch.testing.assert_close(final, expected[:, -1], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("trajectory", [False, True])
def test_augmented_shapes_and_padding(trajectory):
    t = torch.linspace(0, 1, 5, dtype=F64) if trajectory else None
    func = Autonomous(mlp(5, 8))
    y0 = torch.randn(6, 3, dtype=F64)
    full = NeuralODE(func, t=t, augment_dim=2, **TIGHT)(y0)
    dropped = NeuralODE(func, t=t, augment_dim=2, return_augmented=False, **TIGHT)(y0)
    assert full.shape == ((6, 5, 5) if trajectory else (6, 5))
    assert dropped.shape == ((6, 5, 3) if trajectory else (6, 3))
    torch.testing.assert_close(dropped, full[..., :3])
    # Augmenting means integrating from the zero-padded state.
    y0_padded = torch.cat([y0, torch.zeros(6, 2, dtype=F64)], dim=1)
    plain = NeuralODE(func, t=t, **TIGHT)(y0_padded)
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    if trajectory:
        torch.testing.assert_close(full[:, 0], y0_padded, rtol=0, atol=0)


def test_conv_block_shapes_and_augmented_channels():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    block = NeuralODE(ConvODEFunc(4, 8))
    assert block(x).shape == (2, 4, 5, 5)
    aug = NeuralODE(ConvODEFunc(6, 8), augment_dim=2)
    assert aug(x).shape == (2, 6, 5, 5)
    traj = NeuralODE(ConvODEFunc(6, 8), t=torch.linspace(0, 1, 3), augment_dim=2, return_augmented=False)
    assert traj(x).shape == (2, 3, 4, 5, 5)


def test_conv_time_channel_takes_scalar_and_per_sample_times():
    torch.manual_seed(0)
    func = ConvODEFunc(3, 8).double()
    y = torch.randn(2, 3, 4, 4, dtype=F64)
    t = torch.tensor(0.7, dtype=F64)
    out = func(t, y)
    torch.testing.assert_close(func(t.expand(2, 1, 1, 1), y), out, rtol=0, atol=0)
    assert not torch.allclose(func(t + 1.0, y), out)  # t is an input
    no_t = ConvODEFunc(3, 8, time_channel=False).double()
    torch.testing.assert_close(no_t(t, y), no_t(t + 1.0, y), rtol=0, atol=0)
    # Per-sample and joint stepping solve the same ODE.
    joint = NeuralODE(func, batch_mode="joint", **TIGHT)(y)
    per_sample = NeuralODE(func, batch_mode="per_sample", **TIGHT)(y)
    torch.testing.assert_close(per_sample, joint, rtol=1e-7, atol=1e-8)


# --- gradients ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trajectory, augment_dim", [(False, 0), (True, 1)])
def test_parameter_gradients_match_finite_differences(trajectory, augment_dim):
    func = Autonomous(mlp(2 + augment_dim, 3, seed=3))
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64) if trajectory else None
    model = NeuralODE(func, t=t, augment_dim=augment_dim, **TIGHT)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    out_shape = model(y0).shape
    weights = torch.randn(out_shape, dtype=F64, generator=torch.Generator().manual_seed(4))

    def loss() -> torch.Tensor:
        return (model(y0) * weights).sum()

    params = list(model.parameters())
    grads = torch.autograd.grad(loss(), params)
    eps = 1e-5
    with torch.no_grad():
        for p, g in zip(params, grads):
            assert torch.isfinite(g).all()
            fd = torch.empty_like(p)
            for i in range(p.numel()):
                orig = p.view(-1)[i].item()
                p.view(-1)[i] = orig + eps
                up = loss()
                p.view(-1)[i] = orig - eps
                down = loss()
                p.view(-1)[i] = orig
                fd.view(-1)[i] = (up - down) / (2 * eps)
            torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


# --- evaluation counters --------------------------------------------------------------------------------------


def test_nfe_counters_joint():
    func = Autonomous(mlp(2, 8))
    model = NeuralODE(func, t_span=(0.0, 2.0), rtol=1e-6, atol=1e-8)
    y0 = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    out = model(y0)
    n = model.nfe_forward
    assert n > 10
    assert model.stats.n_f_evals.tolist() == [n] * 5
    # An independent solve with the same settings makes the same number of evaluations.
    direct = dxdt.solve(func, y0, 0.0, 2.0, solver="tsit5", rtol=1e-6, atol=1e-8, batch_mode="joint")
    assert int(direct.stats.n_f_evals[0]) == n
    out.square().sum().backward()
    assert model.nfe_backward == 0  # autodiff replays the recorded graph: the field is not called again
    assert model.nfe_forward == n
    # The next call starts counting afresh.
    model(y0[:2] * 0.1)
    assert model.nfe_forward == int(model.stats.n_f_evals[0]) != n
    assert model.nfe_backward == 0


def test_nfe_counters_per_sample():
    func = Autonomous(mlp(2, 8))
    model = NeuralODE(func, t_span=(0.0, 2.0), batch_mode="per_sample", rtol=1e-6, atol=1e-8)
    y0 = torch.tensor([[0.01, 0.0], [2.0, -1.5]], dtype=F64)  # different step counts per sample
    model(y0).sum().backward()
    counts = model.stats.n_f_evals
    assert counts[0] != counts[1]
    assert model.nfe_forward == int(counts.max())  # every call evaluates the whole batch
    assert model.nfe_backward == 0


@pytest.mark.parametrize("gradient", ["checkpoint", "backsolve", "interpolate"])
def test_nfe_backward_counts_the_backward_pass_of_other_strategies(gradient):
    func = Autonomous(mlp(2, 8))
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)
    reference = NeuralODE(func, **TIGHT)
    expected = torch.autograd.grad(reference(y0).square().sum(), list(func.parameters()))
    model = NeuralODE(func, gradient=gradient, **TIGHT)
    grads = torch.autograd.grad(model(y0).square().sum(), list(func.parameters()))
    assert model.nfe_forward == int(model.stats.n_f_evals[0])
    assert model.nfe_backward > 0  # these strategies evaluate the field again going backwards
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)


# --- training -------------------------------------------------------------------------------------------------


def test_adam_fits_a_linear_spiral():
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    t = torch.linspace(0.0, 1.0, 8)
    y0 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    with torch.no_grad():  # data in float64 (float32 cannot meet tight tolerances), the model in float32
        target = NeuralODE(Linear(a), t=t.double(), **TIGHT)(y0.double()).float()
    torch.manual_seed(0)
    model = NeuralODE(Autonomous(mlp(2, 16, dtype=torch.float32)), t=t)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        loss = (model(y0) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def _fit_crossing(augment_dim: int, steps: int) -> float:
    """Train a NODE on Dupont et al.'s g(-1) = 1, g(1) = -1 and return the final mean squared error."""
    torch.manual_seed(0)
    func = Autonomous(mlp(1 + augment_dim, 16, dtype=torch.float32))
    model = NeuralODE(func, augment_dim=augment_dim, return_augmented=False, max_steps=500)
    x = torch.tensor([[-1.0], [1.0]])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = (model(x) + x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model(x) + x).square().mean().item()


def test_augmented_node_represents_the_crossing_map_a_plain_node_cannot():
    # A 1-D flow preserves order, g(-1) < g(1), so the mean squared error is at least 1 (both at 0).
    assert _fit_crossing(augment_dim=0, steps=30) > 0.95
    # In 2-D the two points can pass each other (a half turn maps (±1, 0) to (∓1, 0)).
    assert _fit_crossing(augment_dim=1, steps=30) < 0.02


# --- errors ---------------------------------------------------------------------------------------------------


FUNC = Autonomous(mlp(2, 4))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"func": 42}, TypeError, "func must be a callable vector field func(t, y) (an nn.Module); got int"),
        (
            {"t_span": (0, 1), "t": torch.linspace(0, 1, 3)},
            ValueError,
            "give either t_span=(t0, t1) or save times t, not both",
        ),
        ({"t_span": (1.0, 1.0)}, ValueError, "t_span must be two different finite times (t0, t1); got (1.0, 1.0)"),
        ({"t_span": (0.0,)}, ValueError, "t_span must be a pair of numbers (t0, t1); got (0.0,)"),
        ({"t": [0.0, 1.0]}, TypeError, "t must be a 1-D tensor of save times; got list"),
        (
            {"t": torch.tensor([1.0])},
            ValueError,
            "t must be a 1-D floating tensor of at least two save times (t[0] is the start); got shape (1,) and "
            "dtype torch.float32",
        ),
        (
            {"t": torch.tensor([0.0, 0.5, 0.2])},
            ValueError,
            "t must be finite and strictly increasing or strictly decreasing; got [0.0, 0.5, 0.20000000298023224]",
        ),
        (
            {"return_trajectory": True},
            ValueError,
            "return_trajectory=True needs save times: pass t=torch.linspace(t0, t1, T) instead of t_span",
        ),
        ({"solver": "rk45"}, ValueError, "unknown solver 'rk45'"),
        ({"rtol": 0.0}, ValueError, "rtol must be a positive finite number; got 0.0"),
        ({"atol": -1e-6}, ValueError, "atol must be a positive finite number; got -1e-06"),
        (
            {"gradient": "adjoint"},
            ValueError,
            "gradient must be one of autodiff, checkpoint, backsolve, interpolate, forward or a dxdt.adjoints "
            "instance; got 'adjoint'",
        ),
        ({"batch_mode": "batch"}, ValueError, "batch_mode must be 'joint' or 'per_sample'; got 'batch'"),
        ({"max_steps": 0}, ValueError, "max_steps must be a positive int; got 0"),
        ({"augment_dim": -1}, ValueError, "augment_dim must be a non-negative int; got -1"),
        ({"augment_dim": 1.5}, ValueError, "augment_dim must be a non-negative int; got 1.5"),
        (
            {"solve_kwargs": {"rtol": 1e-3, "saveat": None, "dt0": 0.1}},
            ValueError,
            "solve_kwargs may not contain rtol, saveat: pass them as NeuralODE's own arguments",
        ),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = {"func": FUNC, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        NeuralODE(**kwargs)


def test_bad_inputs_to_forward_and_conv():
    with pytest.raises(
        ValueError, match=re.escape("y0 must be a tensor of shape (B, *S) with at least one state dimension; got (3,)")
    ):
        NeuralODE(FUNC)(torch.zeros(3))
    with pytest.raises(ValueError, match=re.escape("hidden must be a positive int; got 0")):
        ConvODEFunc(3, 0)
    with pytest.raises(
        ValueError, match=re.escape("ConvODEFunc needs feature maps of shape (B, C, H, W); got shape (2, 3)")
    ):
        ConvODEFunc(3, 4)(torch.tensor(0.0), torch.zeros(2, 3))


def test_solve_kwargs_are_passed_through():
    # A fixed-step method needs dt0, which only solve_kwargs can give.
    model = NeuralODE(Linear(W.clone()), solver="rk4", solve_kwargs={"dt0": 0.1})
    y0 = torch.ones(1, 3, dtype=F64)
    model(y0)
    assert model.stats.n_steps.tolist() == [10]
    # Ten RK4 steps of a linear ODE: the degree-4 Taylor polynomial of exp(0.1 W), ten times.
    hw = 0.1 * W
    step = torch.eye(3, dtype=F64) + hw + hw @ hw / 2 + hw @ hw @ hw / 6 + hw @ hw @ hw @ hw / 24
    torch.testing.assert_close(model(y0), y0 @ torch.linalg.matrix_power(step, 10).T, rtol=1e-12, atol=1e-13)
