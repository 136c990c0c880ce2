"""Neural differential-equation models: tested, documented modules rather than example scripts.

- :class:`LatentODE`, :class:`ODERNN`: irregularly sampled time series (Rubanova et al. 2019), docs/latent_ode.md.
"""

from .latent_ode import ODERNN, ELBOTerms, LatentODE, MLPField, gaussian_kl

__all__ = ["ODERNN", "ELBOTerms", "LatentODE", "MLPField", "gaussian_kl"]
