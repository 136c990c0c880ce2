"""The Dormand–Prince 5(4) pair (DOPRI5): seven stages, first same as last, with a fourth-order dense output.

Fifth-order solution ``b`` (the last row of ``a``); fourth-order embedded solution
``b_hat = (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40)``; error weights
``b - b_hat``.

The dense output is Hairer's continuous extension from ``dopri5.f`` (subroutine ``CONTD5``, coefficients
``D1..D7``, Shampine's choice of the free parameter),

    y(t0 + θh) = y0 + θ (Δ + (1-θ) (h k1 - Δ + θ (2Δ - h k1 - h k7 + (1-θ) h Σ d_i k_i))),   Δ = y1 - y0,

expanded here, in exact rational arithmetic, into the polynomial weights ``b_i(θ) = Σ_k dense[i][k-1] θ^k``
(they coincide with SciPy's ``RK45.P``).

References:
    J. R. Dormand, P. J. Prince, "A family of embedded Runge–Kutta formulae", *J. Comput. Appl. Math.* 6
    (1980) 19–26.
    L. F. Shampine, "Some practical Runge–Kutta formulas", *Math. Comp.* 46 (1986) 135–150.
    E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed., Springer 1993,
    Table II.5.2 and §II.6 (dense output); Fortran code ``dopri5.f``.
"""

from .._tableau import ButcherTableau

DOPRI5 = ButcherTableau(
    name="Dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    order=5,
    b_err=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
    embedded_order=4,
    dense=(
        (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
        (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
        (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
        (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
        (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
    ),
    dense_order=4,
    reference="Dormand & Prince, J. Comput. Appl. Math. 6 (1980) 19-26; dense output: Hairer's dopri5.f (CONTD5)",
)
