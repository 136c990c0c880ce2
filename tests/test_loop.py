"""Level-2 tests of the time-stepping loop (DESIGN §4): its bookkeeping, checked exactly.

Most tests drive the loop with :class:`Scripted`, a stub solver whose step is exact for a constant vector
field (``y(t) = y0 + c (t - t0)``) and whose accept/reject decisions follow a per-sample script, so every
count, time and state the loop reports is known in advance. The stub also returns deliberately wrong
candidates where the loop must ignore them (idle samples, rejected steps), so masking mistakes show up as
wrong values rather than passing silently.
"""

from __future__ import annotations

import math

import pytest
import torch

import dxdt
from dxdt import SaveAt, Status
from dxdt.controllers import AbstractController, ConstantStepController
from dxdt.solvers import AbstractSolver, StepResult

F64 = torch.float64
# Added to candidates the loop must discard (idle samples, rejected steps): large but finite, so a mistake
# shows up as a wrong value (0 * JUNK is still 0 where an interpolant legitimately multiplies by θ = 0).
JUNK = 1000.0
# The stub's interpolant is off by BUMP·θ(1 − θ) inside a step: exact only at the step's two ends.
BUMP = 0.125


class Scripted(AbstractSolver):
    """Euler step (exact for a constant f) with scripted error ratios.

    Args:
        errors: per sample, the error ratio of its k-th attempted step (the last entry repeats); ``<= 1``
            accepts.
        order, dense_order: a ``dense_order`` well below ``order`` makes the loop clip steps to save times.

    Unlike a real solver the stub keeps state (attempt counters and a log of every call), which is what lets
    the script be per sample and the test watch the loop from inside.
    """

    error_order = 1
    adaptive = True
    evals_per_step = 1

    def __init__(self, errors: list[list[float]], order: int = 1, dense_order: int = 1):
        n = max(len(row) for row in errors)
        self.errors = torch.tensor([row + row[-1:] * (n - len(row)) for row in errors], dtype=F64)
        self.order = order
        self.dense_order = dense_order
        self.attempts = torch.zeros(len(errors), dtype=torch.long)
        self.log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (t, dt, y) of every call

    def step(self, term, t, dt, y, f0, state=None, rtol=None, atol=None):
        self.log.append((t.clone(), dt.clone(), y.detach().clone()))
        active = dt != 0
        col = self.attempts.clamp_max(self.errors.shape[1] - 1)
        err = self.errors.gather(1, col[:, None]).squeeze(1)
        self.attempts = self.attempts + active
        shape = (-1,) + (1,) * (y.ndim - 1)
        y1 = y + dt.to(y.dtype).reshape(shape) * f0
        # Idle samples and steps the script rejects get junk: the loop must never keep it.
        wrong = (~active | (err > 1)).reshape(shape)
        y1 = torch.where(wrong, y1 + JUNK, y1)
        f1 = term(t + dt, y1)
        # Idle samples report a NaN error: the loop must not count it against them.
        err = torch.where(active, err, torch.nan)
        return StepResult(y1=y1, f1=f1, y_err=err, y_err_low=None, ks=[f0, f1], f0=f0)

    def error_ratio(self, step, y0, rtol, atol):
        return step.y_err

    def dense_coefficients(self, step, y0, dt):
        # y0 + θ (y1 - y0) + BUMP θ (1 - θ), in powers of θ.
        return torch.stack([y0, step.y1 - y0 + BUMP, torch.full_like(y0, -BUMP)], dim=-1)


class Halving(AbstractController):
    """Keeps dt after an accepted step and halves it after a rejected one."""

    def propose(self, dt, err, err_prev, accept, error_order):
        return torch.where(accept, dt, dt / 2), err_prev


class ConstantField:
    """``f(t, y) = c`` per sample (so ``y(t) = y0 + c (t - t0)``), counting its calls."""

    def __init__(self, c: list[float]):
        self.c = torch.tensor(c, dtype=F64)[:, None]
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return self.c.expand_as(y).clone()

    def exact(self, y0, t0, t):
        return y0 + self.c * (torch.as_tensor(t, dtype=F64) - torch.as_tensor(t0, dtype=F64)).reshape(-1, 1)


class HoldStep(ConstantStepController):
    """Constant dt, but the scripted error test decides acceptance (a rejected step is retried as it was)."""

    accepts_every_step = False


