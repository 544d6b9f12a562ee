"""The compiled per-pixel loops of the IDT extractor (``_kernels.c``) as functions on numpy arrays.

The C source is compiled on first use with the machine's C compiler (``$CC``, else ``cc``) into a cache folder
(``$IDTPRIOR_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/idtprior`` or ``~/.cache/idtprior``; a temporary folder where that
is not writable), under a name holding the SHA-256 of the source and the flags: an edited source gets a new library,
never an old one, in every process and every clone alike. Compiling takes well under a second; concurrent processes
each write a file of their own and rename it into place. Each function checks its arrays' types, shapes and layout
before the C code sees a pointer."""

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("_kernels.c")
# no fused multiply-add: the loops must round exactly as the numpy code they replaced
CFLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off")


def _cache_dirs() -> list[Path]:
    env = os.environ.get("IDTPRIOR_KERNEL_CACHE")
    if env:
        return [Path(env)]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [base / "idtprior", Path(tempfile.gettempdir()) / f"idtprior-kernels-{os.getuid()}"]


def library_path() -> Path:
    """The compiled library of the current source, compiled now if no cache folder holds it yet."""
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:20]
    name = f"idt_kernels-{digest}.so"
    errors = []
    for folder in _cache_dirs():
        path = folder / name
        if path.is_file():
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{name}.{os.getpid()}.tmp"
            cmd = [*shlex.split(cc), *CFLAGS, "-o", str(tmp), str(SOURCE), "-lm"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if out.returncode != 0:
                    raise ImportError(f"compiling {SOURCE} failed ({shlex.join(cmd)}, exit {out.returncode}):\n"
                                      f"{out.stderr[-2000:]}")
                os.replace(tmp, path)  # atomic: another process sees the whole library or none
            finally:
                tmp.unlink(missing_ok=True)
            return path
        except FileNotFoundError as e:
            if e.filename == shlex.split(cc)[0]:
                raise ImportError(f"idtprior's IDT kernels need a C compiler: {cc!r} (from $CC, else cc) was not "
                                  f"found; install gcc (Debian: apt-get install gcc) or set CC") from None
            errors.append(f"{folder}: {e}")
        except OSError as e:  # not writable: the next folder
            errors.append(f"{folder}: {e}")
    raise ImportError(f"no writable cache folder for idtprior's IDT kernels ({'; '.join(errors)}); "
                      f"set IDTPRIOR_KERNEL_CACHE to one")


_lib = ctypes.CDLL(str(library_path()))
_F32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
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
