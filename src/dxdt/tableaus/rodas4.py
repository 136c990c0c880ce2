"""Hairer & Wanner's RODAS4: a six-stage, stiffly accurate, L-stable Rosenbrock method of order 4(3).

Written in the transformed form of :class:`~dxdt._tableau.RosenbrockTableau` (*Solving ODEs II*, IV.7,
(7.25)): with ``W = I / (dt γ) − J``, stage ``i`` solves ``W U_i = f(t + c_i dt, y + Σ_j a_ij U_j)
+ Σ_j (C_ij / dt) U_j + dt d_i ∂f/∂t``. This is the sign convention of Hairer's ``rodas.f`` (which factors
``E = I/(h γ) − J`` and adds ``C_ij/h · U_j`` to the right-hand side), so ``C`` is used as printed there.

Stiffly accurate: the fifth and sixth stages are evaluated at ``t + dt``, ``y1 = y + Σ_{j<6} a_6j U_j + U_6``
(so ``m = (a_61, ..., a_65, 1)``) and the embedded third-order solution is the argument of the last stage,
``y + Σ_j a_6j U_j``; the error estimate is therefore ``U_6`` alone.

Dense output (order 3): ``y(θ) = (1 − θ) y0 + θ (y1 + (1 − θ)(h_1 + θ h_2))`` with ``h_k = Σ_j H_kj U_j``;
the rows ``H`` are the ``D_ij`` of ``rodas.f``.

Coefficients (16 digits) from ``rodas.f`` (subroutine ``ROCOE``, ``METH = 1``), as transcribed in
OrdinaryDiffEq.jl (``OrdinaryDiffEqRosenbrock/src/rosenbrock_tableaus.jl``, ``Rodas4Tableau``) and diffrax
(``_solver/rodas4.py``).

Reference: E. Hairer, G. Wanner, *Solving Ordinary Differential Equations II: Stiff and Differential-Algebraic
Problems*, 2nd ed., Springer 1996, §IV.7 (method RODAS; Fortran code ``rodas.f``).
"""

from .._tableau import RosenbrockTableau

_A6 = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950)

RODAS4 = RosenbrockTableau(
    name="Rodas4",
    gamma=0.25,
    a=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        _A6,
        (*_A6, 1.0),
    ),
    C=(
        (),
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
    ),
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    d=(0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0),
    m=(*_A6, 1.0, 1.0),
    m_err=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    order=4,
    embedded_order=3,
    dense=(
        (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0.0),
        (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0.0),
    ),
    dense_order=3,
    reference="Hairer & Wanner, Solving ODEs II, 2nd ed. (1996), IV.7; rodas.f (ROCOE, METH=1)",
)
