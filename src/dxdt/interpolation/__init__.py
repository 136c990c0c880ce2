"""Dense output inside one step: the methods' own interpolants, and cubic Hermite otherwise."""

from .hermite import hermite as hermite
from .polynomial import polynomial_weights as polynomial_weights

__all__ = ["hermite", "polynomial_weights"]
