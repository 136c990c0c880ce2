"""Neural differential-equation models: tested, documented modules rather than example scripts.

- :class:`NeuralODE`: an ODE block around any vector-field module (augmented NODE option) and
  :class:`ConvODEFunc`, a convolutional vector field for ODE blocks inside CNNs, docs/neural_ode.md.
- :class:`CNF`: continuous normalizing flows (FFJORD) with exact or Hutchinson traces, docs/cnf.md.
- :func:`regularized`: kinetic-energy and Jacobian-norm regularizers for any vector field (Finlay et al.
  2020), docs/cnf.md.
- :class:`LatentODE`, :class:`ODERNN`: irregularly sampled time series (Rubanova et al. 2019), docs/latent_ode.md.
"""

from .cnf import CNF, CNFOutput, ConcatMLP
from .conv import ConvODEFunc
from .latent_ode import ODERNN, ELBOTerms, LatentODE, MLPField, gaussian_kl
from .neural_ode import NeuralODE
from .regularizers import Regularization, regularized

__all__ = [
    "CNF",
    "ODERNN",
    "CNFOutput",
    "ConcatMLP",
    "ConvODEFunc",
    "ELBOTerms",
    "LatentODE",
    "MLPField",
    "NeuralODE",
    "Regularization",
    "gaussian_kl",
    "regularized",
]
