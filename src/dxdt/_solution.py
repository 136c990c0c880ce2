"""What a solve returns: the solution, per-sample statistics and status, and the error raised on failure."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch


class Status(enum.IntEnum):
    """Per-sample outcome of a solve. Each member carries the message shown to users."""

    SUCCESS = 0
    MAX_STEPS = 1
    DT_UNDERFLOW = 2
    NONFINITE = 3
    NEWTON_FAILURE = 4

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "reached t1",
    Status.MAX_STEPS: (
        "ran out of steps (max_steps): raise max_steps, loosen rtol/atol, or, if the problem is stiff, "
        "use a stiff solver"
    ),
    Status.DT_UNDERFLOW: (
        "the step size fell below dt_min or the resolution of t: the solution may blow up or have a "
        "singularity there, or the problem is stiff (use a stiff solver) or rtol/atol are too tight"
    ),
    Status.NONFINITE: (
        "f or the state became NaN/inf and shrinking the step did not help: check f for divisions by zero, "
        "logs of negatives or overflow at the time reached"
    ),
    Status.NEWTON_FAILURE: (
        "the implicit solver's Newton iteration kept failing (or its matrix was singular) as the step shrank: "
        "check f and its Jacobian (pass jac=...), loosen rtol/atol, or try a Rosenbrock method (rodas5p)"
    ),
}

# Internal marker for samples still integrating; never visible in a returned Solution.
RUNNING = -1


@dataclass(frozen=True)
class Stats:
    """Per-sample counters, each a ``(B,)`` int64 tensor.

    Attributes:
        n_f_evals: evaluations of the vector field (each sample counted separately).
        n_steps: attempted steps (accepted + rejected).
        n_accepted: accepted steps.
        n_rejected: rejected steps.
        n_iterations: iterations of the batched loop (a Python int, the same for all samples): the
            quantity that sets wall time when samples need different numbers of steps.
        n_jac_evals, n_lu_decompositions, n_newton_iters, n_newton_failures: implicit solvers' work (zeros
            for explicit methods). Jacobian evaluations are not included in ``n_f_evals``.
        n_switches: switches between the explicit and the stiff method (automatic switching only).
    """

    n_f_evals: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    n_iterations: int
    n_jac_evals: torch.Tensor | None = None
    n_lu_decompositions: torch.Tensor | None = None
    n_newton_iters: torch.Tensor | None = None
    n_newton_failures: torch.Tensor | None = None
    n_switches: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("n_jac_evals", "n_lu_decompositions", "n_newton_iters", "n_newton_failures", "n_switches"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, torch.zeros_like(self.n_steps))

    def summary(self) -> str:
        def span(x: torch.Tensor) -> str:
            lo, hi = int(x.min()), int(x.max())
            return str(lo) if lo == hi else f"{lo}..{hi} (mean {x.double().mean():.1f})"

        text = (
            f"steps {span(self.n_steps)}, accepted {span(self.n_accepted)}, rejected {span(self.n_rejected)}, "
            f"f evals {span(self.n_f_evals)}, loop iterations {self.n_iterations}"
        )
        if bool(self.n_jac_evals.any()):
            text += f", Jacobians {span(self.n_jac_evals)}, LU {span(self.n_lu_decompositions)}"
        if bool(self.n_newton_iters.any()):
            text += f", Newton iterations {span(self.n_newton_iters)}, failures {span(self.n_newton_failures)}"
        if bool(self.n_switches.any()):
            text += f", switches {span(self.n_switches)}"
        return text


@dataclass
class Solution:
    """The result of :func:`dxdt.solve`.

    Attributes:
        ts: save times, float64: ``(T,)`` when given shared (and in joint mode), ``(B, T)`` when given per
            sample; ``(B, 1)`` (each sample's ``t1``) by default. When every step is saved, ``(B, T_max)``
            padded with NaN after each sample's last step.
        ys: states at ``ts``, shape ``(B, T, *S)`` (batch first, then time, then the state's own shape),
            in the dtype and on the device of ``y0``. Entries a failed sample did not reach are NaN.
        status: ``(B,)`` int64 tensor of :class:`Status` values.
        stats: per-sample :class:`Stats`.
        t_final: ``(B,)`` float64 time each sample reached (``t1`` on success).
        y_final: ``(B, *S)`` state at ``t_final``.
    """

    ts: torch.Tensor
    ys: torch.Tensor
    status: torch.Tensor
    stats: Stats
    t_final: torch.Tensor
    y_final: torch.Tensor
    _dense: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def success(self) -> torch.Tensor:
        """``(B,)`` bool: which samples reached ``t1``."""
        return self.status == Status.SUCCESS

    def evaluate(self, t: torch.Tensor | float) -> torch.Tensor:
        """Evaluate the dense solution at ``t``: a scalar, ``(T,)`` shared or ``(B, T)`` per sample.

        Returns ``(B, *S)`` for a scalar ``t`` and ``(B, T, *S)`` otherwise. Requires
        ``SaveAt(dense=True)``. Times outside ``[t0, t_final]`` raise ``ValueError``.
        """
        if self._dense is None:
            raise ValueError("Solution.evaluate needs dense output: pass saveat=SaveAt(dense=True) to solve()")
        return self._dense(t)

    def describe(self) -> str:
        """A human-readable summary of status counts and statistics."""
        return describe_status(self.status) + "; " + self.stats.summary()


def describe_status(status: torch.Tensor) -> str:
    counts = torch.bincount(status.clamp_min(0).cpu(), minlength=len(Status)).tolist()
    n = status.numel()
    parts = [f"{counts[s]} {s.name.lower()}" for s in Status if counts[s]]
    return f"{n} sample{'s' if n != 1 else ''}: " + ", ".join(parts)


class SolveError(RuntimeError):
    """Raised (with ``throw=True``) when some samples did not reach ``t1``.

    Attributes:
        solution: the partial :class:`Solution` (failed samples hold their last state; save times they
            did not reach are NaN).
    """

    def __init__(self, solution: Solution):
        self.solution = solution
        failed = ~solution.success
        n_failed, n = int(failed.sum()), failed.numel()
        lines = [f"{n_failed} of {n} sample{'s' if n != 1 else ''} failed to reach t1:"]
        for s in Status:
            if s is Status.SUCCESS:
                continue
            idx = (solution.status == s).nonzero().flatten()
            if idx.numel():
                shown = ", ".join(str(i) for i in idx[:8].tolist()) + (", ..." if idx.numel() > 8 else "")
                t_reached = solution.t_final[idx[0]].item()
                lines.append(
                    f"  {idx.numel()} × {s.name} (samples {shown}; sample {idx[0].item()} stopped at "
                    f"t = {t_reached:.6g}): {s.message}."
                )
        lines.append(
            "The partial solution is attached as error.solution; pass throw=False to get it returned with "
            "per-sample status instead."
        )
        super().__init__("\n".join(lines))