def y0_of(batch: int) -> torch.Tensor:
    return torch.arange(1.0, batch + 1, dtype=F64)[:, None]


def stub_solve(errors, c, t0, t1, *, dt0=0.25, controller=None, **kwargs):
    solver = Scripted(errors, **{k: kwargs.pop(k) for k in ("order", "dense_order") if k in kwargs})
    f = ConstantField(c)
    sol = dxdt.solve(
        f,
        y0_of(len(c)),
        t0,
        t1,
        solver=solver,
        dt0=dt0,
        controller=controller or HoldStep(),
        throw=False,
        **kwargs,
    )
    return sol, solver, f


def as_list(x: torch.Tensor) -> list:
    return x.tolist()


# --- per-sample status and counters ---------------------------------------------------------------------


def test_per_sample_max_steps_and_counters():
    # dt = 0.25: sample 0 needs 2 steps, 1 needs 4 (exactly max_steps: still a success), 2 needs 4 plus one
    # rejection (runs out), 3 needs 8 (runs out at t = 1).
    t1 = torch.tensor([0.5, 1.0, 1.0, 2.0], dtype=F64)
    errors = [[0.5], [1.0], [2.0, 0.0], [0.0]]  # an error ratio of exactly 1 is accepted
    sol, _, f = stub_solve(errors, [1.0, -2.0, 3.0, 0.5], 0.0, t1, max_steps=4)
    assert as_list(sol.status) == [Status.SUCCESS, Status.SUCCESS, Status.MAX_STEPS, Status.MAX_STEPS]
    assert as_list(sol.stats.n_steps) == [2, 4, 4, 4]
    assert as_list(sol.stats.n_accepted) == [2, 4, 3, 4]
    assert as_list(sol.stats.n_rejected) == [0, 0, 1, 0]
    # dt0 given: one evaluation at t0, then one per attempted step of that sample only.
    assert as_list(sol.stats.n_f_evals) == [3, 5, 5, 5]
    assert sol.stats.n_iterations == 4
    assert as_list(sol.t_final) == [0.5, 1.0, 0.75, 1.0]
    torch.testing.assert_close(sol.y_final, f.exact(y0_of(4), 0.0, sol.t_final), rtol=0, atol=0)
    # Default saving (t1): failed samples hold NaN.
    assert torch.equal(sol.ys[:2, 0], f.exact(y0_of(4), 0.0, t1)[:2])
    assert torch.isnan(sol.ys[2:]).all()


def test_loop_is_bounded_when_every_step_is_rejected():
    sol, solver, _ = stub_solve([[2.0], [2.0]], [1.0, 1.0], 0.0, 1.0, max_steps=7)
    assert as_list(sol.status) == [Status.MAX_STEPS] * 2
    assert as_list(sol.stats.n_steps) == [7, 7] and as_list(sol.stats.n_rejected) == [7, 7]
    assert sol.stats.n_iterations == 7 and len(solver.log) == 7
    assert as_list(sol.t_final) == [0.0, 0.0]
    assert torch.equal(sol.y_final, y0_of(2))


def test_nonfinite_error_ends_only_that_sample():
    # A NaN error ratio for sample 1 on every attempt; a constant step never gets past it.
    sol, _, _ = stub_solve([[0.0], [math.nan]], [1.0, 1.0], 0.0, 1.0, max_steps=100)
    assert as_list(sol.status) == [Status.SUCCESS, Status.NONFINITE]
    # NONFINITE after MAX_NONFINITE_RETRIES consecutive non-finite attempts, nothing accepted.
    from dxdt._loop import MAX_NONFINITE_RETRIES

    assert as_list(sol.stats.n_steps) == [4, MAX_NONFINITE_RETRIES]
    assert as_list(sol.stats.n_accepted) == [4, 0]
    assert sol.t_final[1] == 0.0


def test_dt_underflow_with_dt_min():
    # Sample 0 always rejects: dt 1 -> 0.5 -> 0.25 -> 0.125 -> 0.0625 < dt_min after 4 attempts.
    sol, _, f = stub_solve([[2.0], [0.0]], [1.0, 1.0], 0.0, 4.0, dt0=1.0, controller=Halving(), dt_min=0.1)
    assert as_list(sol.status) == [Status.DT_UNDERFLOW, Status.SUCCESS]
    assert as_list(sol.stats.n_steps) == [4, 4]
    assert as_list(sol.stats.n_rejected) == [4, 0]
    assert as_list(sol.t_final) == [0.0, 4.0]
    assert torch.equal(sol.y_final[1], f.exact(y0_of(2), 0.0, 4.0)[1])


