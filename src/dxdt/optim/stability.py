"""Step-size stability bounds and linear convergence rates near a minimum.

Near a minimum the loss is the quadratic ``½ (θ − θ*)ᵀ H (θ − θ*)``, and every eigendirection of ``H``
(eigenvalue ``λ``) evolves on its own:

* gradient flow ``θ' = −∇L``: ``e^{−λ t}``; gradient descent is its explicit Euler method with step
  ``η``: the factor ``1 − η λ`` per step, stable iff ``|1 − η λ| < 1`` for all ``λ``, i.e.
  ``0 < η < 2/λmax``, and the rate is ``max(|1 − η λmin|, |1 − η λmax|)``, smallest at
  ``η = 2/(λmin + λmax)`` where it is ``(κ − 1)/(κ + 1)``.
* heavy ball ``θ_{k+1} = θ_k − α ∇L + β (θ_k − θ_{k−1})`` (a discretisation of ``θ'' + a θ' + ∇L = 0``):
  the characteristic polynomial ``r² − (1 + β − α λ) r + β`` has both roots inside the unit circle iff
  ``0 <= β < 1`` and ``0 < α λ < 2 (1 + β)``: the largest stable learning rate is ``2 (1 + β)/λmax``.
  Polyak's tuning gives the rate ``(√κ − 1)/(√κ + 1)``.
"""

from __future__ import annotations

import math


def _check_curvature(lambda_min: float | None, lambda_max: float) -> None:
    if not lambda_max > 0:
        raise ValueError(f"lambda_max must be positive (a minimum); got {lambda_max}")
    if lambda_min is not None and not 0 <= lambda_min <= lambda_max:
        raise ValueError(f"need 0 <= lambda_min <= lambda_max; got {lambda_min}, {lambda_max}")


def max_stable_lr(lambda_max: float) -> float:
    """The largest stable learning rate of gradient descent, ``2/λmax``: beyond it the sharpest direction
    grows by ``|1 − η λmax| > 1`` per step."""
    _check_curvature(None, lambda_max)
    return 2.0 / lambda_max


def heavy_ball_max_stable_lr(lambda_max: float, momentum: float) -> float:
    """The largest stable learning rate ``α`` of the heavy ball with momentum ``β``: ``2 (1 + β)/λmax``."""
    _check_curvature(None, lambda_max)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1); got {momentum}")
    return 2.0 * (1.0 + momentum) / lambda_max


def optimal_lr(lambda_min: float, lambda_max: float) -> float:
    """The fixed learning rate with the fastest worst-case rate on ``[λmin, λmax]``: ``2/(λmin + λmax)``."""
    _check_curvature(lambda_min, lambda_max)
    return 2.0 / (lambda_min + lambda_max)


def gd_rate(lr: float, lambda_min: float, lambda_max: float) -> float:
    """The per-step contraction of ``‖θ − θ*‖`` by gradient descent: ``max(|1 − η λmin|, |1 − η λmax|)``
    (``>= 1``: no convergence)."""
    _check_curvature(lambda_min, lambda_max)
    return max(abs(1 - lr * lambda_min), abs(1 - lr * lambda_max))


def _hb_root(lr: float, momentum: float, lam: float) -> float:
    """Spectral radius of the heavy ball's 2×2 iteration matrix on one eigenvalue."""
    tr = 1 + momentum - lr * lam
    disc = tr * tr - 4 * momentum
    if disc < 0:
        return math.sqrt(momentum)
    return (abs(tr) + math.sqrt(disc)) / 2


def heavy_ball_rate(lr: float, momentum: float, lambda_min: float, lambda_max: float) -> float:
    """The per-step contraction of the heavy ball on ``[λmin, λmax]`` (the worst eigenvalue).

    The root modulus is ``√β`` where the roots are complex and grows towards the ends of the interval, so the
    worst case is at ``λmin``, ``λmax`` or, in between, ``√β``."""
    _check_curvature(lambda_min, lambda_max)
    return max(_hb_root(lr, momentum, lambda_min), _hb_root(lr, momentum, lambda_max))


def polyak_heavy_ball(lambda_min: float, lambda_max: float) -> tuple[float, float]:
    """Polyak's optimal heavy-ball ``(lr, momentum)`` for a quadratic: ``α = 4/(√L + √μ)²``,
    ``β = ((√L − √μ)/(√L + √μ))²``, rate ``(√κ − 1)/(√κ + 1)``."""
    _check_curvature(lambda_min, lambda_max)
    sl, sm = math.sqrt(lambda_max), math.sqrt(lambda_min)
    return 4.0 / (sl + sm) ** 2, ((sl - sm) / (sl + sm)) ** 2


def gradient_flow_rate(lambda_min: float) -> float:
    """The continuous-time rate of gradient flow: ``‖θ(t) − θ*‖ <= e^{−λmin t} ‖θ(0) − θ*‖``."""
    if not lambda_min > 0:
        raise ValueError(f"lambda_min must be positive for linear convergence; got {lambda_min}")
    return lambda_min


def iterations_to_tolerance(rate: float, reduction: float) -> float:
    """Steps for a linear rate ``rate`` to shrink the error by the factor ``reduction`` (e.g. 1e-8)."""
    if not 0 < reduction < 1:
        raise ValueError(f"reduction must be in (0, 1); got {reduction}")
    if rate >= 1:
        return math.inf
    if rate <= 0:
        return 1.0
    return math.log(reduction) / math.log(rate)
