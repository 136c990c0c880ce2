"""The one adaptive time-stepping loop: every sample has its own t, dt, accept/reject, status and counters.

Each iteration attempts one step for every sample still running (idle samples take a step of size 0 and
are masked out), so a sample's trajectory does not depend on the rest of the batch. The only host
synchronisation per iteration is the test whether any sample is still running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._solution import RUNNING, Status
from ._term import Term
from .controllers import AbstractController, initial_step_size
from .interpolation.dense_solution import StepRecords
from .solvers.base import AbstractSolver

# Consecutive unusable attempts (non-finite values, or a failed Newton iteration), each shrinking dt by the
# controller's factor_min, before a sample is declared NONFINITE / NEWTON_FAILURE: 0.2**8 ≈ 3e-6, enough to
# step past a too-large initial step, not to loop forever.
MAX_NONFINITE_RETRIES = 8
# A step within this relative distance of the next stop (save time or t1) is stretched to land on it, so
# that rounding in t + dt never leaves a sliver of a step behind.
SNAP = 1e-10


@dataclass
class LoopResult:
    t: torch.Tensor  # (B,) float64 time reached
    y: torch.Tensor  # (B, *S) state there
    f: torch.Tensor  # (B, *S) f(t, y)
    status: torch.Tensor  # (B,) int64 Status
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    n_f_evals: torch.Tensor
    n_iterations: int
    records: StepRecords | None
    solver_stats: dict[str, torch.Tensor]


def integrate(
    solver: AbstractSolver,
    controller: AbstractController,
    term: Term,
    y0: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    *,
    rtol: torch.Tensor,
    atol: torch.Tensor,
    dt0: torch.Tensor | None,
    dt_min: float,
    dt_max: float,
    max_steps: int,
    stops: torch.Tensor | None,
    record: bool,
    step_past_t1: bool = False,
    compile: bool = False,
) -> LoopResult:
    """Integrate every sample of ``y0`` from ``t0`` to ``t1`` (float64 ``(B,)`` each).

    Args:
        stops: float64 ``(B, T)`` times that steps must land on exactly (save times of methods whose
            dense output is less accurate than the method), or ``None``.
        record: keep every step (for dense output, interpolated save times, or saving every step).
        step_past_t1: do not shorten the last step to land on t1 (torchdiffeq's semantics); the caller
            interpolates back to t1. Requires ``stops is None``.
        compile: run each attempted step (stages, error estimate) as one ``torch.compile``d function.
    """
    batch = y0.shape[0]
    device = y0.device
    direction = torch.where(t1 >= t0, 1.0, -1.0).to(torch.float64)
    # The next stop of each sample: its next save time still ahead, else t1.
    if stops is None:
        stops = t1[:, None]
    else:
        stops = torch.cat([stops.detach(), t1[:, None]], dim=1)
    stop_tau = (stops - t0[:, None]) * direction[:, None]

    f0 = term(t0, y0)
    term.check(f0, y0)
    n_init = 1
    if dt0 is None:
        dt = initial_step_size(term, t0, y0, f0, direction, solver.error_order, rtol, atol)
        n_init += 1
    else:
        dt = dt0.expand(batch).clone()
    dt = dt.clamp(max=dt_max)

    t, y, f = t0.clone(), y0, f0
    status = torch.where(t0 == t1, Status.SUCCESS, RUNNING).to(torch.int64)
    code = {s: torch.tensor(int(s), device=device) for s in Status}
    code_running = torch.tensor(RUNNING, device=device)
    # Idle samples (finished or failed) take steps of size 0 and are masked out of every update.
    dt = torch.where(status == RUNNING, dt, 0.0)
    err_prev = torch.ones(batch, dtype=torch.float64, device=device)
    bad_streak = torch.zeros(batch, dtype=torch.int64, device=device)
    retry_limit = MAX_NONFINITE_RETRIES if solver.adaptive else 1
    single_stop = stop_tau.shape[1] == 1
    state = solver.init_state(term, t0, y0, f0)
    attempt = _compiled_attempt() if compile else _attempt
    running_history: list[torch.Tensor] = []
    accept_history: list[torch.Tensor] = []
    extra_history: list[torch.Tensor] = []
    rows: list[tuple] = []

    # Bounded: every running sample attempts one step per iteration, so max_steps iterations suffice.
    for _ in range(max_steps):
        running = status == RUNNING
        if not bool(running.any()):  # the one host synchronisation per iteration
            break
        if step_past_t1:  # steps are never shortened; the caller interpolates back to t1
            lands = None
            dt_try = dt
            dt_signed = direction * dt_try
            t_new = t + dt_signed
        else:
            if single_stop:
                stop, to_stop = t1, (t1 - t) * direction
            else:  # the first stop strictly ahead of each sample
                tau = (t - t0) * direction
                ahead = (stop_tau <= tau[:, None]).sum(1, keepdim=True).clamp_max(stop_tau.shape[1] - 1)
                stop = stops.gather(1, ahead).squeeze(1)
                to_stop = stop_tau.gather(1, ahead).squeeze(1) - tau
            lands = dt * (1 + SNAP) >= to_stop
            dt_try = torch.where(lands, to_stop, dt)
            dt_signed = direction * dt_try
            t_new = torch.where(lands, stop, t + dt_signed)

        step, err, bad = attempt(solver, term, t, dt_signed, y, f, state, rtol, atol)
        if (y.requires_grad or f.requires_grad) and bool((bad & running).any()):
            # A step that produced NaN/inf (or failed) is rejected, but its values would still poison the
            # gradient (0 · NaN): redo it with a zero step for those samples, which keeps every value finite.
            # The first attempt's solver state, failure flags and counts stand, so that the step sequence and
            # statistics do not depend on whether gradients are tracked.
            dt_signed = torch.where(bad, 0.0, dt_signed)
            first = step
            step = solver.step(term, t, dt_signed, y, f, state, rtol, atol)._replace(
                state=first.state, failed=first.failed, extra_evals=first.extra_evals
            )

        with torch.no_grad():
            accept = running & ~bad if controller.accepts_every_step else running & ~bad & (err <= 1.0)
            dt_next, err_prev = controller.propose(dt_try, err, err_prev, accept, solver.error_order)
            # A step cut short to land on a stop says nothing about the step size the controller wanted.
            if lands is not None:
                dt_next = torch.where(accept & lands, torch.maximum(dt_next, dt), dt_next)
            if dt_max < math.inf:
                dt_next = dt_next.clamp(max=dt_max)

        accept_y = accept.reshape((-1,) + (1,) * (y.ndim - 1))
        if record:
            t_end = torch.where(accept, t_new, t)
            coefficients = solver.dense_coefficients(step, y, torch.where(accept, dt_signed, 0.0))
            rows.append((t, t_end, torch.where(accept, dt_signed, 0.0), accept, step.y1, coefficients))
        running_history.append(running)
        accept_history.append(accept)
        if step.extra_evals is not None:
            extra_history.append(step.extra_evals * running)
        state = solver.commit(state, step.state, accept, running)
        t = torch.where(accept, t_new, t)
        y = torch.where(accept_y, step.y1, y)
        f = torch.where(accept_y, step.f1, f)

        with torch.no_grad():
            bad_streak = (bad_streak + 1) * bad
            finished = accept & ((t_new - t1) * direction >= 0 if step_past_t1 else t_new == t1)
            # The step no longer changes t in float64 (or fell below the user's dt_min).
            underflow = t + direction * dt_next == t
            if dt_min > 0:
                underflow = underflow | (dt_next < dt_min)
            gave_up = code[Status.NONFINITE]
            if step.failed is not None:
                gave_up = torch.where(step.failed, code[Status.NEWTON_FAILURE], gave_up)
            failure = torch.where(
                bad_streak >= retry_limit,
                gave_up,
                torch.where(underflow, code[Status.DT_UNDERFLOW], code_running),
            )
            status = torch.where(running, torch.where(finished, code[Status.SUCCESS], failure), status)
            dt = torch.where(status == RUNNING, dt_next, 0.0)

    status = torch.where(status == RUNNING, Status.MAX_STEPS, status)
    n_iterations = len(running_history)
    if n_iterations:
        n_steps = torch.stack(running_history).sum(0)
        n_accepted = torch.stack(accept_history).sum(0)
    else:
        n_steps = n_accepted = torch.zeros(batch, dtype=torch.int64, device=device)
    n_rejected = n_steps - n_accepted
    n_f_evals = n_init + solver.evals_per_step * n_steps
    if extra_history:
        n_f_evals = n_f_evals + torch.stack(extra_history).sum(0)
    return LoopResult(
        t=t,
        y=y,
        f=f,
        status=status,
        n_steps=n_steps,
        n_accepted=n_accepted,
        n_rejected=n_rejected,
        n_f_evals=n_f_evals,
        n_iterations=n_iterations,
        records=StepRecords.stack(rows) if rows else None,
        solver_stats=solver.statistics(state),
    )


def _attempt(solver: AbstractSolver, term: Term, t, dt, y, f, state, rtol, atol):
    """One attempted step for every sample, with its error ratio and which samples' steps are unusable."""
    step = solver.step(term, t, dt, y, f, state, rtol, atol)
    err, bad = _assess(solver, step, y, rtol, atol)
    return step, err, bad


_COMPILED: list = []


def _compiled_attempt():
    """``_attempt`` compiled once per process; dynamo guards (solver, f, shapes, dtypes) decide recompiles."""
    if not _COMPILED:
        # Every (solver, f, shape, dtype) combination is one more compiled entry of this one function; dynamo's
        # default of 8 would silently drop the 9th back to eager.
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _COMPILED.append(torch.compile(_attempt, dynamic=False))
    return _COMPILED[0]


def _assess(solver: AbstractSolver, step, y: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor):
    """The step's error ratio (float64 ``(B,)``) and which samples' steps are unusable (NaN/inf or failed)."""
    with torch.no_grad():
        if solver.adaptive:
            # detach(): no_grad stops reverse mode only; forward-mode tangents must not reach dt either.
            err = solver.error_ratio(step, y.detach(), rtol, atol).detach().to(torch.float64)
            bad = ~(err < math.inf)  # one kernel: NaN and inf
        else:
            err = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
            bad = ~torch.isfinite(step.y1.detach().flatten(1).sum(1))
        if step.failed is not None:
            bad = bad | step.failed
            err = torch.where(step.failed, math.inf, err)  # the controller shrinks failed steps the most
    return err, bad
