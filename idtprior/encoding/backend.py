"""One array-module switch for the encoding cores: NumPy on the CPU, CuPy on a GPU.

The cores call ``xp = get_array_module(x)`` and then use ``xp.`` functions only, so the same code runs on host arrays
(NumPy) and device arrays (CuPy). CuPy is optional: without it every array is a NumPy array.
"""

from types import ModuleType
from typing import Any

import numpy as np

try:  # optional: only on machines with a CUDA device and `pip install cupy-cuda12x`
    import cupy  # type: ignore[import-not-found]
except Exception:  # ImportError, or a CuPy without a usable CUDA runtime
    cupy = None


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays: Any) -> ModuleType:
    """The module (``numpy`` or ``cupy``) that owns the given arrays; ``numpy`` when none is a CuPy array."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def sparse_module(xp: ModuleType) -> ModuleType:
    """``scipy.sparse`` for NumPy arrays, ``cupyx.scipy.sparse`` for CuPy arrays."""
    if xp is np:
        import scipy.sparse as sp

        return sp
    import cupyx.scipy.sparse as csp  # type: ignore[import-not-found]

    return csp


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy of ``a`` (a no-op view for NumPy input)."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return np.asarray(a)


def to_device(a: np.ndarray, xp: ModuleType) -> Any:
    """``a`` as an array of ``xp`` (copies host -> device for CuPy)."""
    return a if xp is np else xp.asarray(a)
