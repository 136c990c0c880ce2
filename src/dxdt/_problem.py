"""A validated solve, in the loop's layout: what every gradient strategy runs and turns into a Solution."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._loop import Loop, LoopResult, StepHook, integrate
from ._saveat import SaveAt, check_save_times
from ._solution import Solution, Stats, Status
from ._term import Term
from .controllers import AbstractController
from .interpolation.dense_solution import DenseSolution
from .solvers import AbstractSolver
from .solvers._combine import per_sample


@dataclass
class ODEProblem:
    """Everything :func:`dxdt.solve` validated, in the loop's layout.

    Joint mode is a batch of one whose state is the whole ``(B, *S)`` tensor: ``y0`` is ``(1, B, *S)``,
    times are ``(1,)``. ``n`` below is the loop's batch (``B`` per sample, 1 joint).
    """

    term: Term
    solver: AbstractSolver
    controller: AbstractController
    y0: torch.Tensor  # (n, *S_loop)
    t0: torch.Tensor  # (n,) float64 (may require grad: adjoints differentiate it)
    t1: torch.Tensor  # (n,) float64 (may require grad)
    direction: torch.Tensor  # (n,) float64, ±1
    ts: torch.Tensor | None  # (n, T) float64 save times (may require grad), or None (t1 only)
    shared_ts: bool  # the user gave (T,) save times
    joint: bool
    batch: int  # the user's B
    rtol: torch.Tensor  # y0's shape
    atol: torch.Tensor
    dt0: torch.Tensor | None
    dt_min: float
    dt_max: float
    max_steps: int
    save: SaveAt
    clip: bool  # steps land on save times (dense output less accurate than the method)
    step_past_t1: bool
    compile: bool

    def loop(self, *, record: bool | None = None, on_step: StepHook | None = None) -> Loop:
        """The loop for this problem; ``record`` defaults to what the save times and dense output need."""
        if record is None:
            # Past t1, the loop itself interpolates back to t1 unless t1 needs a gradient (the recorded steps'
            # interpolant gives d y(t1) / d t1).
            record = self.ts is not None or self.save.steps or self.save.dense
            record = record or (self.step_past_t1 and self.t1.requires_grad)
        return Loop(
            self.solver,
            self.controller,
            self.term,
            self.t0.detach(),
            self.t1.detach(),
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            max_steps=self.max_steps,
            stops=self.ts.detach() if self.clip else None,
            record=record,
            step_past_t1=self.step_past_t1,
            compile=self.compile,
            on_step=on_step,
        )

    def save_times(self) -> torch.Tensor:
        """``(n, T)`` float64: the save times, or each sample's ``t1`` when only the end is saved."""
        return self.ts if self.ts is not None else self.t1[:, None]

    def solve(self, run: Callable[[Loop, torch.Tensor], LoopResult] = integrate) -> tuple[Solution, DenseSolution]:
        """Run the loop (``run`` is plain :func:`integrate` or a checkpointed driver) and assemble the solution."""
        result = run(self.loop(), self.y0)
        return self.assemble(result)

    def assemble(self, result: LoopResult) -> tuple[Solution, DenseSolution]:
        """The :class:`Solution` in the user's layout, and the dense solution (loop layout) it came from."""
        t0, t1, direction, joint = self.t0.detach(), self.t1, self.direction, self.joint
        dense = DenseSolution(result.records, t0, result.t, direction, self.y0)
        success = result.status == Status.SUCCESS
        if self.ts is not None:
            out_ts, ys = (self.ts[0] if self.shared_ts else self.ts), dense(self.ts)
        elif self.save.steps:
            out_ts, ys = dense.steps()
        elif self.step_past_t1 and result.records is not None:
            out_ts = t1[:, None]
            ys = dense(out_ts)
        else:
            # dy(t1)/dt1 = f(t1, y(t1)): a straight-through term carries the gradient to t1.
            y1 = result.y + per_sample(t1 - t1.detach(), result.f) * result.f if t1.requires_grad else result.y
            out_ts = t1[:, None]
            ys = torch.where(per_sample(success, y1), y1, torch.nan).unsqueeze(1)

        evaluate = None
        if self.save.dense:

            def evaluate(t: torch.Tensor | float) -> torch.Tensor:
                t = torch.as_tensor(t, device=self.y0.device)
                scalar = t.ndim == 0
                tq = check_save_times(t.reshape(1) if scalar else t, t0, t1.detach(), direction)
                out = from_loop_layout(dense(tq), joint)
                return out[:, 0] if scalar else out

        stats = Stats(
            n_f_evals=result.n_f_evals,
            n_steps=result.n_steps,
            n_accepted=result.n_accepted,
            n_rejected=result.n_rejected,
            n_iterations=result.n_iterations,
            **result.solver_stats,
        )
        status, t_final, y_final = result.status, result.t, result.y
        if self.step_past_t1 and result.records is not None:  # the state at t1, not where the last step ended
            t_final = torch.where(success, t1.detach(), t_final)
            at_t1 = ys[:, 0] if self.ts is None and not self.save.steps else dense(t1.detach()[:, None])[:, 0]
            y_final = torch.where(per_sample(success, y_final), at_t1, y_final)
        if joint:
            expand = lambda x: x.expand(self.batch)  # noqa: E731
            stats = Stats(
                *(expand(x) for x in (stats.n_f_evals, stats.n_steps, stats.n_accepted, stats.n_rejected)),
                n_iterations=stats.n_iterations,
            )
            status, t_final, y_final = expand(status), expand(t_final), y_final[0]
            out_ts = out_ts[0]
        solution = Solution(
            ts=out_ts,
            ys=from_loop_layout(ys, joint),
            status=status,
            stats=stats,
            t_final=t_final,
            y_final=y_final,
            _dense=evaluate,
        )
        return solution, dense


def from_loop_layout(ys: torch.Tensor, joint: bool) -> torch.Tensor:
    """Joint mode's loop output ``(1, T, B, *S)`` becomes ``(B, T, *S)``."""
    return ys[0].movedim(0, 1) if joint else ys


def to_loop_layout(ys: torch.Tensor, joint: bool) -> torch.Tensor:
    """The inverse of :func:`from_loop_layout`: ``(B, T, *S)`` becomes ``(1, T, B, *S)`` in joint mode."""
    return ys.movedim(1, 0).unsqueeze(0) if joint else ys
