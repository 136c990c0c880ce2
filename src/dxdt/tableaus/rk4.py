"""The classical fourth-order Runge–Kutta method (Kutta 1901), fixed step.

Reference: W. Kutta, "Beitrag zur näherungsweisen Integration totaler Differentialgleichungen",
*Z. Math. Phys.* 46 (1901) 435–453; E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential
Equations I*, 2nd ed., Springer 1993, Table II.1.2 (left).
"""

from .._tableau import ButcherTableau

RK4 = ButcherTableau(
    name="RK4",
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    a=(
        (),
        (1 / 2,),
        (0.0, 1 / 2),
        (0.0, 0.0, 1.0),
    ),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
    reference="Kutta (1901); Hairer, Nørsett & Wanner, Solving ODEs I (1993), Table II.1.2",
)
