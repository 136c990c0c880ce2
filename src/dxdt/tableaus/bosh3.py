"""The Bogacki–Shampine 3(2) pair: four stages, first same as last.

Third-order solution ``b = (2/9, 1/3, 4/9, 0)``; second-order embedded solution
``b_hat = (7/24, 1/4, 1/3, 1/8)``; error weights ``b - b_hat``.

Reference: P. Bogacki, L. F. Shampine, "A 3(2) pair of Runge–Kutta formulas", *Appl. Math. Lett.* 2 (1989)
321–325. (Same coefficients as MATLAB's ``ode23`` and SciPy's ``RK23``.)
"""

from .._tableau import ButcherTableau

BOSH3 = ButcherTableau(
    name="Bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=(
        (),
        (1 / 2,),
        (0.0, 3 / 4),
        (2 / 9, 1 / 3, 4 / 9),
    ),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    order=3,
    # b - b_hat = (2/9 - 7/24, 1/3 - 1/4, 4/9 - 1/3, 0 - 1/8)
    b_err=(-5 / 72, 1 / 12, 1 / 9, -1 / 8),
    embedded_order=2,
    reference="Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321-325",
)
