"""The one adaptive time-stepping loop: every sample has its own t, dt, accept/reject, status and counters.

Each iteration attempts one step for every sample still running (idle samples take a step of size 0 and
are masked out), so a sample's trajectory does not depend on the rest of the batch. The only host
synchronisation per iteration is the test whether any sample is still running.

The loop is written as a carry (everything that changes from one iteration to the next) and one pure
iteration on it, so that the same iteration runs plainly (:func:`integrate`) or under recursive
checkpointing (:mod:`dxdt.adjoints.checkpointed`), and the adjoint methods solve their backward equations
with it too.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ._compiled import compiled
from ._solution import RUNNING, Status
from ._term import Term
from .controllers import AbstractController, initial_step_size
from .interpolation.dense_solution import StepRecords
from .interpolation.polynomial import evaluate_polynomial
from .solvers.base import AbstractSolver, StepResult

# Consecutive unusable attempts (non-finite values, or a failed Newton iteration), each shrinking dt by the
# controller's factor_min, before a sample is declared NONFINITE / NEWTON_FAILURE: 0.2**8 ≈ 3e-6, enough to
# step past a too-large initial step, not to loop forever.
MAX_NONFINITE_RETRIES = 8
# A step within this relative distance of the next stop (save time or t1) is stretched to land on it, so
# that rounding in t + dt never leaves a sliver of a step behind.
SNAP = 1e-10

#: ``on_step(t, dt, step, y)`` after every iteration: ``dt`` is the signed step of samples that accepted
#: theirs and 0 elsewhere, ``step`` the attempt and ``y`` the state it started from. The adjoints
#: accumulate parameter gradients by quadrature with it.
StepHook = Callable[[torch.Tensor, torch.Tensor, StepResult, torch.Tensor], None]


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


class Carry(NamedTuple):
    """Everything one loop iteration reads and writes; the loop's state between iterations."""

    t: torch.Tensor  # (B,) float64
    y: torch.Tensor  # (B, *S)
    f: torch.Tensor  # (B, *S): f(t, y)
    dt: torch.Tensor  # (B,) float64 step size to try next (0 for idle samples)
    status: torch.Tensor  # (B,) int64
    err_prev: torch.Tensor  # (B,) float64: the controller's memory
    bad_streak: torch.Tensor  # (B,) int64: consecutive unusable attempts
    state: Any  # the solver's state


class IterationOutput(NamedTuple):
    """What one iteration leaves behind besides the carry: counters and, when recording, the step."""

    running: torch.Tensor  # (B,) bool
    accept: torch.Tensor  # (B,) bool
    extra_evals: torch.Tensor | None
    row: tuple | None  # a StepRecords row
    # Compiled, with gradients: whether a running sample's step was unusable (0-d bool). The host then redoes
    # the iteration eagerly with the zero-step fix (Loop.advance): testing it inside the graph would split it.
    redo: torch.Tensor | None = None
    # Compiled: whether any sample still runs after the iteration (0-d bool), for Loop.running.
    any_running: torch.Tensor | None = None


