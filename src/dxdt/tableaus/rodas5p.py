"""Steinebach's Rodas5P: an eight-stage, stiffly accurate Rosenbrock method of order 5(4) with dense output.

Written in the transformed form of :class:`~dxdt._tableau.RosenbrockTableau` (Hairer & Wanner, *Solving
ODEs II*, IV.7, (7.25)): with ``W = I / (dt γ) − J``, stage ``i`` solves ``W U_i = f(t + c_i dt,
y + Σ_j a_ij U_j) + Σ_j (C_ij / dt) U_j + dt d_i ∂f/∂t``.

Stiffly accurate: stages 6–8 are evaluated at ``t + dt``; ``y1 = y + Σ_{j<8} a_8j U_j + U_8`` (so
``m = (a_81, ..., a_87, 1)``) and the embedded fourth-order solution is the argument of the last stage, so
the error estimate is ``U_8`` alone.

Dense output (order 4): ``y(θ) = (1 − θ) y0 + θ (y1 + (1 − θ)(h_1 + θ (h_2 + θ h_3)))`` with
``h_k = Σ_j H_kj U_j``.

Coefficients (float64, 17 digits) from OrdinaryDiffEq.jl (``OrdinaryDiffEqRosenbrock/src/
rosenbrock_tableaus.jl``, ``Rodas5PTableau``; the same numbers are in diffrax ``_solver/rodas5p.py``).
OrdinaryDiffEq's step factors ``W = J − I/(dt γ)`` and solves ``W k_i = −(f + Σ C_ij/dt k_j + dt d_i ∂f/∂t)``,
which is the same equation as ours, so ``a``, ``C``, ``c``, ``d`` and ``H`` are used without sign changes
(the convergence tests in ``tests/test_stiff_tableaus.py`` confirm it, including on non-autonomous problems).
``c`` and ``d`` are taken from the variables so named there (the crawled version passes them to its
``RodasTableau`` constructor in the order ``(d, c)``); they satisfy the consistency conditions of the
transformed form (``d_i = u_i`` and ``c_i = Σ_j a_ij u_j`` with ``u_i/γ = 1 + Σ_j C_ij u_j``), which the
tests check, and swapping them drops the observed order to 2.

Reference: G. Steinebach, "Construction of Rosenbrock–Wanner method Rodas5P and numerical benchmarks within
the Julia Differential Equations package", *BIT Numer. Math.* 63 (2023) 27, doi:10.1007/s10543-023-00967-x.
"""

from .._tableau import RosenbrockTableau

_A8 = (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946)

RODAS5P = RosenbrockTableau(
    name="Rodas5P",
    gamma=0.21193756319429014,
    a=(
        (),
        (3.0,),
        (2.849394379747939, 0.45842242204463923),
        (-6.954028509809101, 2.489845061869568, -10.358996098473584),
        (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
        _A8,
        (*_A8, 1.0),
        (*_A8, 1.0, 1.0),
    ),
    C=(
        (),
        (-14.155112264123755,),
        (-17.97296035885952, -2.859693295451294),
        (147.12150275711716, -1.41221402718213, 71.68940251302358),
        (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
        (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471),
        (
            30.91273214028599,
            -3.1208243349937974,
            77.79954646070892,
            34.28646028294783,
            -19.097331116725623,
            -28.087943162872662,
        ),
        (
            37.80277123390563,
            -3.2571969029072276,
            112.26918849496327,
            66.9347231244047,
            -40.06618937091002,
            -54.66780262877968,
            -9.48861652309627,
        ),
    ),
    c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0),
    d=(
        0.21193756319429014,
        -0.42387512638858027,
        -0.3384627126235924,
        1.8046452872882734,
        2.325825639765069,
        0.0,
        0.0,
        0.0,
    ),
    m=(*_A8, 1.0, 1.0, 1.0),
    m_err=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    order=5,
    embedded_order=4,
    dense=(
        (
            25.948786856663858,
            -2.5579724845846235,
            10.433815404888879,
            -2.3679251022685204,
            0.524948541321073,
            1.1241088310450404,
            0.4272876194431874,
            -0.17202221070155493,
        ),
        (
            -9.91568850695171,
            -0.9689944594115154,
            3.0438037242978453,
            -24.495224566215796,
            20.176138334709044,
            15.98066361424651,
            -6.789040303419874,
            -6.710236069923372,
        ),
        (
            11.419903575922262,
            2.8879645146136994,
            72.92137995996029,
            80.12511834622643,
            -52.072871366152654,
            -59.78993625266729,
            -0.15582684282751913,
            4.883087185713722,
        ),
    ),
    dense_order=4,
    reference="Steinebach, BIT Numer. Math. 63 (2023) 27; coefficients from OrdinaryDiffEq.jl Rodas5PTableau",
)
