"""The norm the error control uses."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all but the leading (batch) dimension: ``(B, *S) -> (B,)``."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1) * (x[0].numel() ** -0.5)
