"""Kværnø's ESDIRK 3(2): four stages, explicit first stage, stiffly accurate, L-stable.

The third-order solution is the last stage (``b`` = last row of ``a``); the second-order embedded solution is
the third stage (``b_hat = (a_31, a_32, γ, 0)``); ``b_err = b − b_hat``. Stage times ``c = (0, 2γ, 1, 1)``.

The coefficients are the paper's closed forms in ``γ``. The paper prints ``γ = 0.4358665215``, the root of
``6γ³ − 18γ² + 9γ − 1 = 0`` that makes the method L-stable (``R(∞) = 0``); it is used here to full float64
precision, so that ``R(∞)`` vanishes to rounding instead of being ~1e-10. (diffrax ``_solver/kvaerno3.py``
uses the same formulas with ``γ = 0.43586652150``.)

Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit first stage",
*BIT Numer. Math.* 44 (2004) 489–502.
"""

from .._tableau import DIRKTableau

_g = 0.435866521508459  # root of 6γ³ − 18γ² + 9γ − 1 in (0, 1/2)
_a31 = (-4 * _g**2 + 6 * _g - 1) / (4 * _g)
_a32 = (-2 * _g + 1) / (4 * _g)
_a41 = (6 * _g - 1) / (12 * _g)
_a42 = -1 / ((24 * _g - 12) * _g)
_a43 = (-6 * _g**2 + 6 * _g - 1) / (6 * _g - 3)

KVAERNO3 = DIRKTableau(
    name="Kvaerno3",
    c=(0.0, 2 * _g, 1.0, 1.0),
    a=(
        (0.0,),
        (_g, _g),
        (_a31, _a32, _g),
        (_a41, _a42, _a43, _g),
    ),
    b=(_a41, _a42, _a43, _g),
    b_err=(_a41 - _a31, _a42 - _a32, _a43 - _g, _g),
    order=3,
    embedded_order=2,
    reference="Kvaerno, BIT 44 (2004) 489-502",
)
