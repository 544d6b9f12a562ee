"""The compiled per-pixel loops of the IDT extractor (``_kernels.c``, built by pip with the package), as functions on
numpy arrays. Each checks its arrays' types, shapes and layout before the C code sees a pointer."""

import ctypes
import hashlib
from pathlib import Path

import numpy as np

_SOURCE = Path(__file__).with_name("_kernels.c")
_REBUILD = "rebuild it: `pip install -e .` (or `python setup.py build_ext --inplace`) in the repository"
try:
    from . import _kernels
except ImportError as e:  # a source tree nobody built
    raise ImportError(f"idtprior's compiled IDT kernels (from {_SOURCE}) are not built: {_REBUILD}") from e

_lib = ctypes.CDLL(_kernels.__file__)
_lib.idt_kernels_source_sha256.restype = ctypes.c_char_p
if _SOURCE.is_file():
    _built, _now = _lib.idt_kernels_source_sha256().decode(), hashlib.sha256(_SOURCE.read_bytes()).hexdigest()
    if _built != _now:
        raise ImportError(f"{_kernels.__file__} was built from another version of {_SOURCE} "
                          f"(sha256 {_built[:12]}, the file's is now {_now[:12]}): {_REBUILD}")
_F32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_U8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_I64 = ctypes.c_int64
_lib.idt_farneback_update.argtypes = [_F32, _F32, _F32, _F32, _F32, _I64, _I64]
_lib.idt_farneback_update.restype = None
_lib.idt_farneback_solve.argtypes = [_F32, _F32, _I64]
_lib.idt_farneback_solve.restype = None
_lib.idt_orientation_votes.argtypes = [_F32, _F32, ctypes.c_void_p, _F32, _I64, _I64, _I64, _I64, ctypes.c_float]
_lib.idt_orientation_votes.restype = None


def _check(name: str, a: np.ndarray, shape: tuple[int, ...], dtype=np.float32) -> None:
    if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                         f"got {a.dtype} {a.shape} (contiguous: {a.flags.c_contiguous})")


def farneback_update(R0: np.ndarray, R1: np.ndarray, flow: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Farneback's displacement terms (h, w, 5) float32 [G11, G12, G22, h1, h2] from the expansions ``R0``, ``R1``
    (h, w, 5), the current ``flow`` (h, w, 2) and the ``edge`` weights (h, w), all float32."""
    h, w = flow.shape[:2]
    flow = np.ascontiguousarray(flow)
    for name, a, shape in (("R0", R0, (h, w, 5)), ("R1", R1, (h, w, 5)), ("flow", flow, (h, w, 2)),
                           ("edge", edge, (h, w))):
        _check(name, a, shape)
    M = np.empty((h, w, 5), np.float32)
    _lib.idt_farneback_update(R0, R1, flow, edge, M, h, w)
    return M


def farneback_solve(A: np.ndarray) -> np.ndarray:
    """The flow (h, w, 2) float32 solving each pixel's 2x2 system from its window-averaged terms ``A`` (h, w, 5)
    float32 (in float64)."""
    _check("A", A, A.shape[:2] + (5,))
    flow = np.empty(A.shape[:2] + (2,), np.float32)
    _lib.idt_farneback_solve(A, flow, A.shape[0] * A.shape[1])
    return flow


def orientation_votes(mag: np.ndarray, ang: np.ndarray, out: np.ndarray, first: int, nbins: int,
                      zero: np.ndarray | None = None) -> None:
    """Write the votes of n pixels (``mag``, ``ang`` (n,) float32, angles in [0, 2 pi]) into channels
    ``first : first + nbins`` of ``out`` (n, C) float32: each magnitude split linearly between the two nearest of
    ``nbins`` full-circle bins, the other bins zero; ``zero`` (n,) bool: pixels that vote nothing."""
    n = mag.shape[0]
    _check("mag", mag, (n,))
    _check("ang", ang, (n,))
    if out.ndim != 2 or out.shape[0] != n or not 0 <= first <= out.shape[1] - nbins:
        raise ValueError(f"out: expected (n={n}, C >= {first + nbins}), got {out.shape}")
    _check("out", out, out.shape)
    zp = None
    if zero is not None:
        zero = np.ascontiguousarray(zero, dtype=bool).view(np.uint8)
        _check("zero", zero, (n,), np.uint8)
        zp = zero.ctypes.data
    _lib.idt_orientation_votes(mag, ang, zp, out, n, out.shape[1], first, nbins, np.float32(nbins / (2 * np.pi)))
