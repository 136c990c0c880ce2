"""Heun's second-order method (explicit trapezoidal rule) with embedded forward Euler: an adaptive 2(1) pair.

The same pair as torchdiffeq's ``adaptive_heun``. The step is Heun's ``b = (1/2, 1/2)``; the embedded
method is Euler's ``b_hat = (1, 0)``, so the error weights are ``b - b_hat = (-1/2, 1/2)``.

Reference: K. Heun, "Neue Methode zur approximativen Integration der Differentialgleichungen einer
unabhängigen Veränderlichen", *Z. Math. Phys.* 45 (1900) 23–38; E. Hairer, S. P. Nørsett, G. Wanner,
*Solving Ordinary Differential Equations I*, 2nd ed., Springer 1993, §II.1.
"""

from .._tableau import ButcherTableau

HEUN = ButcherTableau(
    name="Heun",
    c=(0.0, 1.0),
    a=(
        (),
        (1.0,),
    ),
    b=(1 / 2, 1 / 2),
    order=2,
    b_err=(-1 / 2, 1 / 2),
    embedded_order=1,
    reference="Heun (1900); embedded Euler as in torchdiffeq's adaptive_heun",
)
