"""Automatic stiffness detection and per-sample switching between an explicit and a Rosenbrock method.

Each sample starts with the explicit method (Tsit5). Its stiffness is estimated from the last two stages of a
Tsit5 step, both evaluated at ``t + dt`` (Hairer & Wanner, *Solving ODEs II*, IV.2; the test of Hairer's
DOPRI5): ``ρ ≈ ‖f(Y₇) − f(Y₆)‖ / ‖Y₇ − Y₆‖`` approximates the dominant eigenvalue along the step, and
``dt·ρ`` near the method's stability boundary (3.5 for Tsit5) means the step size is limited by stability
rather than accuracy. As in DOPRI5, the test runs every ``check_every`` steps, and every step once a test
was positive, on each sample's own schedule; every ``POWER_EVERY``-th test, and every test during a streak,
adds one power-iteration step (one f evaluation), because Hairer's ratio alone can miss most of the dominant
eigenvalue when the step is also accuracy-limited. When the evidence persists for ``switch_after``
consecutive steps the sample moves to the stiff method (Rodas5P). In stiff mode the Jacobian is at hand,
and ``dt·‖J‖∞`` (an upper bound of ``dt·ρ``) below the explicit boundary for ``switch_after`` consecutive
steps moves the sample back.

Both methods have error order 4, so the step-size controller's history carries across switches. A batch
that mixes modes computes both steps and keeps each sample's own, so results stay independent of the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._norm import rms_norm
from .._term import Term
from ._combine import Combinations
from .base import AbstractSolver, StepResult
from .explicit_methods import Tsit5
from .stiff_methods import Rodas5P

# Tsit5's stability region reaches about −3.5 on the real axis; a step this close to it is stability-limited.
STIFF_RATIO = 0.8 * 3.5
# Every how many stiffness tests of a sample without evidence the power step (one f evaluation) joins it.
POWER_EVERY = 5


class AutoSwitchState(NamedTuple):
    stiff: torch.Tensor  # (B,) bool: the method each sample uses
    streak: torch.Tensor  # (B,) int64: consecutive steps that pointed to the other method
    n_switches: torch.Tensor  # (B,) int64
    ran_stiff: bool  # whether the last step ran the stiff method (for any sample)
    inner: Any  # the stiff method's state
    # (B,) int64: the iteration of each sample's last stiffness test. Tests are scheduled per sample, so that a
    # sample's steps never depend on the rest of the batch.
    last_test: torch.Tensor | None = None
    # Host-side summary, refreshed whenever a step could have changed it (so most non-stiff steps need no
    # host synchronisation): whether any / every sample is stiff, any has a streak going, the iteration
    # count and the first iteration at which some running sample is due for a test.
    any_stiff: bool = False
    all_stiff: bool = False
    any_streak: bool = False
    iteration: int = 0
    next_test: int = 0
    tested: bool = False  # whether the last step tested (its streaks may have changed)
    # f evaluations a stiff step costs beyond an explicit one, per sample (a constant, made once per solve)
    stiff_extra_evals: torch.Tensor | None = None


class AutoSwitch(AbstractSolver):
    """Tsit5 for non-stiff stretches, Rodas5P for stiff ones, chosen per sample.

    Args:
        switch_after: consecutive steps of evidence before a sample switches (either way).
        check_every: steps between stiffness tests of an explicit sample while it shows no evidence (the test
            costs about a tenth of a Tsit5 step; once positive it runs every step).
        jac: the stiff method's Jacobian: ``"autodiff"``, ``"fd"`` or a callable (see :class:`Rodas5P`).
    """

    adaptive = True

    def __init__(self, switch_after: int = 10, jac="autodiff", check_every: int = 10):
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

    def init_state(self, term: Term, t0, y0, f0) -> AutoSwitchState:
        zeros = torch.zeros(y0.shape[0], dtype=torch.int64, device=y0.device)
        return AutoSwitchState(
            stiff=zeros.bool(),
            streak=zeros,
            n_switches=zeros,
            ran_stiff=False,
            inner=self.stiff.init_state(term, t0, y0, f0),
            # Every sample is tested on its first step: many problems are stiff from the start.
            last_test=torch.full_like(zeros, -self.check_every),
            stiff_extra_evals=torch.full_like(zeros, self.stiff.evals_per_step - self.nonstiff.evals_per_step),
        )

    def step(self, term, t, dt, y, f0, state: AutoSwitchState, rtol, atol) -> StepResult:
        stiff, any_stiff, all_stiff = state.stiff, state.any_stiff, state.all_stiff
        explicit = None if all_stiff else self.nonstiff.step(term, t, dt, y, f0)
        # Test each explicit sample every check_every steps, and every step while it has a streak going.
        iteration = state.iteration
        test = explicit is not None and (state.any_streak or iteration >= state.next_test)
        if not (test or any_stiff):  # the common non-stiff step: Tsit5's, nothing else to compute
            # (tested and ran_stiff are already False here: commit clears them)
            return explicit._replace(ks=(explicit, None, stiff), state=state._replace(iteration=iteration + 1))
        last_test = state.last_test
        if test:
            due = ~stiff & ((iteration - last_test >= self.check_every) | (state.streak > 0))
            last_test = torch.where(due, iteration, last_test)
        implicit = None
        if any_stiff:  # a sample's Jacobian is only current while it stays in stiff mode
            inner = state.inner._replace(current=state.inner.current & stiff)
            implicit = self.stiff.step(term, t, dt, y, f0, inner, rtol, atol)
        streak = state.streak
        # The power step (one more f evaluation) joins every POWER_EVERY-th test of a sample, on a global clock of
        # iterations so that it does not depend on the batch, and every test while the sample has a streak.
        window = (iteration // self.check_every) % POWER_EVERY == 0
        power = test and (state.any_streak or window)
        power_evals = None
        with torch.no_grad():
            if test:
                # dt·ρ = ‖k₇ − k₆‖ / ‖(Y₇ − Y₆)/dt‖: Hairer's estimate needs no dt.
                stage_diff, gap = self._stiffness_weights(explicit.ks)
                diff_norm = rms_norm(stage_diff)
                to_stiff = diff_norm > STIFF_RATIO * rms_norm(gap)
            if power:
                power_due = due if window else due & (state.streak > 0)
                power_stiff = self._power_step(term, t, dt, explicit, stage_diff, diff_norm)
                to_stiff = to_stiff | (power_due & power_stiff)
                power_evals = power_due.to(torch.int64)  # its f evaluation, for the samples it tested
            if implicit is not None:
                jac_norm = implicit.state.jac.abs().sum(-1).amax(-1)
                to_nonstiff = dt.abs() * jac_norm < STIFF_RATIO
            if test:  # the explicit samples due for a test
                streak = torch.where(due, torch.where(to_stiff, streak + 1, 0), streak)
            if implicit is not None:  # the stiff samples, every step
                streak = torch.where(stiff, torch.where(to_nonstiff, streak + 1, 0), streak)
        state = state._replace(streak=streak, last_test=last_test, tested=test or any_stiff, iteration=iteration + 1)
        if explicit is None or implicit is None:
            chosen = explicit if implicit is None else implicit
            extra = power_evals if implicit is None else state.stiff_extra_evals
            inner = state.inner if implicit is None else implicit.state
            data = (explicit, implicit, stiff)
            return chosen._replace(ks=data, state=state._replace(ran_stiff=any_stiff, inner=inner), extra_evals=extra)
        pick = stiff.reshape((-1,) + (1,) * (y.ndim - 1))
        return StepResult(
            y1=torch.where(pick, implicit.y1, explicit.y1),
            f1=torch.where(pick, implicit.f1, explicit.f1),
            y_err=torch.where(pick, implicit.y_err, explicit.y_err),
            y_err_low=None,
            ks=(explicit, implicit, stiff),
            f0=f0,
            state=state._replace(ran_stiff=True, inner=implicit.state),
            failed=implicit.failed & stiff,
            extra_evals=torch.where(stiff, state.stiff_extra_evals, 0 if power_evals is None else power_evals),
        )

    def _power_step(self, term, t, dt, explicit, v, v_norm) -> torch.Tensor:
        """One power iteration from Hairer's direction: ``dt·‖J v‖/‖v‖`` with ``v = k₇ − k₆ ≈ J (Y₇ − Y₆)``, by a
        forward difference at ``(t + dt, y₁)``. Hairer's ratio can miss most of the dominant eigenvalue when
        the step is also accuracy-limited (rtol 1e-8 on Robertson: 0.64 for 3.45); one more application of J
        amplifies its direction by the stiffness ratio itself."""
        y1, f1 = explicit.y1, explicit.f1
        scale = v_norm.clamp_min(1e-300)
        eps = (torch.finfo(y1.dtype).eps ** 0.5) * (1 + rms_norm(y1))
        shape = (-1,) + (1,) * (y1.ndim - 1)
        step = (eps / scale).reshape(shape).to(y1.dtype)
        jv = (term(t + dt, y1 + step * v) - f1) / step
        return dt.abs() * rms_norm(jv) > STIFF_RATIO * scale

    def commit(self, old: AutoSwitchState, new: AutoSwitchState, accept, running) -> AutoSwitchState:
        if not new.tested:  # a plain Tsit5 step: no streak moved, no sample can switch, nothing to synchronise
            return new
        inner = self.stiff.commit(old.inner, new.inner, accept, running & old.stiff) if new.ran_stiff else old.inner
        streak = torch.where(running, new.streak, old.streak)
        last_test = torch.where(running, new.last_test, old.last_test)
        switch = running & (streak >= self.switch_after)
        stiff = old.stiff ^ switch
        streak = torch.where(switch, 0, streak)
        # The first iteration at which a running explicit sample is due again (finished ones never are).
        pending = torch.where(running & ~stiff, last_test, torch.iinfo(torch.int64).max - self.check_every)
        summary = torch.stack([stiff.any(), stiff.all(), (streak > 0).any(), pending.min() + self.check_every])
        any_stiff, all_stiff, any_streak, next_test = summary.tolist()
        return old._replace(
            stiff=stiff,
            streak=streak,
            n_switches=old.n_switches + switch,
            ran_stiff=False,
            inner=inner,
            any_stiff=bool(any_stiff),
            all_stiff=bool(all_stiff),
            any_streak=bool(any_streak),
            last_test=last_test,
            iteration=new.iteration,
            next_test=int(next_test),
            tested=False,
        )

    def statistics(self, state: AutoSwitchState) -> dict[str, torch.Tensor]:
        return {**self.stiff.statistics(state.inner), "n_switches": state.n_switches}

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
