"""Fixed steps: every step is ``dt0`` (the last one shortened to land on t1 or a save time)."""

from __future__ import annotations

from .base import AbstractController


class ConstantStepController(AbstractController):
    """Keeps ``dt`` unchanged and accepts every finite step (as diffrax's ``ConstantStepSize``).

    Used automatically for methods without an error estimate; with an adaptive method it turns off error
    control (the error estimate is computed but ignored).
    """

    accepts_every_step = True

    def propose(self, dt, err, err_prev, accept, error_order):
        return dt, err_prev

    def __repr__(self) -> str:
        return "ConstantStepController()"
