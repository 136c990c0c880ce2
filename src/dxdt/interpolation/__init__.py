"""Dense output inside one step as a polynomial in θ: the methods' own interpolants, cubic Hermite otherwise."""

from .hermite import hermite_coefficients as hermite_coefficients
from .polynomial import evaluate_polynomial as evaluate_polynomial

__all__ = ["evaluate_polynomial", "hermite_coefficients"]
