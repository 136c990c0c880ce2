"""Ralston's second-order method (minimum local error bound among two-stage second-order methods), fixed step.

Reference: A. Ralston, "Runge–Kutta methods with minimum error bounds", *Math. Comp.* 16 (1962) 431–437.
"""

from .._tableau import ButcherTableau

RALSTON = ButcherTableau(
    name="Ralston",
    c=(0.0, 2 / 3),
    a=(
        (),
        (2 / 3,),
    ),
    b=(1 / 4, 3 / 4),
    order=2,
    reference="Ralston, Math. Comp. 16 (1962) 431-437",
)
