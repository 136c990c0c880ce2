"""What a solve saves: t1 only (default), given times shared ``(T,)`` or per sample ``(B, T)``, every step,
and/or the dense solution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SaveAt:
    """Which times :func:`dxdt.solve` returns in ``Solution.ts`` / ``Solution.ys``.

    Args:
        ts: save times, ``(T,)`` shared by every sample or ``(B, T)`` per sample; strictly increasing
            (decreasing when integrating backwards) and inside ``[t0, t1]``. They may require grad: the
            saved states are differentiable with respect to them.
        steps: save ``t0`` and the end of every accepted step (``(B, T_max)``, NaN-padded).
        dense: keep the dense solution, so that ``Solution.evaluate(t)`` works anywhere in ``[t0, t1]``.

    With neither ``ts`` nor ``steps``, only ``t1`` is saved. Adaptive methods whose dense output is as
    accurate as their steps (Dopri5 and Tsit5 with their own interpolants; Bosh3 and Heun with cubic
    Hermite) interpolate at ``ts``; Dopri8, Vern7 and the fixed-step methods shorten their steps to land
    exactly on them.
    """

    ts: torch.Tensor | Sequence[float] | None = None
    steps: bool = False
    dense: bool = False

    def __post_init__(self) -> None:
        if self.ts is not None and self.steps:
            raise ValueError("SaveAt: give either ts or steps=True, not both")


def as_saveat(saveat: SaveAt | torch.Tensor | Sequence[float] | None) -> SaveAt:
    if saveat is None:
        return SaveAt()
    if isinstance(saveat, SaveAt):
        return saveat
    if isinstance(saveat, (torch.Tensor, list, tuple)):
        return SaveAt(ts=saveat)
    raise TypeError(
        f"saveat must be a SaveAt, a tensor of save times, or None; got {type(saveat).__name__}. "
        "Example: saveat=torch.linspace(0, 1, 11)"
    )


def check_save_times(
    ts: torch.Tensor | Sequence[float], t0: torch.Tensor, t1: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """Validate save times against each sample's interval and return them as float64 ``(B, T)``.

    The returned tensor keeps ``ts``'s autograd graph.
    """
    batch = t0.shape[0]
    if not isinstance(ts, torch.Tensor):  # Python numbers go straight to float64, never through float32
        ts = torch.tensor(ts, dtype=torch.float64, device=t0.device)
    if ts.ndim == 1:
        ts = ts.unsqueeze(0).expand(batch, -1)
    elif ts.ndim != 2 or ts.shape[0] != batch:
        raise ValueError(
            f"saveat ts must have shape (T,) (shared) or (B, T) = ({batch}, T) (per sample); got {tuple(ts.shape)}"
        )
    if ts.shape[1] == 0:
        raise ValueError("saveat ts is empty: give at least one save time, or omit it to save t1 only")
    ts = ts.to(torch.float64)
    values = ts.detach()
    if not torch.isfinite(values).all():
        raise ValueError(f"saveat ts contains NaN or inf: {values[~torch.isfinite(values)][:5].tolist()}")
    steps = (values[:, 1:] - values[:, :-1]) * direction[:, None]
    if (steps <= 0).any():
        b = int((steps <= 0).any(1).nonzero()[0])
        way = "increasing" if direction[b] > 0 else "decreasing (t1 < t0)"
        raise ValueError(
            f"saveat ts must be strictly {way}, like the integration from t0 to t1; sample {b} has "
            f"{values[b, :8].tolist()}{' ...' if values.shape[1] > 8 else ''}. Sort them and drop duplicates."
        )
    tau = (values - t0[:, None]) * direction[:, None]
    span = ((t1 - t0) * direction)[:, None]
    outside = (tau < 0) | (tau > span)
    if outside.any():
        b, j = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"saveat ts[{b}, {j}] = {values[b, j].item()} lies outside [t0, t1] = "
            f"[{t0[b].item()}, {t1[b].item()}]: every save time must be inside the interval of integration"
        )
    return ts
