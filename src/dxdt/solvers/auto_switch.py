"""Automatic stiffness detection and per-sample switching between an explicit and a Rosenbrock method.

Each sample starts with the explicit method (Tsit5). After every explicit step its stiffness is estimated
from the last two stages, both evaluated at ``t + dt`` (Hairer & Wanner, *Solving ODEs II*, IV.2;
the test of Hairer's DOPRI5): ``ρ ≈ ‖f(Y₇) − f(Y₆)‖ / ‖Y₇ − Y₆‖`` approximates the dominant eigenvalue
along the step, and ``dt·ρ`` near the method's stability boundary (3.5 for Tsit5) means the step size is
limited by stability rather than accuracy. When that persists for ``switch_after`` consecutive steps the
sample moves to the stiff method (Rodas5P). In stiff mode the Jacobian is at hand, and ``dt·‖J‖∞`` (an upper
bound of ``dt·ρ``) below the explicit boundary for ``switch_after`` consecutive steps moves the sample back.

Both methods have error order 4, so the step-size controller's history carries across switches. A batch
that mixes modes computes both steps and keeps each sample's own, so results stay independent of the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._norm import rms_norm
from .._term import Term
from ._combine import combine
from .base import AbstractSolver, StepResult
from .explicit_methods import Tsit5
from .stiff_methods import Rodas5P

# Tsit5's stability region reaches about −3.5 on the real axis; a step this close to it is stability-limited.
STIFF_RATIO = 0.8 * 3.5


class AutoSwitchState(NamedTuple):
    stiff: torch.Tensor  # (B,) bool: the method each sample uses
    streak: torch.Tensor  # (B,) int64: consecutive steps that pointed to the other method
    n_switches: torch.Tensor  # (B,) int64
    ran_stiff: bool  # whether the last step ran the stiff method (for any sample)
    inner: Any  # the stiff method's state


class AutoSwitch(AbstractSolver):
    """Tsit5 for non-stiff stretches, Rodas5P for stiff ones, chosen per sample.

    Args:
        switch_after: consecutive steps of evidence before a sample switches (either way).
        jac: the stiff method's Jacobian: ``"autodiff"``, ``"fd"`` or a callable (see :class:`Rodas5P`).
    """

    adaptive = True

    def __init__(self, switch_after: int = 10, jac="autodiff"):
        if not isinstance(switch_after, int) or switch_after < 1:
            raise ValueError(f"switch_after must be a positive int; got {switch_after!r}")
        self.switch_after = switch_after
        self.nonstiff = Tsit5()
        self.stiff = Rodas5P(jac=jac)
        self.order = min(self.nonstiff.order, self.stiff.order)
        self.error_order = max(self.nonstiff.error_order, self.stiff.error_order)
        self.dense_order = min(self.nonstiff.dense_order, self.stiff.dense_order)
        self.evals_per_step = 0  # depends on each sample's mode: reported as extra_evals
        tab = self.nonstiff.tableau
        # Y₇ − Y₆ = dt Σ_j (a_7j − a_6j) k_j for the two last stage inputs, both at c = 1.
        assert tab.c[-1] == tab.c[-2] == 1.0
        a6 = (*tab.a[-2], 0.0)
        self._stage_gap = tuple(x - y for x, y in zip(tab.a[-1], a6))

    def init_state(self, term: Term, t0, y0, f0) -> AutoSwitchState:
        zeros = torch.zeros(y0.shape[0], dtype=torch.int64, device=y0.device)
        return AutoSwitchState(
            stiff=zeros.bool(),
            streak=zeros,
            n_switches=zeros,
            ran_stiff=False,
            inner=self.stiff.init_state(term, t0, y0, f0),
        )

    def step(self, term, t, dt, y, f0, state: AutoSwitchState, rtol, atol) -> StepResult:
        stiff = state.stiff
        any_stiff, all_stiff = (bool(v) for v in torch.stack([stiff.any(), stiff.all()]).tolist())
        explicit = None if all_stiff else self.nonstiff.step(term, t, dt, y, f0)
        implicit = None
        if any_stiff:  # a sample's Jacobian is only current while it stays in stiff mode
            inner = state.inner._replace(current=state.inner.current & stiff)
            implicit = self.stiff.step(term, t, dt, y, f0, inner, rtol, atol)
        with torch.no_grad():
            if explicit is not None:
                # dt·ρ = ‖k₇ − k₆‖ / ‖(Y₇ − Y₆)/dt‖: Hairer's estimate needs no dt.
                gap = combine(self._stage_gap, explicit.ks)
                to_stiff = rms_norm(explicit.ks[-1] - explicit.ks[-2]) > STIFF_RATIO * rms_norm(gap)
            if implicit is not None:
                jac_norm = implicit.state.jac.abs().sum(-1).amax(-1)
                to_nonstiff = dt.abs() * jac_norm < STIFF_RATIO
            if explicit is None:
                indicator = to_nonstiff
            elif implicit is None:
                indicator = to_stiff
            else:
                indicator = torch.where(stiff, to_nonstiff, to_stiff)
            streak = torch.where(indicator, state.streak + 1, 0)
        if explicit is None or implicit is None:
            chosen = explicit if implicit is None else implicit
            extra = torch.full_like(state.streak, (self.nonstiff if implicit is None else self.stiff).evals_per_step)
            inner = state.inner if implicit is None else implicit.state
            data = (explicit, implicit, stiff)
            return chosen._replace(
                ks=data, state=state._replace(streak=streak, ran_stiff=any_stiff, inner=inner), extra_evals=extra
            )
        pick = stiff.reshape((-1,) + (1,) * (y.ndim - 1))
        return StepResult(
            y1=torch.where(pick, implicit.y1, explicit.y1),
            f1=torch.where(pick, implicit.f1, explicit.f1),
            y_err=torch.where(pick, implicit.y_err, explicit.y_err),
            y_err_low=None,
            ks=(explicit, implicit, stiff),
            f0=f0,
            state=state._replace(streak=streak, ran_stiff=True, inner=implicit.state),
            failed=implicit.failed & stiff,
            extra_evals=torch.where(stiff, self.stiff.evals_per_step, self.nonstiff.evals_per_step),
        )

    def commit(self, old: AutoSwitchState, new: AutoSwitchState, accept, running) -> AutoSwitchState:
        inner = self.stiff.commit(old.inner, new.inner, accept, running & old.stiff) if new.ran_stiff else old.inner
        streak = torch.where(running, new.streak, old.streak)
        switch = running & (streak >= self.switch_after)
        return AutoSwitchState(
            stiff=old.stiff ^ switch,
            streak=torch.where(switch, 0, streak),
            n_switches=old.n_switches + switch,
            ran_stiff=False,
            inner=inner,
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
