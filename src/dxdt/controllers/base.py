"""The controller interface: propose the next step size from the error of the last one."""

from __future__ import annotations

import abc

import torch


class AbstractController(abc.ABC):
    """Chooses step sizes. ``propose`` is pure tensor code (no syncs, no state on ``self``)."""

    #: accept every finite step whatever its error estimate (constant steps)
    accepts_every_step: bool = False

    @abc.abstractmethod
    def propose(
        self,
        dt: torch.Tensor,
        err: torch.Tensor,
        err_prev: torch.Tensor,
        accept: torch.Tensor,
        error_order: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next ``|dt|`` and the error memory to carry.

        Args:
            dt: ``(B,)`` float64 size of the step just attempted (positive).
            err: ``(B,)`` float64 error ratio of that step (``<= 1`` accepted; NaN/inf when non-finite).
            err_prev: ``(B,)`` the memory returned last time (initially ones).
            accept: ``(B,)`` bool, which steps were accepted.
            error_order: the method's ``min(order, embedded order)``.
        """
