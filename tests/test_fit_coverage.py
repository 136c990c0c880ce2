"""Coverage of the 95% intervals on synthetic SIR data, for Gaussian, Poisson and negative-binomial noise.

Each replicate draws a data set from the true model with its own seed, fits it, and checks whether each true
parameter lies inside its interval. If the intervals have their nominal 95% coverage, the number of hits in
``n`` replicates is Binomial(n, 0.95):

* default run, 20 replicates, pass at >= 17 hits per parameter: a procedure with true coverage 95% fails this
  with probability P(X <= 16) = 1.6%, one whose coverage is only 80% passes with probability 41% (this run is
  a smoke test of calibration; the seeds are fixed, so it is deterministic);
* slow run, 240 replicates, pass at >= 90% (216 hits): P(X < 216) = 0.05% at true coverage 95% (3% at 93%),
  and an 85%-coverage procedure passes with probability 1.5%.

The replicates of a noise model are fitted in one batch (``fit_many``), and each is checked against a fit of its
own where noted. The solver tolerance is loose (1e-5): its error, ~1e-5 relative, is 1000 times smaller than the
standard errors.
"""

from __future__ import annotations

import pytest
import torch

import dxdt
from dxdt.fit import NegativeBinomial, fit, fit_many
from dxdt.models import SIR

F64 = torch.float64
TRUE = {"beta": 1.6, "gamma": 0.5}
N, I0, DAYS = 1000.0, 3.0, 30


def _mean() -> tuple[torch.Tensor, torch.Tensor]:
    model = SIR(**TRUE)
    ts = torch.arange(1.0, DAYS + 1, dtype=F64)
    with torch.no_grad():
        mu = dxdt.solve(
            model, model.initial_state(population=N, I=I0), 0.0, float(DAYS), saveat=ts, rtol=1e-10, atol=1e-10
        ).ys[0, :, 1]
    return ts, mu


def _data(noise: str, n: int, mu: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000)
    mu = mu.expand(n, -1)
    if noise == "gaussian":
        return mu + 15.0 * torch.randn(mu.shape, generator=g, dtype=F64)
    if noise == "poisson":
        return torch.poisson(mu, generator=g)
    return NegativeBinomial().sample(mu, torch.tensor(8.0, dtype=F64), torch.tensor(1.0), g)


def _coverage(noise: str, n: int) -> dict[str, int]:
    """Hits per parameter over ``n`` replicates, all fitted in one batch (``fit_many``)."""
    ts, mu = _mean()
    results = fit_many(
        SIR(beta=1.2, gamma=0.4),
        ts,
        _data(noise, n, mu),
        observe="I",
        population=N,
        y0={"I": I0},
        noise=noise,
        rtol=1e-5,
        atol=1e-5,
    )
    assert all(r.converged for r in results), [r.message for r in results if not r.converged]
    return {
        name: sum(r.params[name].lower < true < r.params[name].upper for r in results) for name, true in TRUE.items()
    }


@pytest.mark.parametrize("noise", ["gaussian", "poisson", "negbin"])
def test_interval_coverage(noise):
    hits = _coverage(noise, 20)
    assert all(h >= 17 for h in hits.values()), hits


def test_batched_fits_equal_single_fits():
    ts, mu = _mean()
    data = _data("negbin", 3, mu)
    kw = dict(observe="I", population=N, y0={"I": I0}, noise="negbin", rtol=1e-5, atol=1e-5)
    many = fit_many(SIR(beta=1.2, gamma=0.4), ts, data, **kw)
    for r, y in zip(many, data):
        one = fit(SIR(beta=1.2, gamma=0.4), ts, y, **kw)
        for name in TRUE:
            assert r.params[name].value == pytest.approx(one.params[name].value, rel=1e-6)
            assert r.params[name].upper == pytest.approx(one.params[name].upper, rel=1e-4)
        assert r.noise_params["k"] == pytest.approx(one.noise_params["k"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["gaussian", "poisson", "negbin"])
def test_interval_coverage_many_replicates(noise):
    n = 240
    hits = _coverage(noise, n)
    assert all(h >= 0.9 * n for h in hits.values()), hits