class Loop:
    """The loop's fixed configuration and its two halves: :meth:`start` (the first carry) and :meth:`iterate`.

    Args:
        stops: float64 ``(B, T)`` times that steps must land on exactly (save times of methods whose
            dense output is less accurate than the method), or ``None``.
        record: keep every step (for dense output, interpolated save times, or saving every step).
        step_past_t1: do not shorten the last step to land on t1 (torchdiffeq's semantics). With ``record``
            the caller interpolates back to t1 from the recorded steps; without, the step that crosses t1 ends
            its sample at t1, with the state read off that step's dense output (no trajectory is kept).
            Requires ``stops is None``.
        compile: run each iteration (the attempted step, error test, controller and status updates) as one
            ``torch.compile``d function; with ``on_step`` (whose Python side effects cannot be traced) only
            the attempted step is compiled.
        on_step: a :data:`StepHook` called after every iteration.
    """

    def __init__(
        self,
        solver: AbstractSolver,
        controller: AbstractController,
        term: Term,
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
        on_step: StepHook | None = None,
    ):
        self.solver, self.controller, self.term = solver, controller, term
        self.t0, self.t1, self.rtol, self.atol = t0, t1, rtol, atol
        self.dt0, self.dt_min, self.dt_max, self.max_steps = dt0, dt_min, dt_max, max_steps
        self.record, self.step_past_t1, self.on_step = record, step_past_t1, on_step
        self.interpolates_t1 = step_past_t1 and not record
        self.direction = torch.where(t1 >= t0, 1.0, -1.0).to(torch.float64)
        # Every sample forward in time (the common case): the signs need no multiplications.
        self.forward = bool((t1 >= t0).all())
        # The next stop of each sample: its next save time still ahead, else t1.
        self.stops = t1[:, None] if stops is None else torch.cat([stops.detach(), t1[:, None]], dim=1)
        self.stop_tau = (self.stops - t0[:, None]) * self.direction[:, None]
        self.single_stop = self.stop_tau.shape[1] == 1
        self.retry_limit = MAX_NONFINITE_RETRIES if solver.adaptive else 1
        self.whole = whole = compile and on_step is None
        compile_attempt = False
        if compile and not whole:
            self.solver, compile_attempt = solver.for_compiled_attempt()
        self.attempt = compiled(_attempt) if compile_attempt else _attempt
        device = t0.device
        self.code = {s: torch.tensor(int(s), device=device) for s in Status}
        self.code_running = torch.tensor(RUNNING, device=device)
        self.n_init = 1
        self.known_running: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    def start(self, y0: torch.Tensor) -> Carry:
        """The carry before the first step: ``f(t0, y0)``, the initial step size, every sample running."""
        t0, t1, batch = self.t0, self.t1, y0.shape[0]
        f0 = self.term(t0, y0)
        self.term.check(f0, y0)
        if self.dt0 is None:
            dt = initial_step_size(self.term, t0, y0, f0, self.direction, self.solver.error_order, self.rtol, self.atol)
            self.n_init = 2
        else:
            dt = self.dt0.expand(batch).clone(memory_format=torch.contiguous_format)
        dt = dt.clamp(max=self.dt_max)
        status = torch.where(t0 == t1, Status.SUCCESS, RUNNING).to(torch.int64)
        # Idle samples (finished or failed) take steps of size 0 and are masked out of every update.
        dt = torch.where(status == RUNNING, dt, 0.0)
        return Carry(
            t=t0.clone(memory_format=torch.contiguous_format),  # t0 may be expanded: strides are guarded
            y=y0,
            f=f0,
            dt=dt,
            status=status,
            err_prev=torch.ones(batch, dtype=torch.float64, device=y0.device),
            bad_streak=torch.zeros(batch, dtype=torch.int64, device=y0.device),
            state=self.solver.init_state(self.term, t0, y0, f0),
        )

    def advance(self, carry: Carry) -> tuple[Carry, IterationOutput]:
        """:meth:`iterate`, compiled as a whole when the loop was made with ``compile=True``."""
        if not self.whole:
            return Loop.iterate(self, carry)
        solver, before = self.solver, carry.state
        stepper, state = solver.enter_graph(before)
        iteration = self._compiled_iteration(carry, stateless=state is None)
        new, out = iteration(self, carry if state is before else Carry(*carry[:-1], state), stepper)
        if out.redo is not None and bool(out.redo):  # rare: a NaN/inf step while gradients are tracked
            return Loop.iterate(self, carry)
        state = solver.leave_graph(before, new.state)
        self.known_running = (new.status, out.any_running)
        return (new if state is new.state else Carry(*new[:-1], state)), out

    def advance_tallied(self, carry: Carry, tally: Tally, budget: int) -> Carry:
        """:meth:`advance` with its output added to ``tally``; compiled, and without gradients to track, as many
        iterations (up to ``budget``) as the solver lets run back to back as a stateless stepper's own
        (:meth:`~dxdt.solvers.AbstractSolver.plain_iterations`), each with no host work but the test whether any
        sample still runs."""
        n = 0
        if self.whole and not (carry.y.requires_grad or carry.f.requires_grad):
            stepper, n = self.solver.plain_iterations(carry.state)
        if n <= 1:
            carry, out = self.advance(carry)
            tally.add(out)
            return carry
        iteration = self._compiled_iteration(carry, stateless=True)
        plain, done = Carry(*carry[:-1], None), 0
        while done < min(n, budget):
            plain, out = iteration(self, plain, stepper)
            tally.add(out)
            done += 1
            if not out.any_running:
                break
        self.known_running = (plain.status, out.any_running)
        return Carry(*plain[:-1], self.solver.after_plain_iterations(carry.state, done))

    def _compiled_iteration(self, carry: Carry, stateless: bool) -> Callable:
        """The compiled :meth:`iterate` for this kind of iteration."""
        # The first iteration of a training step starts from a y0 without gradient, the later ones from states
        # that have one: two graphs, each with its own compiled copy of iterate, so that neither pays the other's
        # failing guard check first (~3 % of a short neural-ODE training step). Likewise iterations with and
        # without a solver state: "auto"'s untested iterations (Tsit5's, no state) would otherwise try its
        # tested variants first (+1.3 µs per iteration); and the loop's own solver, so that those Tsit5 iterations
        # do not share their cache with a plain Tsit5 solve's in the same process (+1.5 µs per iteration).
        kind = (carry.y.requires_grad, carry.f.requires_grad, stateless, type(self.solver))
        return _compiled_iteration(kind)

    def running(self, carry: Carry) -> bool:
        """Whether any sample still runs: the one host synchronisation per iteration (read off the compiled
        iteration that made ``carry``, where there is one: two eager operations fewer)."""
        status, any_running = self.known_running
        if status is carry.status:
            return bool(any_running)
        return bool((carry.status == RUNNING).any())

    def iterate(self, carry: Carry, stepper: AbstractSolver | None = None) -> tuple[Carry, IterationOutput]:
        """Attempt one step for every running sample; accept or reject it; update status and step size.

        ``stepper``: the solver that takes this iteration's step, when not the loop's own (see
        :meth:`~dxdt.solvers.AbstractSolver.enter_graph`)."""
        solver, controller, term = stepper or self.solver, self.controller, self.term
        t, y, f, dt, status, err_prev, bad_streak, state = carry
        t1, direction, code = self.t1, self.direction, self.code
        signed = _identity if self.forward else direction.mul
        running = status == RUNNING
        if self.step_past_t1:  # steps are never shortened; the caller interpolates back to t1
            lands = None
            dt_try = dt
            dt_signed = signed(dt_try)
            t_new = t + dt_signed
        else:
            if self.single_stop:
                stop, to_stop = t1, signed(t1 - t)
            else:  # the first stop strictly ahead of each sample
                tau = (t - self.t0) * direction
                n_stops = self.stop_tau.shape[1]
                ahead = (self.stop_tau <= tau[:, None]).sum(1, keepdim=True).clamp_max(n_stops - 1)
                stop = self.stops.gather(1, ahead).squeeze(1)
                to_stop = self.stop_tau.gather(1, ahead).squeeze(1) - tau
            lands = dt * (1 + SNAP) >= to_stop
            dt_try = torch.where(lands, to_stop, dt)
            dt_signed = signed(dt_try)
            t_new = torch.where(lands, stop, t + dt_signed)

        step, err, bad = self.attempt(solver, term, t, dt_signed, y, f, state, self.rtol, self.atol)
        redo = None
        tracked = y.requires_grad or f.requires_grad
        if tracked and torch.compiler.is_compiling():
            redo = (bad & running).any()
        elif tracked and bool((bad & running).any()):
            # A step that produced NaN/inf (or failed) is rejected, but its values would still poison the
            # gradient (0 · NaN): redo it with a zero step for those samples, which keeps every value finite.
            # The first attempt's solver state, failure flags and counts stand, so that the step sequence and
            # statistics do not depend on whether gradients are tracked.
            dt_signed = torch.where(bad, 0.0, dt_signed)
            first = step
            step = solver.step(term, t, dt_signed, y, f, state, self.rtol, self.atol)._replace(
                state=first.state, failed=first.failed, extra_evals=first.extra_evals
            )

        with _no_grad():
            # An unusable step has an infinite or NaN error ratio, which fails the test on its own.
            accept = running & ~bad if controller.accepts_every_step else running & (err <= 1.0)
            dt_next, err_prev = controller.propose(dt_try, err, err_prev, accept, solver.error_order)
            # A step cut short to land on a stop says nothing about the step size the controller wanted.
            if lands is not None:
                dt_next = torch.where(accept & lands, torch.maximum(dt_next, dt), dt_next)
            if self.dt_max < math.inf:
                dt_next = dt_next.clamp(max=self.dt_max)

        accept_y = accept.reshape((-1,) + (1,) * (y.ndim - 1))
        dt_accepted = torch.where(accept, dt_signed, 0.0)
        row = None
        if self.record:
            t_end = torch.where(accept, t_new, t)
            coefficients = solver.dense_coefficients(step, y, dt_accepted)
            row = (t, t_end, dt_accepted, accept, step.y1, coefficients)
        if self.on_step is not None:
            self.on_step(t, dt_accepted, step, y)
        extra = step.extra_evals * running if step.extra_evals is not None else None
        state = solver.commit(state, step.state, accept, running)
        t_start, y_start = t, y
        t = torch.where(accept, t_new, t)
        y = torch.where(accept_y, step.y1, y)
        f = torch.where(accept_y, step.f1, f)

        with _no_grad():
            bad_streak = (bad_streak + 1) * bad
            finished = accept & ((t_new - t1) * direction >= 0 if self.step_past_t1 else t_new == t1)
        # The step that crossed t1 ends its sample at t1, at the step's interpolant (eagerly only on the
        # iterations where a sample finishes; compiled, every iteration, fused and masked).
        if self.interpolates_t1 and (torch.compiler.is_compiling() or bool(finished.any())):
            theta = torch.where(finished, (t1 - t_start) / torch.where(finished, dt_signed, 1.0), 0.0)
            at_t1 = evaluate_polynomial(
                solver.dense_coefficients(step, y_start, dt_accepted), theta.to(y.dtype).reshape(accept_y.shape)
            )
            y = torch.where(finished.reshape(accept_y.shape), at_t1, y)
            t = torch.where(finished, t1, t)
        with _no_grad():
            # The step no longer changes t in float64 (or fell below the user's dt_min).
            underflow = t + signed(dt_next) == t
            if self.dt_min > 0:
                underflow = underflow | (dt_next < self.dt_min)
            gave_up = code[Status.NONFINITE]
            if step.failed is not None:
                gave_up = torch.where(step.failed, code[Status.NEWTON_FAILURE], gave_up)
            failure = torch.where(
                bad_streak >= self.retry_limit,
                gave_up,
                torch.where(underflow, code[Status.DT_UNDERFLOW], self.code_running),
            )
            status = torch.where(running, torch.where(finished, code[Status.SUCCESS], failure), status)
            still = status == RUNNING
            dt = torch.where(still, dt_next, 0.0)
            any_running = still.any() if torch.compiler.is_compiling() else None
        carry = Carry(t, y, f, dt, status, err_prev, bad_streak, state)
        return carry, IterationOutput(running, accept, extra, row, redo, any_running)

    def finish(self, carry: Carry, tally: Tally) -> LoopResult:
        """Mark samples still running as out of steps and count what every sample did."""
        status = torch.where(carry.status == RUNNING, Status.MAX_STEPS, carry.status)
        n_f_evals = self.n_init + self.solver.evals_per_step * tally.n_steps
        if tally.extra_evals is not None:
            n_f_evals = n_f_evals + tally.extra_evals
        return LoopResult(
            t=carry.t,
            y=carry.y,
            f=carry.f,
            status=status,
            n_steps=tally.n_steps,
            n_accepted=tally.n_accepted,
            n_rejected=tally.n_steps - tally.n_accepted,
            n_f_evals=n_f_evals,
            n_iterations=tally.n_iterations,
            records=StepRecords.stack(tally.rows) if tally.rows else None,
            solver_stats=self.solver.statistics(carry.state),
        )


