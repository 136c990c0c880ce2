"""Automatic stiffness detection and per-sample switching between an explicit and a Rosenbrock method.

Each sample starts with the explicit method (Tsit5). Its stiffness is estimated from the last two stages of a
Tsit5 step, both evaluated at ``t + dt`` (Hairer & Wanner, *Solving ODEs II*, IV.2; the test of Hairer's
DOPRI5): ``ρ ≈ ‖f(Y₇) − f(Y₆)‖ / ‖Y₇ − Y₆‖`` approximates the dominant eigenvalue along the step, and
``dt·ρ`` near the method's stability boundary (3.5 for Tsit5) means the step size is limited by stability
rather than accuracy. As in DOPRI5, the test runs every ``check_every`` steps, and every step once a test
was positive, on a clock of loop iterations (a sample sees the same iterations whatever its batch); every
test adds one power-iteration step (one f evaluation), because Hairer's ratio alone can miss most of the
dominant eigenvalue when the step is also accuracy-limited. When the evidence persists for ``switch_after``
consecutive steps the sample moves to the stiff method (Rodas5P). In stiff mode the Jacobian is at hand,
and ``dt·‖J‖∞`` (an upper bound of ``dt·ρ``) below the explicit boundary for ``switch_after`` consecutive
steps moves the sample back.

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


class AutoSwitchModes(NamedTuple):
    stiff: torch.Tensor  # (B,) bool: the method each sample uses
    streak: torch.Tensor  # (B,) int64: consecutive steps that pointed to the other method
    n_switches: torch.Tensor  # (B,) int64
    inner: Any  # the stiff method's state
    # f evaluations a stiff step costs beyond an explicit one, per sample (a constant, made once per solve)
    stiff_extra_evals: torch.Tensor
    # Host-side summary, refreshed after every step that could change it (so most non-stiff steps need no
    # host synchronisation): whether any / every sample is stiff and whether any has a streak going.
    any_stiff: bool = False
    all_stiff: bool = False
    any_streak: bool = False
    tested: bool = False  # whether the last step tested (its streaks may have changed)
    ran_stiff: bool = False  # whether the last step ran the stiff method (for any sample)
    # Inside a compiled iteration, which cannot synchronise: the summary above as a (3,) bool tensor (or (1,),
    # "any streak" alone, when no sample could switch), turned into the bools by leave_graph.
    summary: torch.Tensor | None = None


class AutoSwitchState(NamedTuple):
    # Loop iterations so far: the clock of the stiffness tests. Every sample sees the same iterations whatever
    # its batch, so a schedule on this clock keeps a sample's steps independent of the rest of the batch.
    # (Kept apart from the modes so that a plain Tsit5 step only rebuilds this pair.)
    # None inside a compiled iteration (each value would be a guard: a recompile per iteration); the host then
    # passes what the clock decides for this iteration instead (enter_graph).
    iteration: int | None
    modes: AutoSwitchModes
    on_clock: bool = False  # a test iteration


class AutoSwitch(AbstractSolver):
    """Tsit5 for non-stiff stretches, Rodas5P for stiff ones, chosen per sample.

    Args:
        switch_after: consecutive steps of evidence before a sample switches (either way).
        check_every: steps between stiffness tests of an explicit sample while it shows no evidence (a test,
            with its power step, costs about half a Tsit5 step, eager or compiled; once positive it runs every
            step). Hairer's DOPRI5 tests every 1000 steps by default; 20 delays a switch by a few percent of the
            steps on Van der Pol μ = 1000 and keeps the cost on non-stiff problems to a few percent.
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

    def _on_clock(self, iteration: int) -> bool:
        """Whether this iteration tests every explicit sample."""
        return iteration % self.check_every == 0

    def enter_graph(self, state: AutoSwitchState) -> tuple[AbstractSolver, AutoSwitchState | None]:
        m, on_clock = state.modes, self._on_clock(state.iteration)
        if not (on_clock or m.any_streak or m.any_stiff):
            # An untested non-stiff iteration reads none of the modes: it is Tsit5's own compiled iteration (the
            # same graph and guards as a plain Tsit5 solve).
            return self.nonstiff, None
        return self, AutoSwitchState(None, m, on_clock)

    def leave_graph(self, before: AutoSwitchState, after: AutoSwitchState) -> AutoSwitchState:
        if after is None:  # a plain iteration: nothing changed
            return AutoSwitchState(before.iteration + 1, before.modes)
        m = after.modes
        if m.summary is not None:  # the one synchronisation, after iterations that tested or ran stiff samples
            values = m.summary.tolist()
            if len(values) == 1:  # no sample could switch: only "any streak" may have changed
                m = m._replace(any_streak=values[0], summary=None)
            else:
                any_stiff, all_stiff, any_streak = values
                m = m._replace(any_stiff=any_stiff, all_stiff=all_stiff, any_streak=any_streak, summary=None)
        return AutoSwitchState(before.iteration + 1, m)

    def init_state(self, term: Term, t0, y0, f0) -> AutoSwitchState:
        zeros = torch.zeros(y0.shape[0], dtype=torch.int64, device=y0.device)
        modes = AutoSwitchModes(
            stiff=zeros.bool(),
            streak=zeros,
            n_switches=zeros.clone(),  # not an alias of streak: an aliased input would be its own compiled graph
            inner=self.stiff.init_state(term, t0, y0, f0),
            stiff_extra_evals=torch.full_like(zeros, self.stiff.evals_per_step - self.nonstiff.evals_per_step),
        )
        return AutoSwitchState(0, modes)

    def step(self, term, t, dt, y, f0, state: AutoSwitchState, rtol, atol) -> StepResult:
        iteration, m = state.iteration, state.modes
        stiff, any_stiff, any_streak = m.stiff, m.any_stiff, m.any_streak
        explicit = None if m.all_stiff else self._explicit_step(term, t, dt, y, f0)
        # Explicit samples are tested on the first iteration and every check_every-th after it (every sample
        # starts on iteration 0), and on every iteration while they have a streak going.
        if iteration is None:  # inside a compiled iteration: the host says what the clock decides
            on_clock, following = state.on_clock, None
        else:
            on_clock, following = self._on_clock(iteration), iteration + 1
        test = explicit is not None and (on_clock or any_streak)
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
        streak = m.streak
        due = None  # the explicit samples tested this step (None: every sample)
        if test and (any_stiff or not on_clock):
            due = ~stiff if on_clock else ~stiff & (streak > 0)
        implicit = None
        if any_stiff:  # a sample's Jacobian is only current while it stays in stiff mode
            inner = m.inner._replace(current=m.inner.current & stiff)
            implicit = self._stiff_step(term, t, dt, y, f0, inner, rtol, atol)
        power_evals = None
        with torch.no_grad():
            if test:
                # dt·ρ = ‖k₇ − k₆‖ / ‖(Y₇ − Y₆)/dt‖: Hairer's estimate needs no dt.
                pair = self._stiffness_weights(explicit.ks)  # k₇ − k₆ and (Y₇ − Y₆)/dt
                norms = torch.linalg.vector_norm(pair.flatten(2), dim=2)
                to_stiff = norms[0] > STIFF_RATIO * norms[1]
                # Every test adds the power step (one more f evaluation).
                power_stiff = self._power_step(term, t, dt, explicit, pair[0], norms[0])
                to_stiff = to_stiff | power_stiff if due is None else to_stiff | (due & power_stiff)
                power_evals = (~stiff if due is None else due).to(torch.int64)
            if implicit is not None:
                jac_norm = implicit.state.jac.abs().sum(-1).amax(-1)
                to_nonstiff = dt.abs() * jac_norm < STIFF_RATIO
            if test:  # the explicit samples due for a test
                bumped = torch.where(to_stiff, streak + 1, 0)
                streak = bumped if due is None else torch.where(due, bumped, streak)
            if implicit is not None:  # the stiff samples, every step
                streak = torch.where(stiff, torch.where(to_nonstiff, streak + 1, 0), streak)
        m = m._replace(streak=streak, tested=True)
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

    def _power_step(self, term, t, dt, explicit, v, v_norm) -> torch.Tensor:
        """One power iteration from Hairer's direction: ``dt·‖J v‖/‖v‖`` with ``v = k₇ − k₆ ≈ J (Y₇ − Y₆)``, by a
        forward difference at ``(t + dt, y₁)`` (``v_norm``: ``‖v‖``, per sample). Hairer's ratio can miss most of
        the dominant eigenvalue when the step is also accuracy-limited (rtol 1e-8 on Robertson: 0.64 for 3.45);
        one more application of J amplifies its direction by the stiffness ratio itself."""
        y1, f1 = explicit.y1, explicit.f1
        v_norm = v_norm.clamp_min(1e-300)
        # The difference moves y₁ by √eps (1 + its RMS size): ‖step · v‖ = that.
        root_eps = torch.finfo(y1.dtype).eps ** 0.5
        y_norm = torch.linalg.vector_norm(y1.flatten(1), dim=1)
        step = (y_norm * (root_eps / math.prod(y1.shape[1:]) ** 0.5) + root_eps) / v_norm
        step = step.reshape((-1,) + (1,) * (y1.ndim - 1)).to(y1.dtype)
        jv = (term(t + dt, y1 + step * v) - f1) / step
        return dt.abs() * torch.linalg.vector_norm(jv.flatten(1), dim=1) > STIFF_RATIO * v_norm

    def commit(self, old: AutoSwitchState, new: AutoSwitchState, accept, running) -> AutoSwitchState:
        iteration, m = new.iteration, new.modes
        if not m.tested:  # a plain Tsit5 step: no streak moved, no sample can switch, nothing to synchronise
            return new
        o = old.modes
        inner = self.stiff.commit(o.inner, m.inner, accept, running & o.stiff) if m.ran_stiff else o.inner
        streak = torch.where(running, m.streak, o.streak)
        traced = iteration is None  # in a compiled iteration: no synchronisation, leave_graph reads the summary
        if not o.any_streak and self.switch_after > 1:
            # Streaks were all zero, so one step leaves them at most 1: nobody switches, only any_streak can change.
            any_streak = (streak > 0).any()
            if traced:
                return AutoSwitchState(None, o._replace(streak=streak, inner=inner, summary=any_streak.reshape(1)))
            return AutoSwitchState(iteration, o._replace(streak=streak, inner=inner, any_streak=bool(any_streak)))
        switch = running & (streak >= self.switch_after)
        stiff = o.stiff ^ switch
        streak = torch.where(switch, 0, streak)
        summary = torch.stack([stiff.any(), stiff.all(), (streak > 0).any()])
        modes = o._replace(stiff=stiff, streak=streak, n_switches=o.n_switches + switch, inner=inner)
        if traced:
            return AutoSwitchState(None, modes._replace(summary=summary))
        any_stiff, all_stiff, any_streak = summary.tolist()
        modes = modes._replace(any_stiff=any_stiff, all_stiff=all_stiff, any_streak=any_streak)
        return AutoSwitchState(iteration, modes)

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
