"""Count sketch (Charikar et al. 2002; the paper's projection of Fisher vectors to 2000 dims).

Input dimension i goes to bucket ``h(i)`` with sign ``s(i)``: ``y[h(i)] += s(i) x[i]``. ``h`` and ``s`` are drawn from a
seeded generator, so the seed (stored in the codebook) fixes the projection for every video. The map is applied as a sparse
matrix with one non-zero per input dimension (or a bincount for one vector); a dense (d, d') matrix is never built.

It preserves inner products in expectation: ``E[<Sx, Sy>] = <x, y>`` and
``Var[<Sx, Sy>] = (|x|^2 |y|^2 + <x, y>^2 - 2 sum_i x_i^2 y_i^2) / d'`` (at most ``2 / d'`` for unit vectors).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from idtprior.encoding.backend import get_array_module, sparse_module


@dataclass(frozen=True)
class CountSketch:
    """A count-sketch projection from ``dim_in`` to ``dim_out`` dimensions.

    Attributes:
        buckets: (dim_in,) int64 in [0, dim_out), the hash h.
        signs: (dim_in,) float32 in {-1, +1}, the sign s.
        dim_out: output dimension d'.
        seed: the seed the hash and signs were drawn from.
    """

    buckets: np.ndarray
    signs: np.ndarray
    dim_out: int
    seed: int

    @classmethod
    def from_seed(cls, dim_in: int, dim_out: int = 2000, seed: int = 0) -> "CountSketch":
        """Draw h and s for ``dim_in`` input dimensions from ``seed`` (NumPy PCG64: same numbers on every machine)."""
        if not isinstance(dim_in, (int, np.integer)) or dim_in < 1:
            raise ValueError(f"dim_in: must be a positive integer, got {dim_in!r}")
        if not isinstance(dim_out, (int, np.integer)) or dim_out < 1:
            raise ValueError(f"dim_out: must be a positive integer, got {dim_out!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EC7C4]))
        buckets = rng.integers(0, dim_out, size=int(dim_in), dtype=np.int64)
        signs = (rng.integers(0, 2, size=int(dim_in)) * 2 - 1).astype(np.float32)
        return cls(buckets=buckets, signs=signs, dim_out=int(dim_out), seed=int(seed))

    @property
    def dim_in(self) -> int:
        return int(self.buckets.shape[0])


def count_sketch(x: Any, sketch: Any) -> Any:
    """Project ``x`` with a count sketch.

    Args:
        x: (d,) or (n, d) float array (NumPy or CuPy), d = ``sketch.dim_in``.
        sketch: a :class:`CountSketch`, or a :class:`~idtprior.encoding.codebook.Codebook` (its sketch is used).
    Returns:
        (d',) or (n, d') float32, d' = ``sketch.dim_out``, on the input's array module.
    """
    if not isinstance(sketch, CountSketch):
        inner = getattr(sketch, "sketch", None)
        if not isinstance(inner, CountSketch):
            raise TypeError(f"sketch: expected a CountSketch or a Codebook, got {type(sketch).__name__}")
        sketch = inner
    xp = get_array_module(x)
    ndim = getattr(x, "ndim", None)
    if ndim not in (1, 2):
        raise ValueError(f"x: expected shape (d,) or (n, d), got {getattr(x, 'shape', type(x).__name__)}")
    d = x.shape[-1]
    if d != sketch.dim_in:
        raise ValueError(f"x: {d} dimensions, the sketch expects dim_in={sketch.dim_in}")
    buckets = xp.asarray(sketch.buckets)
    signs = xp.asarray(sketch.signs)
    if ndim == 1:
        w = xp.asarray(x, dtype=xp.float64) * signs
        return xp.bincount(buckets, weights=w, minlength=sketch.dim_out).astype(xp.float32)
    sp = sparse_module(xp)
    proj = sp.csc_matrix((signs, (xp.arange(d), buckets)), shape=(d, sketch.dim_out))  # (d, d'), d non-zeros
    # (n, d) @ (d, d') as (proj^T @ x^T)^T: the sparse operand on the left works for both scipy and cupyx.
    out = (proj.T @ xp.asarray(x, dtype=xp.float32).T).T
    return xp.ascontiguousarray(xp.asarray(out, dtype=xp.float32))
