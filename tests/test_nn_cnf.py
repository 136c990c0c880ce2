"""CNF (FFJORD): densities that integrate to one, closed-form log-densities, unbiased traces, sampling, training."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import nn

from dxdt.nn.cnf import CNF
from dxdt.nn.regularizers import regularized

F64 = torch.float64


class Linear(nn.Module):
    """f(t, z) = A z: the flow map is expm(A t) and the log-determinant t tr(A)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, z):
        return z @ self.A.T


class Tanh(nn.Module):
    """f(t, z) = tanh(W z + b t): nonlinear, with a state-dependent Jacobian."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.W, self.b = W, b

    def forward(self, t, z):
        return torch.tanh(z @ self.W.T + self.b * t)


def random_cnf(seed: int = 0, scale: float = 2.0, **kw) -> CNF:
    """An untrained CNF whose weights are scaled up so that the flow is far from the identity."""
    torch.manual_seed(seed)
    cnf = CNF(dim=2, hidden=32, depth=2, **kw).double()
    with torch.no_grad():
        for p in cnf.parameters():
            p.mul_(scale)
    return cnf


def normal_logpdf(z: torch.Tensor) -> np.ndarray:
    return scipy.stats.multivariate_normal(np.zeros(z.shape[1])).logpdf(z.detach().numpy())


def test_density_integrates_to_one_and_is_not_the_base():
    cnf = random_cnf(rtol=1e-6, atol=1e-8)
    g = torch.linspace(-7.0, 7.0, 121, dtype=F64)
    x = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    area = float(g[1] - g[0]) ** 2
    with torch.no_grad():
        p = cnf.log_prob(x).exp()
    assert abs(float(p.sum() * area) - 1.0) < 0.02
    # Non-trivial: far from the standard normal in total variation.
    base = cnf.base_log_prob(x).exp()
    assert 0.5 * float((p - base).abs().sum() * area) > 0.2


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_linear_field_log_prob_closed_form(trace):
    # Rademacher probes give εᵀAε = tr(A) + (A01 + A10) ε0 ε1: exact too, as A01 = -A10.
    A = torch.tensor([[0.3, -0.8], [0.8, -0.5]], dtype=F64)
    x = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    z = x @ torch.from_numpy(scipy.linalg.expm(0.7 * A.numpy())).T
    expected = normal_logpdf(z) + 0.7 * float(torch.trace(A))
    out = CNF(Linear(A), dim=2, trace=trace, t1=0.7, rtol=1e-10, atol=1e-12)(x)
    np.testing.assert_allclose(out.log_prob.detach().numpy(), expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(out.z.detach().numpy(), z.numpy(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_zero_field_is_the_standard_normal(trace):
    cnf = CNF(dim=3, trace=trace).double()
    with torch.no_grad():
        cnf.field.layers[-1].weight.zero_()
        cnf.field.layers[-1].bias.zero_()
    x = 2 * torch.randn(10, 3, dtype=F64)
    np.testing.assert_allclose(cnf.log_prob(x).detach().numpy(), normal_logpdf(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    """One probe per row: the mean over 1500 replicas matches the exact trace within 4 standard errors."""
    exact = random_cnf(seed=3)
    hutch = random_cnf(seed=3, trace="hutchinson", noise=noise)
    x = torch.tensor([[0.5, -1.0], [-1.5, 0.2], [0.0, 2.0]], dtype=F64)
    reps = 1500
    opts = dict(solver="rk4", dt0=0.1)  # fixed steps: the discrete estimate is exactly linear in εεᵀ
    with torch.no_grad():
        ref = exact.log_prob(x, **opts)
        est = hutch.log_prob(x.repeat(reps, 1), generator=torch.Generator().manual_seed(0), **opts)
    est = est.reshape(reps, 3)
    se = est.std(0) / math.sqrt(reps)
    assert (se > 1e-3).all()  # the probe really varies the estimate
    assert ((est.mean(0) - ref).abs() < 4 * se).all(), (est.mean(0), ref, se)


def test_sample_then_log_prob_round_trip():
    cnf = random_cnf(seed=1, rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(50, 2, dtype=F64, generator=gen)
    x, lp = cnf.sample(50, z=z, return_log_prob=True)
    out = cnf(x)
    np.testing.assert_allclose(out.z.detach().numpy(), z.numpy(), atol=1e-7)  # the flow inverts
    np.testing.assert_allclose(out.log_prob.detach().numpy(), lp.detach().numpy(), atol=1e-7)
    x_only = cnf.sample(50, z=z)
    np.testing.assert_allclose(x_only.detach().numpy(), x.detach().numpy(), atol=1e-7)
    assert (x - z).abs().max() > 0.3  # the samples moved


def test_per_sample_mode_matches_joint():
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    joint = random_cnf(rtol=1e-9, atol=1e-11)
    per_sample = random_cnf(rtol=1e-9, atol=1e-11, batch_mode="per_sample")
    np.testing.assert_allclose(
        per_sample.log_prob(x).detach().numpy(), joint.log_prob(x).detach().numpy(), rtol=0, atol=1e-7
    )


def test_regularizers_match_the_generic_wrapper():
    """CNF's built-in kinetic/Jacobian integrals equal dxdt.nn.regularizers' on the same field and path."""
    cnf = random_cnf(seed=5, rtol=1e-10, atol=1e-12)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    out = cnf(x, kinetic=True, jacobian=True)
    import dxdt

    aug = regularized(cnf.field, x, estimator="exact")
    _, reg = aug.split(dxdt.solve(aug.field, aug.y0, 0.0, 1.0, rtol=1e-10, atol=1e-12, batch_mode="joint").y_final)
    np.testing.assert_allclose(out.regularization.kinetic.detach().numpy(), reg.kinetic.detach().numpy(), atol=1e-8)
    np.testing.assert_allclose(out.regularization.jacobian.detach().numpy(), reg.jacobian.detach().numpy(), atol=1e-8)
    assert (out.regularization.kinetic > 0.01).all() and (out.regularization.jacobian > 0.01).all()
    # Hutchinson mode: the Jacobian estimate shares the trace's probe and is unbiased (checked on the mean).
    hutch = random_cnf(seed=5, trace="hutchinson")
    est = hutch(x.repeat(400, 1), jacobian=True, solver="rk4", dt0=0.1).regularization.jacobian.detach()
    est = est.reshape(400, 8).mean(1)  # mean over the 8 points of each replica: less variance
    ref = cnf(x, jacobian=True, solver="rk4", dt0=0.1).regularization.jacobian.detach().mean()
    assert abs(float(est.mean() - ref)) < 4 * float(est.std()) / math.sqrt(400)


def test_log_prob_gradient_matches_finite_differences():
    """The trace's double backward: gradcheck through fixed-step RK4 (the gradient of the discrete solution)."""
    x = torch.tensor([[0.3, -0.7], [1.2, 0.4]], dtype=F64)
    b = torch.tensor([0.2, -0.1], dtype=F64)

    def nll(W):
        cnf = CNF(Tanh(W, b), dim=2, solver="rk4")
        return cnf(x, kinetic=True, jacobian=True, dt0=0.25).log_prob

    W = torch.tensor([[0.5, -1.1], [0.9, 0.4]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(nll, (W,))


@pytest.mark.parametrize("gradient", ["backsolve", "interpolate"])
def test_adjoint_gradients_match_autodiff(gradient):
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(6))

    def grads(strategy):
        cnf = random_cnf(seed=6, scale=1.0, rtol=1e-9, atol=1e-10, gradient=strategy)
        out = cnf(x, kinetic=True, jacobian=True)
        loss = out.log_prob.sum() + (out.regularization.kinetic + out.regularization.jacobian).sum()
        return torch.autograd.grad(loss, list(cnf.parameters()))

    for a, b in zip(grads("autodiff"), grads(gradient)):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)


