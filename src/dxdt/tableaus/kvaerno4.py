"""Kværnø's ESDIRK 4(3): five stages, explicit first stage, stiffly accurate, L-stable.

The fourth-order solution is the last stage (``b`` = last row of ``a``); the third-order embedded solution is
the fourth stage (``b_hat = (a_41, a_42, a_43, γ, 0)``); ``b_err = b − b_hat``. Stage times
``c = (0, 2γ, c_3, 1, 1)``.

The coefficients are the paper's closed forms in ``γ`` (as transcribed in diffrax ``_solver/kvaerno4.py``).
The paper describes two pairs sharing these formulas: this is the "4/3" one that advances with the
fourth-order last stage, with ``γ = 0.5728160625`` (printed), the root of
``24γ⁴ − 96γ³ + 72γ² − 16γ + 1 = 0`` that makes it L-stable; it is used here to full float64 precision.
(OrdinaryDiffEq.jl's ``Kvaerno4Tableau`` uses ``γ = 0.4358665215``, the value for the other, "3/4", pair,
while advancing with the last stage, as diffrax's source notes.)

Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit first stage",
*BIT Numer. Math.* 44 (2004) 489–502.
"""

from .._tableau import DIRKTableau

_g = 0.5728160624821349  # root of 24γ⁴ − 96γ³ + 72γ² − 16γ + 1 near 0.5728


def _p(*coeffs: float) -> float:
    """A polynomial in γ, highest power first."""
    acc = 0.0
    for k in coeffs:
        acc = acc * _g + k
    return acc


_a31 = _p(144, -180, 81, -15, 1) * _g / _p(12, -6, 1) ** 2
_a32 = _p(-36, 39, -15, 2) * _g / _p(12, -6, 1) ** 2
_a41 = _p(-144, 396, -330, 117, -18, 1) / (12 * _g**2 * _p(12, -9, 2))
_a42 = _p(72, -126, 69, -15, 1) / (12 * _g**2 * _p(3, -1))
_a43 = _p(-6, 6, -1) * _p(12, -6, 1) ** 2 / (12 * _g**2 * _p(12, -9, 2) * _p(3, -1))
_a51 = _p(288, -312, 120, -18, 1) / (48 * _g**2 * _p(12, -9, 2))
_a52 = _p(24, -12, 1) / (48 * _g**2 * _p(3, -1))
_a53 = -(_p(12, -6, 1) ** 3) / (48 * _g**2 * _p(3, -1) * _p(12, -9, 2) * _p(6, -6, 1))
_a54 = _p(-24, 36, -12, 1) / _p(24, -24, 4)

KVAERNO4 = DIRKTableau(
    name="Kvaerno4",
    c=(0.0, 2 * _g, _a31 + _a32 + _g, 1.0, 1.0),
    a=(
        (0.0,),
        (_g, _g),
        (_a31, _a32, _g),
        (_a41, _a42, _a43, _g),
        (_a51, _a52, _a53, _a54, _g),
    ),
    b=(_a51, _a52, _a53, _a54, _g),
    b_err=(_a51 - _a41, _a52 - _a42, _a53 - _a43, _a54 - _g, _g),
    order=4,
    embedded_order=3,
    reference="Kvaerno, BIT 44 (2004) 489-502",
)
