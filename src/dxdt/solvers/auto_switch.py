"""Automatic stiffness detection and per-sample switching between an explicit and a Rosenbrock method.

Each sample starts with the explicit method (Tsit5). Its stiffness is estimated from the last two stages of a
Tsit5 step, both evaluated at ``t + dt`` (Hairer & Wanner, *Solving ODEs II*, IV.2; the test of Hairer's
DOPRI5): ``ρ ≈ ‖f(Y₇) − f(Y₆)‖ / ‖Y₇ − Y₆‖`` approximates the dominant eigenvalue along the step, and
``dt·ρ`` near the method's stability boundary (3.5 for Tsit5) means the step size is limited by stability
rather than accuracy. As in DOPRI5, the test runs on a schedule, and every step once a test was positive;
every test adds one power-iteration step (one f evaluation), because Hairer's ratio alone can miss most of
the dominant eigenvalue when the step is also accuracy-limited. When the evidence persists for
``switch_after`` consecutive steps the sample moves to the stiff method (Rodas5P). In stiff mode the Jacobian
is at hand, and ``dt·‖J‖∞`` (an upper bound of ``dt·ρ``) below the explicit boundary for ``switch_after``
consecutive steps moves the sample back.

The schedule is per sample, on a clock of loop iterations (every sample sees the same iterations whatever its
batch, and its schedule depends on its own tests only): the first test on the first iteration, then
``check_every`` iterations apart; a negative test that finds ``dt·ρ`` below a sixteenth of the threshold
doubles the spacing, up to 4 × ``check_every`` (Lotka–Volterra at rtol 1e-8 stays below 1/16 at every test:
6 tests in 422 steps instead of 22); any other test resets it. A sample that switches back to the explicit
method is next tested after ``check_every // 4`` iterations, the spacing then doubling back to
``check_every``: an oscillator's next stiff branch may come soon (Van der Pol μ = 1000).

Both methods have error order 4, so the step-size controller's history carries across switches. A batch
that mixes modes computes both steps and keeps each sample's own, so results stay independent of the batch.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, NamedTuple

import torch

from .._term import Term
from ._combine import Combinations
from .base import AbstractSolver, StepResult
from .explicit_methods import Tsit5
from .stiff_methods import Rodas5P

# Tsit5's stability region reaches about −3.5 on the real axis; a step this close to it is stability-limited.
STIFF_RATIO = 0.8 * 3.5
# A negative test this far inside the boundary (dt·ρ below a sixteenth of STIFF_RATIO) doubles the sample's
# spacing of tests, up to MAX_SPACING times check_every; any other test resets it to check_every.
QUIET = STIFF_RATIO / 16
MAX_SPACING = 4
# next_test of a sample in stiff mode: never (it is tested by its Jacobian every step).
NEVER = 2**62


class AutoSwitchModes(NamedTuple):
    stiff: torch.Tensor  # (B,) bool: the method each sample uses
    streak: torch.Tensor  # (B,) int64: consecutive steps that pointed to the other method
    n_switches: torch.Tensor  # (B,) int64
    inner: Any  # the stiff method's state
    # f evaluations a stiff step costs beyond an explicit one, per sample (a constant, made once per solve)
    stiff_extra_evals: torch.Tensor
    next_test: torch.Tensor  # (B,) int64: the iteration of each explicit sample's next scheduled test
    spacing: torch.Tensor  # (B,) int64: iterations between its scheduled tests
    # Host-side summary, refreshed after every step that could change it (so most non-stiff steps need no
    # host synchronisation): whether any / every sample is stiff and whether any has a streak going.
    any_stiff: bool = False
    all_stiff: bool = False
    any_streak: bool = False
    next_due: int = 0  # the earliest next_test of a running explicit sample
    tested: bool = False  # whether the last step tested (its streaks may have changed)
    ran_stiff: bool = False  # whether the last step ran the stiff method (for any sample)
    # Inside a compiled iteration, which cannot synchronise: the summary above as a (4,) int64 tensor, turned
    # into host values by leave_graph.
    summary: torch.Tensor | None = None


class AutoSwitchState(NamedTuple):
    # Loop iterations so far: the clock of the stiffness tests. Every sample sees the same iterations whatever
    # its batch, so a schedule on this clock keeps a sample's steps independent of the rest of the batch.
    # (Kept apart from the modes so that a plain Tsit5 step only rebuilds this pair.)
    # None inside a compiled iteration (each value would be a guard: a recompile per iteration); the host then
    # passes the clock as a tensor, and whether a scheduled test is due, instead (enter_graph).
    iteration: int | None
    modes: AutoSwitchModes
    clock: torch.Tensor | None = None  # 0-d int64: the iteration, inside a compiled iteration
    clock_due: bool = False  # a sample's scheduled test is due, inside a compiled iteration


class AutoSwitch(AbstractSolver):
    """Tsit5 for non-stiff stretches, Rodas5P for stiff ones, chosen per sample.

    Args:
        switch_after: consecutive steps of evidence before a sample switches (either way).
        check_every: steps between stiffness tests of an explicit sample while it shows no evidence, up to 4x
            as many while the tests find it far from stiff (a test, with its power step, costs about half a
            Tsit5 step, eager or compiled; once positive it runs every step). Hairer's DOPRI5 tests every 1000
            steps by default; 20 delays a switch by a few percent of the steps on Van der Pol μ = 1000 and keeps
            the cost on non-stiff problems to a few percent.
        jac: the stiff method's Jacobian: ``"autodiff"``, ``"fd"`` or a callable (see :class:`Rodas5P`).
    """

    adaptive = True
    uses_jacobian = True

    def __init__(self, switch_after: int = 10, jac="autodiff", check_every: int = 20):
        for name, value in (("switch_after", switch_after), ("check_every", check_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.switch_after = switch_after
        self.check_every = check_every
        # A sample back in explicit mode may well turn stiff again soon (an oscillator's next slow branch): its
        # tests start this close and spread out again, doubling up to check_every.
        self._restart_spacing = max(1, check_every // 4)
        self.nonstiff = Tsit5()
        self.stiff = Rodas5P(jac=jac)
        self.order = min(self.nonstiff.order, self.stiff.order)
        self.error_order = max(self.nonstiff.error_order, self.stiff.error_order)
        self.dense_order = min(self.nonstiff.dense_order, self.stiff.dense_order)
        # Counted per Tsit5 step; a stiff step's surplus is reported as extra_evals.
        self.evals_per_step = self.nonstiff.evals_per_step
        tab = self.nonstiff.tableau
        # Y₇ − Y₆ = dt Σ_j (a_7j − a_6j) k_j for the two last stage inputs, both at c = 1.
        assert tab.c[-1] == tab.c[-2] == 1.0
        a6 = (*tab.a[-2], 0.0)
        stage_gap = [x - y for x, y in zip(tab.a[-1], a6)]
        last_two = [0.0] * (tab.stages - 2) + [-1.0, 1.0]  # k₇ − k₆
        self._stiffness_weights = Combinations([last_two, stage_gap])
        self._explicit_step, self._stiff_step = self.nonstiff.step, self.stiff.step

    def for_compiled_attempt(self) -> tuple[AbstractSolver, bool]:
        """With a per-step hook (the adjoints' quadrature) only an attempted step would be compiled, and this
        one synchronises for the switching: this solver with its two methods' steps compiled instead."""
        from .._compiled import compiled

        clone = copy.copy(self)
        clone._explicit_step = functools.partial(compiled(type(self.nonstiff).step), self.nonstiff)
        clone._stiff_step = functools.partial(compiled(type(self.stiff).step), self.stiff)
        return clone, False

    def enter_graph(self, state: AutoSwitchState) -> tuple[AbstractSolver, AutoSwitchState | None]:
        m, iteration = state.modes, state.iteration
        clock_due = iteration >= m.next_due
        if not (clock_due or m.any_streak or m.any_stiff):
            # An untested non-stiff iteration reads none of the modes: it is Tsit5's own compiled iteration (the
            # same graph and guards as a plain Tsit5 solve).
            return self.nonstiff, None
        return self, AutoSwitchState(None, m, torch.tensor(iteration, device=m.next_test.device), clock_due)

    def plain_iterations(self, state: AutoSwitchState) -> tuple[AbstractSolver, int]:
        m = state.modes
        if m.any_streak or m.any_stiff:
            return self, 0
        return self.nonstiff, m.next_due - state.iteration  # Tsit5's own, up to the next scheduled test

    def after_plain_iterations(self, state: AutoSwitchState, n: int) -> AutoSwitchState:
        return AutoSwitchState(state.iteration + n, state.modes)

    def leave_graph(self, before: AutoSwitchState, after: AutoSwitchState) -> AutoSwitchState:
        if after is None:  # a plain iteration: nothing changed
            return AutoSwitchState(before.iteration + 1, before.modes)
        m = after.modes
        if m.summary is not None:  # the one synchronisation, after iterations that tested or ran stiff samples
            m = self._summarised(m, m.summary.tolist())
        return AutoSwitchState(before.iteration + 1, m)

    @staticmethod
    def _summarised(m: AutoSwitchModes, values: list[int]) -> AutoSwitchModes:
        any_stiff, all_stiff, any_streak, next_due = values
        return m._replace(
            any_stiff=bool(any_stiff),
            all_stiff=bool(all_stiff),
            any_streak=bool(any_streak),
            next_due=next_due,
            summary=None,
        )

    def init_state(self, term: Term, t0, y0, f0) -> AutoSwitchState:
        zeros = torch.zeros(y0.shape[0], dtype=torch.int64, device=y0.device)
        modes = AutoSwitchModes(
            stiff=zeros.bool(),
            streak=zeros,
            n_switches=zeros.clone(),  # not an alias of streak: an aliased input would be its own compiled graph
            inner=self.stiff.init_state(term, t0, y0, f0),
            stiff_extra_evals=torch.full_like(zeros, self.stiff.evals_per_step - self.nonstiff.evals_per_step),
            next_test=zeros.clone(),  # every sample is tested on the first iteration
            spacing=torch.full_like(zeros, self.check_every),
        )
        return AutoSwitchState(0, modes)

    def step(self, term, t, dt, y, f0, state: AutoSwitchState, rtol, atol) -> StepResult:
        iteration, m = state.iteration, state.modes
        stiff, any_stiff, any_streak = m.stiff, m.any_stiff, m.any_streak
        explicit = None if m.all_stiff else self._explicit_step(term, t, dt, y, f0)
        # An explicit sample is tested when its scheduled test is due (the first on iteration 0, every sample's
        # first) and on every iteration while it has a streak going.
        if iteration is None:  # inside a compiled iteration: the host passes the clock
            now, clock_due, following = state.clock, state.clock_due, None
        else:
            now, clock_due, following = iteration, iteration >= m.next_due, iteration + 1
        test = explicit is not None and (clock_due or any_streak)
        if not (test or any_stiff):  # the common non-stiff step: Tsit5's, nothing else to compute
            # (tested and ran_stiff are already False here: commit clears them)
            return StepResult(
                explicit.y1,
                explicit.f1,
                explicit.y_err,
                explicit.y_err_low,
                (explicit, None, stiff),
                explicit.f0,
                AutoSwitchState(following, m),
                explicit.failed,
                explicit.extra_evals,
            )
        streak, next_test, spacing = m.streak, m.next_test, m.spacing
        implicit = None
        if any_stiff:  # a sample's Jacobian is only current while it stays in stiff mode
            inner = m.inner._replace(current=m.inner.current & stiff)
            implicit = self._stiff_step(term, t, dt, y, f0, inner, rtol, atol)
        power_evals = None
        with torch.no_grad():
            if test:
                scheduled = ~stiff & (next_test <= now)
                due = scheduled | (~stiff & (streak > 0))  # the explicit samples tested this step
                # dt·ρ = ‖k₇ − k₆‖ / ‖(Y₇ − Y₆)/dt‖: Hairer's estimate needs no dt.
                pair = self._stiffness_weights(explicit.ks)  # k₇ − k₆ and (Y₇ − Y₆)/dt
                norms = torch.linalg.vector_norm(pair.flatten(2), dim=2)
                # Every test adds the power step (one more f evaluation): dt·ρ ≈ power / ‖v‖.
                power, v_norm = self._power_step(term, t, dt, explicit, pair[0], norms[0])
                to_stiff = due & ((norms[0] > STIFF_RATIO * norms[1]) | (power > STIFF_RATIO * v_norm))
                power_evals = due.to(torch.int64)
                streak = torch.where(due, torch.where(to_stiff, streak + 1, 0), streak)
                # The next scheduled test: twice as far off after one that found dt·ρ far inside the boundary.
                quiet = power < QUIET * v_norm
                longer = (2 * spacing).clamp_max(torch.where(quiet, MAX_SPACING * self.check_every, self.check_every))
                spacing = torch.where(scheduled, torch.where(to_stiff, self.check_every, longer), spacing)
                next_test = torch.where(due, now + spacing, next_test)
            if implicit is not None:  # the stiff samples, every step
                jac_norm = implicit.state.jac.abs().sum(-1).amax(-1)
                to_nonstiff = dt.abs() * jac_norm < STIFF_RATIO
                streak = torch.where(stiff, torch.where(to_nonstiff, streak + 1, 0), streak)
        m = m._replace(streak=streak, next_test=next_test, spacing=spacing, tested=True)
        if explicit is None or implicit is None:
            chosen = explicit if implicit is None else implicit
            extra = power_evals if implicit is None else m.stiff_extra_evals
            m = m._replace(ran_stiff=any_stiff, inner=m.inner if implicit is None else implicit.state)
            data = (explicit, implicit, stiff)
            return chosen._replace(ks=data, state=AutoSwitchState(following, m), extra_evals=extra)
        pick = stiff.reshape((-1,) + (1,) * (y.ndim - 1))
        return StepResult(
            y1=torch.where(pick, implicit.y1, explicit.y1),
            f1=torch.where(pick, implicit.f1, explicit.f1),
            y_err=torch.where(pick, implicit.y_err, explicit.y_err),
            y_err_low=None,
            ks=(explicit, implicit, stiff),
            f0=f0,
            state=AutoSwitchState(following, m._replace(ran_stiff=True, inner=implicit.state)),
            failed=implicit.failed & stiff,
            extra_evals=torch.where(stiff, m.stiff_extra_evals, 0 if power_evals is None else power_evals),
        )

    def _power_step(self, term, t, dt, explicit, v, v_norm) -> tuple[torch.Tensor, torch.Tensor]:
        """One power iteration from Hairer's direction: ``dt·‖J v‖`` and ``‖v‖`` (clamped away from 0), whose
        ratio estimates ``dt·ρ``, with ``v = k₇ − k₆ ≈ J (Y₇ − Y₆)``, by a forward difference at ``(t + dt, y₁)``
        (``v_norm``: ``‖v‖``, per sample). Hairer's ratio can miss most of the dominant eigenvalue when the step
        is also accuracy-limited (rtol 1e-8 on Robertson: 0.64 for 3.45); one more application of J amplifies its
        direction by the stiffness ratio itself."""
        y1, f1 = explicit.y1, explicit.f1
        v_norm = v_norm.clamp_min(1e-300)
        # The difference moves y₁ by √eps (1 + its RMS size): ‖step · v‖ = that.
        root_eps = torch.finfo(y1.dtype).eps ** 0.5
        y_norm = torch.linalg.vector_norm(y1.flatten(1), dim=1)
        step = (y_norm * (root_eps / math.prod(y1.shape[1:]) ** 0.5) + root_eps) / v_norm
        step = step.reshape((-1,) + (1,) * (y1.ndim - 1)).to(y1.dtype)
        jv = (term(t + dt, y1 + step * v) - f1) / step
        return dt.abs() * torch.linalg.vector_norm(jv.flatten(1), dim=1), v_norm

    def commit(self, old: AutoSwitchState, new: AutoSwitchState, accept, running) -> AutoSwitchState:
        iteration, m = new.iteration, new.modes
        if not m.tested:  # a plain Tsit5 step: no streak moved, no sample can switch, nothing to synchronise
            return new
        o = old.modes
        inner = self.stiff.commit(o.inner, m.inner, accept, running & o.stiff) if m.ran_stiff else o.inner
        streak = torch.where(running, m.streak, o.streak)
        next_test = torch.where(running, m.next_test, o.next_test)
        spacing = torch.where(running, m.spacing, o.spacing)
        stiff, n_switches = o.stiff, o.n_switches
        if o.any_streak or self.switch_after == 1:  # otherwise streaks were all zero and are at most 1 now
            switch = running & (streak >= self.switch_after)
            stiff, n_switches = stiff ^ switch, n_switches + switch
            streak = torch.where(switch, 0, streak)
            # Back in explicit mode, a sample is next tested soon (_restart_spacing); in stiff mode, never.
            now = old.clock if old.iteration is None else old.iteration
            restart = torch.where(o.stiff, now + 1 + self._restart_spacing, NEVER)
            next_test = torch.where(switch, restart, next_test)
            spacing = torch.where(switch, self._restart_spacing, spacing)
        next_due = torch.where(running & ~stiff, next_test, NEVER).amin()
        summary = torch.stack([stiff.any(), stiff.all(), (streak > 0).any()]).to(torch.int64)
        summary = torch.cat([summary, next_due.reshape(1)])
        modes = o._replace(
            stiff=stiff, streak=streak, n_switches=n_switches, inner=inner, next_test=next_test, spacing=spacing
        )
        if iteration is None:  # in a compiled iteration: no synchronisation, leave_graph reads the summary
            return AutoSwitchState(None, modes._replace(summary=summary))
        return AutoSwitchState(iteration, self._summarised(modes, summary.tolist()))

    def statistics(self, state: AutoSwitchState) -> dict[str, torch.Tensor]:
        return {**self.stiff.statistics(state.modes.inner), "n_switches": state.modes.n_switches}

    def dense_coefficients(self, step: StepResult, y0: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        explicit, implicit, stiff = step.ks
        parts = [
            solver.dense_coefficients(result, y0, dt)
            for solver, result in ((self.nonstiff, explicit), (self.stiff, implicit))
            if result is not None
        ]
        if len(parts) == 1:
            return parts[0]
        degree = max(p.shape[-1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, degree - p.shape[-1])) for p in parts]
        return torch.where(stiff.reshape((-1,) + (1,) * (parts[0].ndim - 1)), parts[1], parts[0])