def test_training_reduces_nll_with_regularizers():
    torch.manual_seed(0)
    data = torch.randn(256, 2) * torch.tensor([0.4, 1.5]) + torch.tensor([1.0, -0.5])
    cnf = CNF(dim=2, hidden=32, depth=2, trace="hutchinson", rtol=1e-3, atol=1e-3)
    opt = torch.optim.Adam(cnf.parameters(), lr=1e-2)
    with torch.no_grad():
        before = -cnf.log_prob(data).mean().item()
    for _ in range(25):
        opt.zero_grad()
        out = cnf(data, kinetic=True, jacobian=True)
        loss = -out.log_prob.mean() + 0.01 * (out.regularization.kinetic + out.regularization.jacobian).mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in cnf.parameters())
        opt.step()
    with torch.no_grad():
        after = -cnf.log_prob(data).mean().item()
    assert after < before - 0.3, (before, after)


def test_bad_arguments():
    with pytest.raises(ValueError, match="trace must be 'exact' or 'hutchinson'; got 'diag'"):
        CNF(dim=2, trace="diag")
    with pytest.raises(ValueError, match="noise must be 'rademacher' or 'gaussian'; got 'uniform'"):
        CNF(dim=2, noise="uniform")
    with pytest.raises(ValueError, match="dim must be a positive int; got 0"):
        CNF(dim=0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\); got \(4, 3\)"):
        CNF(dim=2).log_prob(torch.zeros(4, 3))
