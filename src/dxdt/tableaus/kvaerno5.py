"""Kværnø's ESDIRK 5(4): seven stages, explicit first stage, stiffly accurate, L-stable, ``γ = 0.26``.

The fifth-order solution is the last stage (``b`` = last row of ``a``); the fourth-order embedded solution is
the sixth stage (``b_hat = (a_61, ..., a_65, γ, 0)``); ``b_err = b − b_hat``.

Coefficients (17 digits) from the paper, as transcribed in diffrax ``_solver/kvaerno5.py`` and OrdinaryDiffEq.jl
(``OrdinaryDiffEqSDIRK``, ``Kvaerno5Tableau``).

Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit first stage",
*BIT Numer. Math.* 44 (2004) 489–502.
"""

from .._tableau import DIRKTableau

_g = 0.26
_A6 = (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676)
_B = (
    0.13659751177640291,
    0.0,
    -0.05496908796538376,
    -0.04118626728321046,
    0.62993304899016403,
    0.06962479448202728,
    _g,
)

KVAERNO5 = DIRKTableau(
    name="Kvaerno5",
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=(
        (0.0,),
        (_g, _g),
        (0.13, 0.84033320996790809, _g),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _g),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, _g),
        (*_A6, _g),
        _B,
    ),
    b=_B,
    # b − b_hat with b_hat = (a_61, ..., a_65, γ, 0)
    b_err=tuple(bi - hi for bi, hi in zip(_B, (*_A6, _g, 0.0))),
    order=5,
    embedded_order=4,
    reference="Kvaerno, BIT 44 (2004) 489-502",
)
