"""The explicit midpoint method (modified Euler method, Runge 1895): second order, two stages, fixed step.

Reference: C. Runge, "Über die numerische Auflösung von Differentialgleichungen", *Math. Ann.* 46 (1895)
167–178; E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed.,
Springer 1993, §II.1, eq. (1.3).
"""

from .._tableau import ButcherTableau

MIDPOINT = ButcherTableau(
    name="Midpoint",
    c=(0.0, 1 / 2),
    a=(
        (),
        (1 / 2,),
    ),
    b=(0.0, 1.0),
    order=2,
    reference="Runge (1895); Hairer, Nørsett & Wanner, Solving ODEs I (1993), §II.1",
)
