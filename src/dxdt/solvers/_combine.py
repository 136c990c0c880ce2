"""Linear combinations of stage vectors with Python-float tableau weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Below this many elements a stage vector is small enough that per-op overhead, not memory traffic, sets the
# cost: one stack and one matmul then beat a fused add per term even for a single row of weights.
SMALL_STATE = 1 << 15
# With fewer terms, the fused adds take no more kernels than stack, matmul and the reshapes around them.
MIN_MATMUL_TERMS = 4


def combine(weights: Sequence[float], vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_j w_j v_j`` over the non-zero weights, one fused kernel per term.

    The summation order per element does not depend on the batch size (batch invariance).
    """
    terms = [(w, v) for w, v in zip(weights, vectors) if w != 0.0]
    if not terms:
        return torch.zeros_like(vectors[0])
    w0, acc = terms[0]
    acc = acc * w0
    for w, v in terms[1:]:
        acc = acc.add(v, alpha=w)
    return acc


def matmul_is_exact(x: torch.Tensor) -> bool:
    """Whether a matmul in ``x``'s dtype rounds like elementwise arithmetic.

    CUDA float32 matmuls may run in TF32 (10-bit mantissa) when a user enables it globally, which would
    silently wreck a solver's error estimate; they keep the elementwise path.
    """
    if x.dtype in (torch.float64, torch.complex128):
        return True
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.complex64)


class Combinations:
    """Fixed rows of weights applied to stage vectors: ``out[r] = Σ_j W[r, j] v_j``.

    One ``stack`` and one matmul evaluate every row (and replace ``rows × terms`` elementwise kernels, which
    dominate a small system's eager step); a single row on a large state, a dtype whose matmul may round
    differently (see :func:`matmul_is_exact`), or a compiled graph (where inductor fuses the sums into the
    kernels around them) uses :func:`combine` per row. Only the columns with a non-zero
    weight are stacked.
    """

    def __init__(self, rows: Sequence[Sequence[float]]):
        self.rows = [tuple(float(w) for w in row) for row in rows]
        width = max((len(row) for row in self.rows), default=0)
        self.columns = [j for j in range(width) if any(j < len(row) and row[j] != 0.0 for row in self.rows)]
        self._dense = [[row[j] if j < len(row) else 0.0 for j in self.columns] for row in self.rows]
        self._matrices: dict[tuple[torch.dtype, torch.device, bool], torch.Tensor | None] = {}

    def _matrix(self, v: torch.Tensor) -> torch.Tensor | None:
        """The weights as a matrix in ``v``'s dtype and device when the matmul path applies to ``v``, else None."""
        if torch.compiler.is_compiling():
            return None  # compiled, the elementwise sums fuse into the kernels around them; a matmul would not
        key = (v.dtype, v.device, v.numel() <= SMALL_STATE)
        if key in self._matrices:
            return self._matrices[key]
        use = len(self.columns) >= MIN_MATMUL_TERMS and matmul_is_exact(v) and (len(self.rows) > 1 or key[2])
        matrix = torch.tensor(self._dense, dtype=v.dtype, device=v.device) if use else None
        self._matrices[key] = matrix  # a constant of the method, cached per dtype, device and size class
        return matrix

    def _matmul(self, w: torch.Tensor, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(R, numel)``: the weight matrix times the stacked non-zero columns."""
        return w @ torch.stack([vectors[j] for j in self.columns]).reshape(len(self.columns), -1)

    def __call__(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Every row: ``(R, *v.shape)``."""
        v = vectors[0]
        w = self._matrix(v)
        if w is None:
            return torch.stack([combine(row, vectors) for row in self.rows])
        return self._matmul(w, vectors).reshape(len(self.rows), *v.shape)

    def one(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The only row (one-row combinations): ``v.shape``."""
        v = vectors[0]
        w = self._matrix(v)
        if w is None:
            return combine(self.rows[0], vectors)
        return self._matmul(w, vectors).reshape(v.shape)


def per_sample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` tensor shaped to broadcast against ``like`` ``(B, *S)``, in ``like``'s dtype (masks stay bool)."""
    if x.dtype != torch.bool:
        x = x.to(like.dtype)
    return x.reshape((-1,) + (1,) * (like.ndim - 1))
