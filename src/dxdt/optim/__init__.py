"""Optimization as dynamics: gradient-flow optimizers, Newton flows, and stability/convergence analysis.

Optimizers (``torch.optim.Optimizer`` interface):

* :class:`GradientFlow`: ``θ' = −∇L`` integrated by an adaptive dxdt solver (explicit) or a matrix-free
  Rosenbrock method (``solver="ros2"``, stiff); steps chosen by error control, no learning rate.
* :class:`HeavyBall`, :class:`NesterovODE`: second-order ODEs, stably discretised.
* :class:`NewtonFlow` (damped Newton), :class:`GaussNewton`: conjugate gradients on Hessian- or
  Gauss–Newton-vector products.
* :class:`ProximalGradient`: L1 as soft-thresholding and L2 as linear damping, both implicit Euler steps.

Analysis: :func:`hvp` (``torch.func``), :class:`HessianOperator` (Lanczos eigenvalues, spectral density),
:func:`max_stable_lr` and friends, :class:`SharpnessTracker` (edge of stability), :func:`oja_pca`.
"""

from .edge_of_stability import SharpnessTracker as SharpnessTracker
from .gradient_flow import GradientFlow as GradientFlow
from .hessian import HessianOperator as HessianOperator
from .hessian import hvp as hvp
from .hessian import sharpness as sharpness
from .linalg import CGResult as CGResult
from .linalg import EigenResult as EigenResult
from .linalg import KrylovSpace as KrylovSpace
from .linalg import LanczosResult as LanczosResult
from .linalg import SpectralDensity as SpectralDensity
from .linalg import conjugate_gradient as conjugate_gradient
from .linalg import lanczos as lanczos
from .linalg import spectral_density as spectral_density
from .linalg import top_eigenvalues as top_eigenvalues
from .momentum import HeavyBall as HeavyBall
from .momentum import NesterovODE as NesterovODE
from .newton import GaussNewton as GaussNewton
from .newton import NewtonFlow as NewtonFlow
from .pca import OjaResult as OjaResult
from .pca import oja_pca as oja_pca
from .pca import oja_subspace_field as oja_subspace_field
from .pca import sanger_field as sanger_field
from .proximal import ProximalGradient as ProximalGradient
from .proximal import prox_elastic_net as prox_elastic_net
from .proximal import prox_l1 as prox_l1
from .proximal import prox_l2 as prox_l2
from .proximal import soft_threshold as soft_threshold
from .rosenbrock import MatrixFreeRosenbrock as MatrixFreeRosenbrock
from .stability import gd_rate as gd_rate
from .stability import gradient_flow_rate as gradient_flow_rate
from .stability import heavy_ball_max_stable_lr as heavy_ball_max_stable_lr
from .stability import heavy_ball_rate as heavy_ball_rate
from .stability import iterations_to_tolerance as iterations_to_tolerance
from .stability import max_stable_lr as max_stable_lr
from .stability import optimal_lr as optimal_lr
from .stability import polyak_heavy_ball as polyak_heavy_ball

__all__ = [
    "CGResult",
    "EigenResult",
    "GaussNewton",
    "GradientFlow",
    "HeavyBall",
    "HessianOperator",
    "KrylovSpace",
    "LanczosResult",
    "MatrixFreeRosenbrock",
    "NesterovODE",
    "NewtonFlow",
    "OjaResult",
    "ProximalGradient",
    "SharpnessTracker",
    "SpectralDensity",
    "conjugate_gradient",
    "gd_rate",
    "gradient_flow_rate",
    "heavy_ball_max_stable_lr",
    "heavy_ball_rate",
    "hvp",
    "iterations_to_tolerance",
    "lanczos",
    "max_stable_lr",
    "oja_pca",
    "oja_subspace_field",
    "optimal_lr",
    "polyak_heavy_ball",
    "prox_elastic_net",
    "prox_l1",
    "prox_l2",
    "sanger_field",
    "sharpness",
    "soft_threshold",
    "spectral_density",
    "top_eigenvalues",
]