def test_dt_underflow_at_a_singularity():
    # y' = y², y(0) = 1 blows up at t = 1: the step size collapses there.
    sol = dxdt.solve(lambda t, y: y**2, torch.ones(2, 1, dtype=F64), 0.0, 2.0, dt_min=1e-8, throw=False)
    assert as_list(sol.status) == [Status.DT_UNDERFLOW] * 2
    # The numerical blow-up lags the exact one slightly, so t_final may be just past 1.
    assert ((sol.t_final - 1.0).abs() < 1e-3).all() and (sol.y_final > 1e5).all()
    with pytest.raises(dxdt.SolveError, match=r"2 of 2 samples failed to reach t1:\n  2 × DT_UNDERFLOW"):
        dxdt.solve(lambda t, y: y**2, torch.ones(2, 1, dtype=F64), 0.0, 2.0, dt_min=1e-8)


# --- saving ---------------------------------------------------------------------------------------------


def test_rejected_steps_never_save():
    errors = [[0.0, 2.0, 0.0, 2.0, 2.0, 0.0], [0.0]]
    sol, _, f = stub_solve(errors, [1.0, -1.0], 0.0, torch.tensor([1.0, 0.5], dtype=F64), saveat=SaveAt(steps=True))
    assert as_list(sol.stats.n_rejected) == [3, 0]
    nan = math.nan
    expected_ts = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.5, nan, nan]], dtype=F64)
    torch.testing.assert_close(sol.ts, expected_ts, rtol=0, atol=0, equal_nan=True)
    expected_ys = y0_of(2) + f.c * expected_ts
    torch.testing.assert_close(sol.ys, expected_ys.unsqueeze(-1), rtol=0, atol=0, equal_nan=True)


def test_save_times_on_step_boundaries_give_step_ends():
    # Steps of 0.25 (not clipped: dense_order == order); sample 0 rejects the attempt right after t = 0.5.
    errors = [[0.0, 0.0, 3.0, 0.0], [0.0]]
    ts = torch.tensor([0.0, 0.25, 0.5, 0.625, 1.0], dtype=F64)
    sol, _, f = stub_solve(errors, [1.0, 2.0], 0.0, 1.0, saveat=ts)
    exact = (y0_of(2) + f.c * ts).unsqueeze(-1)
    on_boundary = [0, 1, 2, 4]
    assert torch.equal(sol.ys[:, on_boundary], exact[:, on_boundary])
    # Inside a step the (deliberately biased) interpolant of the accepted step 0.5 -> 0.75 is used.
    torch.testing.assert_close(sol.ys[:, 3], exact[:, 3] + BUMP / 4, rtol=0, atol=1e-15)


def test_clipped_steps_land_on_save_times():
    # Dense output much less accurate than the method: steps are cut to land on each save time, and the
    # step size then resumes.
    ts = torch.tensor([0.1, 0.3, 0.7], dtype=F64)
    sol, solver, f = stub_solve([[0.0], [0.0]], [1.0, -3.0], 0.0, 1.0, saveat=ts, order=4, dense_order=1)
    starts = torch.stack([t for t, _, _ in solver.log])[:, 0]
    torch.testing.assert_close(starts, torch.tensor([0.0, 0.1, 0.3, 0.55, 0.7, 0.95], dtype=F64), rtol=0, atol=1e-15)
    # Save times are step ends, so the biased interior of the interpolant never shows.
    exact = (y0_of(2) + f.c * ts).unsqueeze(-1)
    torch.testing.assert_close(sol.ys, exact, rtol=0, atol=1e-13)


