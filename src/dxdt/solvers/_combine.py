"""Linear combinations of stage vectors with Python-float tableau weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def combine(weights: Sequence[float], vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_j w_j v_j`` over the non-zero weights, one fused kernel per term.

    Cheaper than stacking and a matmul for the small states where per-op overhead dominates, and the
    summation order per element does not depend on the batch size (batch invariance).
    """
    terms = [(w, v) for w, v in zip(weights, vectors) if w != 0.0]
    if not terms:
        return torch.zeros_like(vectors[0])
    w0, acc = terms[0]
    acc = acc * w0
    for w, v in terms[1:]:
        acc = acc.add(v, alpha=w)
    return acc


def per_sample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` tensor shaped to broadcast against ``like`` ``(B, *S)``, in ``like``'s dtype (masks stay bool)."""
    if x.dtype != torch.bool:
        x = x.to(like.dtype)
    return x.reshape((-1,) + (1,) * (like.ndim - 1))
