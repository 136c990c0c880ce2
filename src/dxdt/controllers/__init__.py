"""Step-size control: PI/I error control for adaptive methods, constant steps for fixed-step ones."""

from .base import AbstractController as AbstractController
from .constant import ConstantStepController as ConstantStepController
from .initial_step import initial_step_size as initial_step_size
from .pi import IController as IController
from .pi import PIController as PIController

__all__ = ["AbstractController", "ConstantStepController", "IController", "PIController", "initial_step_size"]