def test_dopri8_steps_land_on_save_times():
    seen: list[torch.Tensor] = []

    def f(t, y):
        seen.append(t.detach().flatten().clone())
        return -y

    y0 = torch.ones(1, 1, dtype=F64)
    ts = torch.tensor([0.123, 0.456, 1.789, 2.5], dtype=F64)
    sol = dxdt.solve(f, y0, 0.0, 2.5, solver="dopri8", saveat=ts, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sol.ts.reshape(-1, 4)[0], ts, rtol=0, atol=0)
    times = torch.cat(seen)
    assert all((times - t).abs().min() < 1e-14 for t in ts)  # f is evaluated at each save time (a step end)
    # At step ends dopri8 is 8th-order accurate; cubic Hermite between its (large) steps would be ~1e-5 off.
    torch.testing.assert_close(sol.ys[0, :, 0], torch.exp(-ts), rtol=1e-9, atol=0)
    free = dxdt.solve(f, y0, 0.0, 2.5, solver="dopri8", saveat=SaveAt(steps=True), rtol=1e-10, atol=1e-12)
    assert sol.stats.n_accepted.item() > free.stats.n_accepted.item()  # the extra, clipped steps


# --- finished samples are frozen ------------------------------------------------------------------------


def test_finished_samples_are_frozen():
    # Sample 0 finishes after 2 steps; sample 1 keeps going for 8 (with rejections).
    errors = [[0.0], [0.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]]
    t1 = torch.tensor([0.5, 1.5], dtype=F64)
    sol, solver, f = stub_solve(errors, [1.0, 1.0], 0.0, t1)
    assert as_list(sol.status) == [Status.SUCCESS] * 2
    assert as_list(sol.stats.n_steps) == [2, 8]
    assert as_list(sol.stats.n_f_evals) == [3, 9]
    y_done = f.exact(y0_of(2), 0.0, t1)[0]
    for t, dt, y in solver.log[2:]:  # every iteration after sample 0 finished
        assert t[0] == 0.5 and dt[0] == 0.0 and torch.equal(y[0], y_done)
    assert torch.equal(sol.y_final, f.exact(y0_of(2), 0.0, t1))  # the junk of idle steps never leaked


def test_nonfinite_sample_mid_solve_does_not_disturb_the_others():
    # Sample 1's f turns NaN from the first time it is evaluated past t = 0.5, and stays NaN (sticky), so
    # shrinking the step cannot get around it.
    class Sticky:
        def __init__(self):
            self.broken = torch.zeros(3, 1, dtype=torch.bool)

        def __call__(self, t, y):
            self.broken |= (t > 0.5) & (torch.arange(3)[:, None] == 1)
            return torch.where(self.broken, torch.nan, -y * torch.tensor([[1.0], [2.0], [3.0]], dtype=F64))

    y0 = y0_of(3)
    sol = dxdt.solve(Sticky(), y0, 0.0, 1.0, solver="tsit5", throw=False, rtol=1e-8, atol=1e-10)
    assert as_list(sol.status) == [Status.SUCCESS, Status.NONFINITE, Status.SUCCESS]
    assert 0.0 < sol.t_final[1] <= 0.5
    torch.testing.assert_close(sol.ys[[0, 2], 0, 0], y0[[0, 2], 0] * torch.exp(-torch.tensor([1.0, 3.0], dtype=F64)))
    assert torch.isnan(sol.ys[1]).all()
    # The healthy samples took exactly the steps they take alone.
    alone = dxdt.solve(
        lambda t, y: -y * torch.tensor([[1.0], [3.0]], dtype=F64), y0[[0, 2]], 0.0, 1.0, rtol=1e-8, atol=1e-10
    )
    assert torch.equal(sol.stats.n_steps[[0, 2]], alone.stats.n_steps)
    torch.testing.assert_close(sol.ys[[0, 2]], alone.ys, rtol=1e-15, atol=0)

    with pytest.raises(dxdt.SolveError) as info:
        dxdt.solve(Sticky(), y0, 0.0, 1.0, solver="tsit5", rtol=1e-8, atol=1e-10)
    msg = str(info.value)
    assert msg.startswith("1 of 3 samples failed to reach t1:")
    assert "1 × NONFINITE (samples 1; sample 1 stopped at t = " in msg
    assert Status.NONFINITE.message in msg and "throw=False" in msg
    partial = info.value.solution
    assert as_list(partial.status) == as_list(sol.status)
    torch.testing.assert_close(partial.ys, sol.ys, equal_nan=True)


