"""The norm the error control uses."""

from __future__ import annotations

import math

import torch


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all but the leading (batch) dimension: ``(B, *S) -> (B,)``."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1) * (math.prod(x.shape[1:]) ** -0.5)
