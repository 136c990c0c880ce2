"""Level-3 tests: batch invariance of per-sample stepping, zero cross-sample gradients, and joint mode.

The problem is a forced Van der Pol oscillator ``x' = v, v' = μ(1 − x²)v − x + 0.3 cos t`` with μ = 0.2, 2
and 8 (passed per sample through ``args``) and different initial states: the samples need 2–5× different
numbers of steps and reject different steps, so any coupling through the batch (a shared step size, a
shared accept decision, a shared error norm) would show up in the results or the step counts. The forcing
makes ``f`` depend on ``t``, so the per-sample times are checked as well. (The batched and single results are
in fact bitwise identical; the tests allow 1e-12.)
"""

from __future__ import annotations

import pytest
import torch

import dxdt

F64 = torch.float64
ADAPTIVE = ["heun", "bosh3", "dopri5", "tsit5", "dopri8", "vern7"]
# Tolerances giving each method a few dozen to a few hundred steps per sample.
RTOL = {"heun": 1e-3, "bosh3": 1e-5, "dopri5": 1e-6, "tsit5": 1e-6, "dopri8": 1e-7, "vern7": 1e-7}
MU = torch.tensor([[0.2], [2.0], [8.0]], dtype=F64)
Y0 = torch.tensor([[2.0, 0.0], [1.0, -0.5], [-1.5, 1.0]], dtype=F64)
T1 = 4.0
B = Y0.shape[0]
SHARED_TS = torch.tensor([0.3, 1.1, 2.0, 2.9, 4.0], dtype=F64)
PER_SAMPLE_TS = torch.tensor([[0.5, 1.0, 2.5, 3.7], [0.1, 2.2, 2.3, 4.0], [1.5, 1.6, 3.0, 3.5]], dtype=F64)
STAT_FIELDS = ("n_steps", "n_accepted", "n_rejected", "n_f_evals")


def forced_vdp(t, y, mu):
    """``t``: ``(B, 1)`` per sample, or 0-d in joint mode."""
    x, v = y[..., 0], y[..., 1]
    t = t[..., 0] if t.ndim else t
    return torch.stack([v, mu[..., 0] * (1 - x * x) * v - x + 0.3 * torch.cos(t)], dim=-1)


def _solve(method, y0, mu, saveat=None, t1=T1, **kwargs):
    tol = RTOL[method]
    return dxdt.solve(forced_vdp, y0, 0.0, t1, args=mu, solver=method, rtol=tol, atol=tol, saveat=saveat, **kwargs)


def _stats(sol: dxdt.Solution) -> dict[str, list[int]]:
    return {k: getattr(sol.stats, k).tolist() for k in STAT_FIELDS}


SAVE_MODES = ["t1", "t1_per_sample", "shared_ts", "per_sample_ts"]


def _save_args(mode: str, i: int | None):
    """(saveat, t1) for the whole batch (``i is None``) or for sample ``i`` alone."""
    one = slice(None) if i is None else slice(i, i + 1)
    if mode == "t1":
        return None, T1
    if mode == "t1_per_sample":  # one interval per sample
        t1 = torch.tensor([4.0, 3.0, 2.5], dtype=F64)
        return None, t1[one]
    if mode == "shared_ts":
        return SHARED_TS, T1
    return (PER_SAMPLE_TS if i is None else PER_SAMPLE_TS[i]), T1


@pytest.mark.parametrize("mode", SAVE_MODES)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_batched_equals_single(method, mode):
    saveat, t1 = _save_args(mode, None)
    batched = _solve(method, Y0, MU, saveat, t1)
    steps = batched.stats.n_steps.tolist()
    assert len(set(steps)) == B, f"the samples should need different numbers of steps: {steps}"
    assert batched.stats.n_iterations == max(steps)
    for i in range(B):
        saveat_i, t1_i = _save_args(mode, i)
        single = _solve(method, Y0[i : i + 1], MU[i : i + 1], saveat_i, t1_i)
        torch.testing.assert_close(batched.ys[i : i + 1], single.ys, rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.y_final[i : i + 1], single.y_final, rtol=0, atol=1e-12)
        assert batched.t_final[i].item() == single.t_final.item()
        ts_i = batched.ts if batched.ts.ndim == 1 else batched.ts[i]
        assert torch.equal(ts_i.reshape(-1), single.ts.reshape(-1))
        for k in STAT_FIELDS:
            assert getattr(batched.stats, k)[i].item() == getattr(single.stats, k).item(), (k, i)


@pytest.mark.parametrize("saveat", [None, SHARED_TS], ids=["t1", "shared_ts"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_no_cross_sample_gradients(method, saveat):
    """The loss of sample i has exactly zero gradient with respect to y0[j] and args[j], j ≠ i."""
    y0 = Y0.clone().requires_grad_(True)
    mu = MU.clone().requires_grad_(True)
    sol = _solve(method, y0, mu, saveat)
    for i in range(B):
        g_y0, g_mu = torch.autograd.grad(sol.ys[i].square().sum(), (y0, mu), retain_graph=True)
        others = [j for j in range(B) if j != i]
        assert torch.all(g_y0[others] == 0) and torch.all(g_mu[others] == 0), (i, g_y0, g_mu)
        # ... while the sample's own gradient is there (and finite).
        assert torch.isfinite(g_y0[i]).all() and g_y0[i].abs().sum() > 0
        assert torch.isfinite(g_mu[i]).all() and g_mu[i].abs().sum() > 0


def _flat_field(t, y, mu):
    """The batch as one system of ``B·2`` equations with a 0-d time: what joint mode must integrate."""
    return forced_vdp(t.reshape(()), y.reshape(B, 2), mu).reshape(1, -1)


@pytest.mark.parametrize("saveat", [None, SHARED_TS], ids=["t1", "shared_ts"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_joint_equals_flattened_system(method, saveat):
    joint = _solve(method, Y0, MU, saveat, batch_mode="joint")
    flat = dxdt.solve(
        _flat_field,
        Y0.reshape(1, -1),
        0.0,
        T1,
        args=MU,
        solver=method,
        rtol=RTOL[method],
        atol=RTOL[method],
        saveat=saveat,
    )
    assert joint.ys.shape == (B, flat.ys.shape[1], 2)
    torch.testing.assert_close(joint.ys, flat.ys.reshape(-1, B, 2).transpose(0, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(joint.y_final, flat.y_final.reshape(B, 2), rtol=0, atol=1e-12)
    for k in STAT_FIELDS:
        values = getattr(joint.stats, k).tolist()
        assert values == [getattr(flat.stats, k).item()] * B, (k, values)
    assert joint.t_final.tolist() == [T1] * B


@pytest.mark.parametrize("method", ADAPTIVE)
def test_joint_differs_from_per_sample(method):
    """Per-sample stepping really is per sample: its step counts differ between samples, joint mode's do not."""
    joint = _solve(method, Y0, MU, batch_mode="joint")
    per_sample = _solve(method, Y0, MU)
    joint_steps, steps = joint.stats.n_steps.tolist(), per_sample.stats.n_steps.tolist()
    assert len(set(joint_steps)) == 1 and len(set(steps)) == B
    assert joint_steps != steps
    # Both are solutions of the same problem, to about the tolerance (measured: 0.01–0.4 × rtol).
    torch.testing.assert_close(joint.ys, per_sample.ys, rtol=0, atol=10 * RTOL[method])