@pytest.mark.parametrize("solver", ["bosh3", "dopri8", "tsit5"])
def test_solve_error_carries_partial_solution_with_nan_for_unreached_times(solver):
    # Sample 0's fast decay needs > 60 steps (explicit stability limit), sample 1's fewer.
    def f(t, y):
        return -y * torch.tensor([[500.0], [1.0]], dtype=F64)

    ts = torch.linspace(0.0, 1.0, 5, dtype=F64)
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(
        dxdt.SolveError, match=r"^1 of 2 samples failed to reach t1:\n  1 × MAX_STEPS \(samples 0;"
    ) as info:
        dxdt.solve(f, y0, 0.0, 1.0, solver=solver, saveat=ts, max_steps=60)
    sol = info.value.solution
    assert as_list(sol.status) == [Status.MAX_STEPS, Status.SUCCESS]
    reached = ts <= sol.t_final[0]
    assert reached[0] and not reached[-1]
    assert torch.isnan(sol.ys[0, ~reached]).all() and torch.isfinite(sol.ys[0, reached]).all()
    torch.testing.assert_close(sol.ys[1, :, 0], torch.exp(-ts), rtol=1e-5, atol=0)
    # throw=False returns the same solution instead of raising.
    returned = dxdt.solve(f, y0, 0.0, 1.0, solver=solver, saveat=ts, max_steps=60, throw=False)
    torch.testing.assert_close(returned.ys, sol.ys, equal_nan=True)
    assert torch.equal(returned.status, sol.status)


def test_save_at_t0_after_a_nonfinite_first_attempt():
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y * math.nan if calls[0] in (2, 3) else -y  # only the first attempted step sees NaN

    sol = dxdt.solve(f, torch.ones(1, 1, dtype=F64), 0.0, 1.0, solver="bosh3", dt0=0.5, saveat=torch.tensor([0.0, 1.0]))
    assert sol.stats.n_rejected.item() >= 1
    torch.testing.assert_close(sol.ys[0, :, 0], torch.tensor([1.0, math.exp(-1)], dtype=F64), rtol=1e-5, atol=0)


# --- degenerate intervals and directions ----------------------------------------------------------------


def test_t0_equals_t1_for_some_samples():
    t0 = torch.tensor([2.0, 0.0, -1.0], dtype=F64)
    t1 = torch.tensor([2.0, 1.0, -1.0], dtype=F64)
    sol, _, _ = stub_solve([[0.0]] * 3, [1.0, 1.0, 1.0], t0, t1, saveat=SaveAt(steps=True))
    assert as_list(sol.status) == [Status.SUCCESS] * 3
    assert as_list(sol.stats.n_steps) == [0, 4, 0]
    assert as_list(sol.stats.n_f_evals) == [1, 5, 1]
    assert torch.equal(sol.ts[[0, 2], 0], t0[[0, 2]]) and torch.isnan(sol.ts[[0, 2], 1:]).all()
    assert torch.equal(sol.ys[[0, 2], 0], y0_of(3)[[0, 2]])
    assert torch.equal(sol.y_final[[0, 2]], y0_of(3)[[0, 2]])
    # Default saving (t1) of the same problem.
    sol, _, _ = stub_solve([[0.0]] * 3, [1.0, 1.0, 1.0], t0, t1)
    assert torch.equal(sol.ys[[0, 2], 0], y0_of(3)[[0, 2]])


@pytest.mark.parametrize("solver", ["tsit5", "dopri8", "rk4"])
@pytest.mark.parametrize("saveat", [None, "t0", "steps", "dense"])
def test_t0_equals_t1_for_all_samples(solver, saveat):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y

    y0 = y0_of(2)
    save = {None: None, "t0": torch.tensor([0.5]), "steps": SaveAt(steps=True), "dense": SaveAt(dense=True)}[saveat]
    sol = dxdt.solve(f, y0, 0.5, 0.5, solver=solver, saveat=save, dt0=0.1 if solver == "rk4" else None)
    assert as_list(sol.status) == [Status.SUCCESS] * 2
    assert as_list(sol.stats.n_steps) == [0, 0] and sol.stats.n_iterations == 0
    assert calls[0] <= 2  # the shape check, and the automatic initial step size
    assert torch.equal(sol.ys, y0.unsqueeze(1))
    assert torch.equal(sol.y_final, y0)
    if saveat == "dense":
        assert torch.equal(sol.evaluate(0.5), y0)


