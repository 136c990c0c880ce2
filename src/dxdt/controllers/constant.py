"""Fixed steps: every step is ``dt0`` (the last one shortened to land on t1 or a save time)."""

from __future__ import annotations

from .base import AbstractController


class ConstantStepController(AbstractController):
    """Keeps ``dt`` unchanged; used automatically for methods without an error estimate."""

    def propose(self, dt, err, err_prev, accept, error_order):
        return dt, err_prev

    def __repr__(self) -> str:
        return "ConstantStepController()"
