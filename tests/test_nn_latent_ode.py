"""ODE-RNN and latent ODE: shapes, per-sample times, reductions to a GRU and to matrix exponentials, the ELBO
by hand, gradients against finite differences, training, and masking."""

import math

import pytest
import torch
from torch import nn

from dxdt.nn.latent_ode import ODERNN, LatentODE, MLPField, gaussian_kl

TIGHT = dict(solver="tsit5", rtol=1e-11, atol=1e-12)


class Linear(nn.Module):
    """dz/dt = A z: solutions are matrix exponentials."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t, z):
        return z @ self.a.T


def series(batch, n, dim=1, t_max=5.0, seed=0):
    """Sorted per-series random times (B, n) in [0, t_max] and noisy sines (B, n, dim), float64."""
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(batch, n, generator=g, dtype=torch.float64) * t_max, dim=1).values
    phase = torch.rand(batch, 1, dim, generator=g, dtype=torch.float64) * 6
    x = torch.sin(times[..., None] + phase) + 0.05 * torch.randn(batch, n, dim, generator=g, dtype=torch.float64)
    return times, x


def pad(times, x, mask, keep):
    """Pad series b after its first keep[b] entries: repeat its last kept time, mask 0, garbage values."""
    times, x, mask = times.clone(), x.clone(), mask.clone()
    for b, k in enumerate(keep):
        times[b, k:] = times[b, k - 1]
        x[b, k:] = float("nan")
        mask[b, k:] = 0
    return times, x, mask


def tiny_model(latent=2, obs=1, hidden=3, width=4, **kw):
    torch.manual_seed(0)
    enc = ODERNN(obs, hidden, latent, func=MLPField(hidden, width, layers=1), **kw.get("enc", TIGHT))
    model = LatentODE(obs, latent, encoder=enc, func=MLPField(latent, width), obs_std=0.3, **kw.get("dec", TIGHT))
    return model.double()


def test_shapes():
    model = tiny_model(latent=3, obs=2, hidden=5)
    times, x = series(4, 6, dim=2)
    mu, std = model.encode(x, times)
    assert mu.shape == std.shape == (4, 3) and (std > 0).all()
    assert model(x, times).shape == (4, 6, 2)  # default: predict at the observation times
    pred_times = torch.sort(torch.rand(4, 9, dtype=torch.float64) * 10, dim=1).values
    assert model(x, times, pred_times=pred_times, t0=0.0).shape == (4, 9, 2)
    shared = torch.linspace(0, 5, 6, dtype=torch.float64)  # (T,) times shared by the batch
    assert model(x, shared, pred_times=torch.linspace(0, 9, 3)).shape == (4, 3, 2)
    terms = model.elbo(x, times, n_samples=3, return_terms=True)
    assert terms.loss.shape == () and terms.nll.shape == terms.kl.shape == (4,)


def test_decoder_per_sample_times_match_matrix_exponential():
    """Per-series t0 and save times (some repeated, as padding) against z(t) = exp(A (t - t0)) z0."""
    a = torch.tensor([[-0.1, 1.3], [-1.3, -0.2]], dtype=torch.float64)
    model = LatentODE(2, 2, func=Linear(a.clone()), readout=nn.Identity(), **TIGHT).double()
    z0 = torch.randn(3, 2, dtype=torch.float64)
    t0 = torch.tensor([0.0, -1.0, 0.5], dtype=torch.float64)
    times = torch.tensor([[0.0, 0.7, 3.1, 3.1], [-0.5, 0.2, 0.9, 6.0], [0.5, 0.5, 2.0, 2.0]], dtype=torch.float64)
    z = model.decode(z0, times, t0)
    expected = torch.linalg.matrix_exp(a * (times - t0[:, None])[..., None, None]) @ z0[:, None, :, None]
    torch.testing.assert_close(z, expected.squeeze(-1), rtol=1e-9, atol=1e-10)


def test_decoder_batch_invariance():
    """Series i decoded in a batch (with other series' own times) equals series i decoded alone."""
    model = tiny_model(latent=3)
    z0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    times = torch.sort(torch.rand(4, 5, dtype=torch.float64) * 8, dim=1).values
    times[1, 3:] = times[1, 2]  # padded series
    t0 = torch.tensor([0.0, -0.5, 0.0, 0.3], dtype=torch.float64).minimum(times[:, 0])
    out = model.decode(z0, times, t0)
    for i in range(4):
        alone = model.decode(z0[i : i + 1], times[i : i + 1], t0[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-12, atol=1e-12)
    # ... and series 0's output depends on no other series' z0.
    (grad,) = torch.autograd.grad(out[0].sum(), z0)
    assert (grad[1:] == 0).all() and (grad[0] != 0).any()


def test_encoder_batch_invariance():
    model = tiny_model(latent=2)
    times, x = series(4, 6)
    times, x, mask = pad(times, x, torch.ones(4, 6), keep=[6, 3, 5, 1])
    mu, std = model.encode(x, times, mask, t0=0.0)
    for i, k in enumerate([6, 3, 5, 1]):
        mu_i, std_i = model.encode(x[i : i + 1, :k], times[i : i + 1, :k], t0=0.0)
        torch.testing.assert_close(mu[i : i + 1], mu_i, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(std[i : i + 1], std_i, rtol=1e-12, atol=1e-12)


def manual_gru(gru, x, mask, times, t0, propagate):
    """The ODE-RNN by hand: reversed loop over observations; propagate(h, b, dt) moves h by dt (< 0)."""
    batch, n, _ = x.shape
    hs = []
    for b in range(batch):
        h = torch.zeros(1, gru.hidden_size, dtype=x.dtype)
        for i in reversed(range(n)):
            if i < n - 1:
                h = propagate(h, times[b, i] - times[b, i + 1])
            m = mask[b, i].to(x.dtype)
            if m.any():
                h = gru(torch.cat([torch.where(m > 0, x[b, i], 0.0), m])[None], h)
        hs.append(propagate(h, t0[b] - times[b, 0]))
    return torch.cat(hs)


def test_odernn_with_zero_dynamics_is_a_gru():
    torch.manual_seed(1)
    enc = ODERNN(2, 4, 2, ode_hidden=8).double()
    last = enc.func.net[-1]
    nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
    times, x = series(3, 5, dim=2)
    mask = torch.ones(3, 5, 2)
    mask[0, 1] = 0  # a missing observation
    mask[1, 2, 0] = 0  # a missing feature
    x = torch.where(mask > 0, x, torch.nan)
    h = enc.hidden(x, times, mask, t0=-1.0)
    gru = nn.GRUCell(4, 4).double()
    gru.load_state_dict(enc.gru.state_dict())
    t0 = torch.full((3,), -1.0, dtype=torch.float64)
    expected = manual_gru(gru, x, mask.bool(), times, t0, lambda h, dt: h)
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(h, torch.zeros_like(h))


def test_odernn_evolves_backwards_between_observations():
    """With dh/dt = A h the state moves by exp(A dt), dt < 0, between observations and back to t0."""
    a = torch.tensor([[0.0, 0.8, 0.0], [-0.8, -0.3, 0.1], [0.2, 0.0, -0.5]], dtype=torch.float64)
    enc = ODERNN(1, 3, 2, func=Linear(a.clone()), **TIGHT).double()
    times, x = series(2, 4)
    mask = torch.ones(2, 4, 1, dtype=torch.bool)
    t0 = torch.tensor([-0.5, 0.0], dtype=torch.float64)
    h = enc.hidden(x, times, t0=t0)
    expected = manual_gru(enc.gru, x, mask, times, t0, lambda h, dt: h @ torch.linalg.matrix_exp(a * dt).T)
    torch.testing.assert_close(h, expected, rtol=1e-9, atol=1e-10)


def test_elbo_by_hand():
    """KL against the closed form from the encoder's (mu, std); the likelihood against the same samples."""
    model = tiny_model(latent=2)
    times, x = series(3, 6, t_max=10.0)
    context = times < 5  # the encoder sees [0, 5); the likelihood scores the whole series
    ctx_times = torch.where(context, times, times.masked_fill(~context, -1).amax(1, keepdim=True))
    target_mask = torch.ones(3, 6)
    target_mask[2, 4] = 0
    terms = model.elbo(
        x, ctx_times, context, t0=0.0, target_x=x, target_times=times, target_mask=target_mask, n_samples=2,
        generator=torch.Generator().manual_seed(5), return_terms=True,
    )  # fmt: skip
    mu, std = model.encode(x, ctx_times, context, t0=0.0)
    kl = 0.5 * (mu**2 + std**2 - 1 - torch.log(std**2)).sum(1)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gaussian_kl(mu, std), kl, rtol=1e-12, atol=1e-12)
    eps = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    nll = torch.zeros(3, dtype=torch.float64)
    for k in range(2):
        pred = model.decode(mu + std * eps[k], times, 0.0)[..., 0]
        sd = float(model.obs_std)  # 0.3 rounded to the float32 it was created in
        logp = -0.5 * ((x[..., 0] - pred) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)
        nll -= (logp * target_mask).sum(1) / 2
    torch.testing.assert_close(terms.nll, nll, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms.loss, (nll + kl).mean(), rtol=1e-10, atol=1e-10)


def test_elbo_gradient_matches_finite_differences():
    # Fixed-step RK4 everywhere: the loss is then a smooth function of the parameters (no step-size choices),
    # so central differences match the backpropagated gradient to O(h^2).
    rk4 = dict(solver="rk4", dt0=0.3)
    model = tiny_model(enc=rk4, dec=rk4)
    times, x = series(2, 4)
    mask = torch.ones(2, 4)
    mask[1, 3] = 0

    def loss():
        return model.elbo(x, times, mask, t0=0.0, n_samples=2, generator=torch.Generator().manual_seed(3))

    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(), params)
    g = torch.Generator().manual_seed(0)
    # one random direction per parameter tensor (every tensor's gradient is checked) and one through all
    directions = [
        [torch.randn(q.shape, generator=g, dtype=q.dtype) if q is p else torch.zeros_like(q) for q in params]
        for p in params
    ]
    directions.append([torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params])
    h = 1e-5
    with torch.no_grad():
        for v in directions:
            for p, d in zip(params, v):
                p.add_(h * d)
            up = loss()
            for p, d in zip(params, v):
                p.sub_(2 * h * d)
            down = loss()
            for p, d in zip(params, v):
                p.add_(h * d)
            fd = (up - down) / (2 * h)
            ad = sum((gr * d).sum() for gr, d in zip(grads, v))
            assert torch.isfinite(ad)
            assert abs(fd - ad) <= 1e-6 * max(1.0, abs(ad)), (fd, ad)


def test_adam_reduces_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    times = torch.sort(torch.rand(8, 10, generator=g) * 4, dim=1).values
    freq = 1 + torch.rand(8, 1, generator=g)
    x = torch.sin(freq * times + 6 * torch.rand(8, 1, generator=g))[..., None]
    model = LatentODE(1, 3, ode_hidden=16, encoder=ODERNN(1, 8, 3, ode_hidden=16, solver="rk4", dt0=0.5))

    def loss():
        return model.elbo(x, times, t0=0.0, generator=torch.Generator().manual_seed(1))

    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        before = float(loss())
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.6 * before, (before, after)


def test_masked_observations_do_not_change_the_loss():
    model = tiny_model(latent=2, obs=2)
    times, x = series(3, 6, dim=2, t_max=10.0)
    mask = torch.ones(3, 6, 2)
    mask[0, 2] = 0  # a whole observation missing
    mask[1, 4, 1] = 0  # one feature missing
    x = x.requires_grad_()

    def terms(values):
        gen = torch.Generator().manual_seed(2)
        return model.elbo(values, times, mask, t0=0.0, n_samples=2, generator=gen, return_terms=True)

    reference = terms(x)
    garbage = torch.where(mask > 0, x, torch.tensor([torch.nan, 1e6], dtype=torch.float64))
    changed = terms(garbage)
    torch.testing.assert_close(changed.loss, reference.loss, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(changed.loss, x)
    assert torch.isfinite(grad).all() and (grad[mask == 0] == 0).all() and (grad[mask > 0] != 0).all()

    # Padding a series with repeated times and mask 0 changes none of its terms.
    times1, x1 = series(2, 7, dim=2)
    times_p, x_p, mask_p = pad(times1, x1, torch.ones(2, 7), keep=[7, 4])
    padded = model.elbo(x_p, times_p, mask_p, t0=0.0, generator=torch.Generator().manual_seed(4), return_terms=True)
    # the generator draws (1, B, L): series 1 of the padded batch gets the second draw; redraw to compare
    eps = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mu, std = model.encode(x1[1:, :4], times1[1:, :4], t0=0.0)
    pred = model.decode(mu + std * eps[0, 1:], times1[1:, :4], 0.0)
    nll = -(torch.distributions.Normal(pred, model.obs_std).log_prob(x1[1:, :4])).sum()
    torch.testing.assert_close(padded.nll[1], nll, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(padded.kl[1:], gaussian_kl(mu, std), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(times=torch.tensor([[0.0, 2.0, 1.0]])), "times must be non-decreasing in every series; series 0"),
        (dict(t0=0.5), "t0 must not be later than a series' first time: series 0 has t0 = 0.5"),
        (dict(mask=torch.ones(1, 2)), "mask must have shape (B, T) = (1, 3) (whole observations) or (B, T, D)"),
        (dict(times=torch.tensor([[0.0, 1.0, torch.nan]])), "times must be finite"),
    ],
)
def test_bad_input(kwargs, message):
    model = tiny_model()
    args = dict(x=torch.zeros(1, 3, 1, dtype=torch.float64), times=torch.tensor([[0.1, 0.2, 0.3]]), mask=None, t0=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=None) as info:
        model.elbo(args["x"], args["times"], args["mask"], t0=args["t0"])
    assert message in str(info.value)