def test_mixed_directions_stub():
    t0 = torch.tensor([0.0, 1.0, 0.0, 3.0], dtype=F64)
    t1 = torch.tensor([1.0, 0.0, -0.5, 3.5], dtype=F64)
    errors = [[0.0], [2.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0]]
    sol, solver, f = stub_solve(errors, [1.0, 2.0, -1.0, 0.5], t0, t1, saveat=SaveAt(steps=True))
    assert as_list(sol.status) == [Status.SUCCESS] * 4
    assert as_list(sol.stats.n_accepted) == [4, 4, 2, 2]
    assert as_list(sol.stats.n_rejected) == [0, 1, 0, 0]  # sample 2's rejection was scripted after its end
    # The signed step the solver is given follows each sample's direction.
    assert as_list(solver.log[0][1]) == [0.25, -0.25, -0.25, 0.25]
    nan = math.nan
    expected_ts = torch.tensor(
        [
            [0.0, 0.25, 0.5, 0.75, 1.0],
            [1.0, 0.75, 0.5, 0.25, 0.0],
            [0.0, -0.25, -0.5, nan, nan],
            [3.0, 3.25, 3.5, nan, nan],
        ],
        dtype=F64,
    )
    torch.testing.assert_close(sol.ts, expected_ts, rtol=0, atol=0, equal_nan=True)
    expected_ys = (y0_of(4) + f.c * (expected_ts - t0[:, None])).unsqueeze(-1)
    torch.testing.assert_close(sol.ys, expected_ys, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("solver", ["bosh3", "dopri8"])
def test_mixed_directions_per_sample_save_times(solver):
    # y' = -k y with per-sample intervals, two of them backwards, and per-sample (B, T) save times.
    k = torch.tensor([[1.0], [0.5], [2.0]], dtype=F64)
    t0 = torch.tensor([0.0, 2.0, 1.0], dtype=F64)
    t1 = torch.tensor([2.0, 0.0, -1.0], dtype=F64)
    ts = torch.stack([torch.linspace(float(a), float(b), 6, dtype=F64) for a, b in zip(t0, t1)])
    y0 = y0_of(3)
    sol = dxdt.solve(lambda t, y: -k * y, y0, t0, t1, solver=solver, saveat=ts, rtol=1e-9, atol=1e-12)
    assert torch.equal(sol.ts, ts)
    exact = y0 * torch.exp(-k * (ts - t0[:, None]))
    torch.testing.assert_close(sol.ys[..., 0], exact, rtol=1e-7, atol=0)
    torch.testing.assert_close(sol.t_final, t1, rtol=0, atol=0)


# --- fixed-step methods ---------------------------------------------------------------------------------


def _rk4_factor(z: float) -> float:
    """RK4's stability function: one step of y' = λy multiplies y by R(λh)."""
    return 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24


@pytest.mark.parametrize("dt0", [0.1, 0.25, 0.3, 0.7, 1 / 3, 2.0])
@pytest.mark.parametrize("backwards", [False, True])
def test_fixed_step_count_and_landing(dt0, backwards):
    lam = -0.8
    t0, t1 = (1.0, 0.0) if backwards else (0.0, 1.0)
    y0 = y0_of(2)
    sol = dxdt.solve(lambda t, y: lam * y, y0, t0, t1, solver="rk4", dt0=dt0)
    n = math.ceil(round(1.0 / dt0, 9))
    assert as_list(sol.stats.n_steps) == [n, n] and as_list(sol.stats.n_rejected) == [0, 0]
    assert as_list(sol.t_final) == [t1, t1]  # exactly, despite the rounding of n * dt0
    assert as_list(sol.stats.n_f_evals) == [1 + 4 * n] * 2  # RK4 is not FSAL: 3 stages + f(t1, y1)
    h_last = 1.0 - (n - 1) * dt0
    sign = -1.0 if backwards else 1.0
    factor = _rk4_factor(sign * lam * dt0) ** (n - 1) * _rk4_factor(sign * lam * h_last)
    torch.testing.assert_close(sol.ys[:, 0], y0 * factor, rtol=1e-13, atol=0)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "ralston", "rk4"])
