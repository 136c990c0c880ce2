"""The dense solution over a whole solve: find each query's step, then interpolate inside it."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .polynomial import evaluate_polynomial


class StepRecords(NamedTuple):
    """Every loop iteration's step, stacked: ``I`` iterations of a batch of ``B``.

    ``dt`` is the signed step for accepted steps and ``0`` for rejected steps and idle samples, so that each
    sample's step ends ``t_end`` never decrease along ``I`` (in the direction of integration).
    """

    t_start: torch.Tensor  # (I, B) float64
    t_end: torch.Tensor  # (I, B) float64: the step's end if accepted, else t_start
    dt: torch.Tensor  # (I, B) float64
    accepted: torch.Tensor  # (I, B) bool
    y1: torch.Tensor  # (I, B, *S): the step's end (its candidate, for rejected steps)
    coefficients: torch.Tensor  # (I, B, *S, m + 1): y(t_start + θ dt) = Σ_k θ^k P_k

    @staticmethod
    def stack(rows: list[tuple]) -> StepRecords:
        return StepRecords(*(torch.stack(col) for col in zip(*rows)))


class DenseSolution:
    """``y(t)`` anywhere in each sample's ``[t0, t_final]``, from the recorded steps."""

    def __init__(
        self,
        records: StepRecords | None,
        t0: torch.Tensor,
        t_final: torch.Tensor,
        direction: torch.Tensor,
        y0: torch.Tensor,
    ):
        self.records = records
        self.t0 = t0
        self.t_final = t_final
        self.direction = direction
        self.y0 = y0
        if records is not None:
            end = (records.t_end - t0) * direction  # (I, B), non-decreasing in I
            self._tau_end = end.T.contiguous()

    def __call__(self, tq: torch.Tensor) -> torch.Tensor:
        """``tq``: float64 ``(B, T)`` inside ``[t0, t1]``. Returns ``(B, T, *S)``; NaN past ``t_final``."""
        batch, n_t = tq.shape
        state_dims = (1,) * (self.y0.ndim - 1)
        tau_q = (tq.detach() - self.t0[:, None]) * self.direction[:, None]
        if self.records is None:
            out = self.y0.unsqueeze(1).expand(batch, n_t, *self.y0.shape[1:])
        else:
            rec = self.records
            idx = torch.searchsorted(self._tau_end, tau_q, side="left").clamp_max(rec.dt.shape[0] - 1)
            b = torch.arange(batch, device=tq.device)[:, None]
            dt = rec.dt[idx, b]
            t_start = rec.t_start[idx, b]
            moving = dt != 0
            theta = torch.where(moving, (tq - t_start) / torch.where(moving, dt, 1.0), 0.0)
            shape = (batch, n_t, *state_dims)
            coefficients = rec.coefficients[idx, b]
            out = evaluate_polynomial(coefficients, theta.to(self.y0.dtype).reshape(shape))
            # A rejected step's coefficients may be NaN; at its start (θ = 0) the state is just P_0.
            out = torch.where(moving.reshape(shape), out, coefficients[..., 0])
        reached = tau_q <= ((self.t_final - self.t0) * self.direction)[:, None]
        return torch.where(reached.reshape(batch, n_t, *state_dims), out, torch.nan)

    def steps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``t0`` and every accepted step's end: ``ts (B, 1 + max accepted)`` and ``ys``, NaN-padded."""
        batch = self.y0.shape[0]
        if self.records is None:
            return self.t0[:, None].clone(), self.y0.unsqueeze(1)
        rec = self.records
        acc = rec.accepted.T  # (B, I)
        slot = acc.long().cumsum(1)  # 1-based slot of each accepted step; slot 0 is t0
        n = int(slot[:, -1].max()) + 1
        b_idx, i_idx = acc.nonzero(as_tuple=True)
        s_idx = slot[b_idx, i_idx]
        ts = torch.full((batch, n), torch.nan, dtype=torch.float64, device=self.t0.device)
        ts[:, 0] = self.t0
        ts[b_idx, s_idx] = rec.t_end[i_idx, b_idx]
        ys = torch.full((batch, n, *self.y0.shape[1:]), torch.nan, dtype=self.y0.dtype, device=self.y0.device)
        ys = ys.index_put((torch.arange(batch, device=ts.device), torch.zeros_like(self.t0, dtype=torch.long)), self.y0)
        ys = ys.index_put((b_idx, s_idx), rec.y1[i_idx, b_idx])
        return ts, ys