class Tally:
    """Running per-sample counts of the iterations so far, and the recorded steps: memory per iteration only
    for what is recorded (a list of small tensors per iteration would fragment the heap over long solves)."""

    def __init__(self, batch: int, device: torch.device):
        self.n_iterations = 0
        self.n_steps = torch.zeros(batch, dtype=torch.int64, device=device)
        self.n_accepted = torch.zeros(batch, dtype=torch.int64, device=device)
        self.extra_evals: torch.Tensor | None = None
        self.rows: list[tuple] = []

    def add(self, out: IterationOutput) -> None:
        self.n_iterations += 1
        self.n_steps += out.running
        self.n_accepted += out.accept
        if out.extra_evals is not None:
            self.extra_evals = out.extra_evals if self.extra_evals is None else self.extra_evals + out.extra_evals
        if out.row is not None:
            self.rows.append(out.row)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_UNTRACKED = contextlib.nullcontext()


def _no_grad() -> contextlib.AbstractContextManager:
    """``torch.no_grad()``, or nothing when gradients are off already (inference mode, an outer no_grad): entering
    and leaving one costs ~1.3 µs, and an iteration has four."""
    return torch.no_grad() if torch.is_grad_enabled() else _UNTRACKED


def integrate(loop: Loop, y0: torch.Tensor) -> LoopResult:
    """Integrate every sample of ``y0`` from ``loop.t0`` to ``loop.t1``."""
    carry = loop.start(y0)
    tally = Tally(y0.shape[0], y0.device)
    # Bounded: every running sample attempts one step per iteration, so max_steps iterations suffice (and every
    # round adds at least one).
    while tally.n_iterations < loop.max_steps and loop.running(carry):
        carry = loop.advance_tallied(carry, tally, loop.max_steps - tally.n_iterations)
    return loop.finish(carry, tally)


_ITERATIONS: dict[tuple, Callable] = {}


def _compiled_iteration(kind: tuple) -> Callable:
    """:meth:`Loop.iterate` compiled, a copy of its code object per kind of iteration: dynamo keeps compiled
    graphs per code object and tries them in turn behind their guards, and a failing check costs tens of µs."""
    if kind not in _ITERATIONS:
        fn = Loop.iterate
        if _ITERATIONS:
            code = fn.__code__.replace(co_name=f"iterate_{len(_ITERATIONS)}")
            fn = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _ITERATIONS[kind] = compiled(fn)
    return _ITERATIONS[kind]


def _attempt(solver: AbstractSolver, term: Term, t, dt, y, f, state, rtol, atol):
    """One attempted step for every sample, with its error ratio and which samples' steps are unusable."""
    step = solver.step(term, t, dt, y, f, state, rtol, atol)
    err, bad = _assess(solver, step, y, rtol, atol)
    return step, err, bad


def _assess(solver: AbstractSolver, step, y: torch.Tensor, rtol: torch.Tensor, atol: torch.Tensor):
    """The step's error ratio (float64 ``(B,)``) and which samples' steps are unusable (NaN/inf or failed)."""
    with _no_grad():
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