def test_fixed_step_methods_per_sample_intervals(solver):
    t1 = torch.tensor([0.35, 1.0, -0.5], dtype=F64)
    sol = dxdt.solve(
        lambda t, y: torch.cos(t) * y, y0_of(3), 0.0, t1, solver=solver, dt0=0.1, saveat=SaveAt(steps=True)
    )
    expected_n = [4, 10, 5]
    assert as_list(sol.stats.n_steps) == expected_n
    for b, n in enumerate(expected_n):
        assert sol.ts[b, n] == t1[b] and torch.isnan(sol.ts[b, n + 1 :]).all()
        torch.testing.assert_close(sol.ts[b, :n], torch.arange(n, dtype=F64) * 0.1 * t1[b].sign(), rtol=0, atol=1e-15)


def test_fixed_step_save_times_on_the_grid_equal_step_values():
    y0 = y0_of(2)
    steps = dxdt.solve(lambda t, y: -y + torch.sin(t), y0, 0.0, 1.0, solver="rk4", dt0=0.125, saveat=SaveAt(steps=True))
    ts = steps.ts[0, [2, 5, 8]]
    at = dxdt.solve(lambda t, y: -y + torch.sin(t), y0, 0.0, 1.0, solver="rk4", dt0=0.125, saveat=ts)
    assert as_list(at.stats.n_steps) == [8, 8]  # save times on the grid do not add steps
    torch.testing.assert_close(at.ys, steps.ys[:, [2, 5, 8]], rtol=1e-15, atol=0)


def test_save_times_given_as_a_list_keep_float64():
    sol = dxdt.solve(lambda t, y: -y, y0_of(1), 0.0, 1.0, solver="dopri8", saveat=[0.1, 0.7])
    assert sol.ts.reshape(-1).tolist() == [0.1, 0.7]


def test_shared_and_per_sample_save_times_keep_their_shape():
    ts = torch.tensor([0.5, 1.0], dtype=F64)
    assert dxdt.solve(lambda t, y: -y, y0_of(3), 0.0, 1.0, saveat=ts).ts.shape == (2,)
    per_sample = torch.stack([ts, ts - 0.25, ts * 0.5])
    assert torch.equal(dxdt.solve(lambda t, y: -y, y0_of(3), 0.0, 1.0, saveat=per_sample).ts, per_sample)


@pytest.mark.parametrize("batch_mode", ["per_sample", "joint"])
def test_stepping_past_t1_ends_at_the_crossing_steps_interpolant(batch_mode):
    """step_past_t1 without a trajectory: the step that crosses t1 ends the sample at t1, its state read off
    that step's dense output inside the loop: the same, in value and gradient, as interpolating the recorded
    steps afterwards (what a save time at t1 does)."""
    k = torch.tensor([[1.0], [4.0], [9.0]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64).repeat(3, 1)
    t1 = torch.tensor([2.0, 2.5, 3.0], dtype=F64) if batch_mode == "per_sample" else 3.0

    def f(t, y):
        return torch.stack([y[:, 1], -k[:, 0] * y[:, 0] - 0.1 * y[:, 1] * y[:, 0] ** 2], dim=1)

    at_t1 = torch.as_tensor(t1, dtype=F64).reshape(-1, 1) if batch_mode == "per_sample" else torch.tensor([t1])
    results = []
    for saveat in (None, at_t1):
        sol = dxdt.solve(f, y0, 0.0, t1, rtol=1e-6, atol=1e-8, step_past_t1=True, saveat=saveat, batch_mode=batch_mode)
        (grad,) = torch.autograd.grad(sol.ys[:, -1].square().sum(), k)
        results.append((sol, grad))
    (inside, g_inside), (recorded, g_recorded) = results
    assert torch.equal(inside.stats.n_steps, recorded.stats.n_steps)
    torch.testing.assert_close(inside.t_final, torch.as_tensor(t1, dtype=F64).expand(3), rtol=0, atol=0)
    torch.testing.assert_close(inside.ys[:, -1], recorded.ys[:, -1], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(inside.y_final, recorded.y_final, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_inside, g_recorded, rtol=1e-12, atol=1e-15)
    # The last steps did overshoot: f was evaluated past each sample's t1.
    latest = []
    dxdt.solve(lambda t, y: latest.append(t.detach().reshape(-1)) or f(t, y), y0.detach(), 0.0, t1, step_past_t1=True)
    assert bool((torch.stack(latest).amax(0) > torch.as_tensor(t1, dtype=F64)).all())
