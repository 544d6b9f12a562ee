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
# (-fno-math-errno only lets sqrtf compile to the instruction: the same correctly rounded result, no errno)
CFLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")


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
_VP = ctypes.c_void_p
_lib.idt_frame_votes.argtypes = [_VP, _VP, _VP, _F32, _I64, ctypes.c_float]
_lib.idt_frame_votes.restype = None
_lib.idt_box_sums.argtypes = [_F32, _F32, _I64, _I64, _I64, _I64, _VP]
_lib.idt_box_sums.restype = ctypes.c_int
_lib.idt_cell_descriptors.argtypes = [_F32, _F32, _F32, _I64, _I64, _I64, _I64, _I64, _I64, _VP, _I64]
_lib.idt_cell_descriptors.restype = ctypes.c_int
_lib.idt_homography_flow.argtypes = [np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS"), _F32, _I64, _I64]
_lib.idt_homography_flow.restype = None
_lib.idt_track_step.argtypes = [_F32, _F32, _I64, _I64, _F32, _I64, _VP, _I64, _I64, _I64, _I64, _VP]
_lib.idt_track_step.restype = None
_lib.idt_cohort_points.argtypes = [_VP, _I64, _I64, ctypes.c_int, _F32]
_lib.idt_cohort_points.restype = ctypes.c_int64


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


def frame_votes(polar: list[tuple[np.ndarray, np.ndarray]], zero: np.ndarray, out: np.ndarray) -> None:
    """All 33 vote channels of n pixels into ``out`` (n, 33) float32, each pixel's row written once: ``polar`` holds the
    (magnitude, angle) (n,) float32 pairs of HOG, HOF, MBHx and MBHy; each block votes into 8 bins (channels 0, 8, 17,
    25 on) as ``orientation_votes``; ``zero`` (n,) bool: pixels whose HOF is the zero-motion bin (channel 16) alone.
    The same values as four ``orientation_votes`` calls and the zero bin's column, in one pass over ``out``."""
    n = out.shape[0]
    _check("out", out, (n, 33))
    if len(polar) != 4:
        raise ValueError(f"polar: expected the (magnitude, angle) pairs of 4 blocks, got {len(polar)}")
    for k, (m, a) in enumerate(polar):
        _check(f"magnitude {k}", m, (n,))
        _check(f"angle {k}", a, (n,))
    zero = np.ascontiguousarray(zero, dtype=bool).view(np.uint8)
    _check("zero", zero, (n,), np.uint8)
    mags = (ctypes.c_void_p * 4)(*(m.ctypes.data for m, _ in polar))
    angs = (ctypes.c_void_p * 4)(*(a.ctypes.data for _, a in polar))
    _lib.idt_frame_votes(mags, angs, zero.ctypes.data, out, n, np.float32(8 / (2 * np.pi)))


BOX_MIN = 6  # the smallest box box_sums gives bit for bit as cv2.boxFilter (which sums boxes of 1-5 px another way)


def box_sums(channels: np.ndarray, cell: int, out: np.ndarray | None = None,
             work: np.ndarray | None = None) -> np.ndarray:
    """Box sums of ``channels`` (h, w, C) float32 over ``cell x cell`` squares -> (h, w, C) float32 (``out`` when given,
    of the same shape): pixel (y, x) holds the sum over rows y .. y + cell - 1 and columns x .. x + cell - 1, rows and
    columns past the frame repeating its last ones. For boxes of ``BOX_MIN`` px and more, bit for bit ``cv2.boxFilter``
    with ``anchor=(0, 0)``, ``normalize=False`` and ``BORDER_REPLICATE`` (float64 running sums in its order), at about
    half its time; smaller boxes differ from it by float32 rounding. ``work``: a float64 buffer of at least
    ``box_work_size(w, C, cell)`` elements to reuse call after call (else one is allocated for the call)."""
    if channels.ndim != 3 or cell < 1:
        raise ValueError(f"box_sums: expected (h, w, C) channels and a cell >= 1, got {channels.shape} and {cell}")
    _check("channels", channels, channels.shape)
    if out is None:
        out = np.empty_like(channels)
    _check("out", out, channels.shape)
    h, w, c = channels.shape
    wp = None
    if work is not None:
        need = box_work_size(w, c, cell)
        if work.dtype != np.float64 or not work.flags.c_contiguous or work.size < need:
            raise ValueError(f"work: expected a C-contiguous float64 buffer of >= {need} elements, got {work.dtype} "
                             f"{work.shape}")
        wp = work.ctypes.data
    if _lib.idt_box_sums(channels, out, h, w, c, cell, wp) != 0:
        raise MemoryError(f"box_sums: no memory for {cell + 1} rows of {w} x {c} float64")
    return out


def box_work_size(w: int, c: int, cell: int) -> int:
    """The float64 elements ``box_sums`` works in for frames ``w`` wide with ``c`` channels and boxes of ``cell``."""
    return (cell + 1) * w * c


def cell_descriptors(sums: np.ndarray, points: np.ndarray, patch_size: int, nxy_cell: int,
                     blocks: np.ndarray) -> np.ndarray:
    """The normalised histograms (n, nxy_cell^2 * C) float32 of ``points`` (n, 2) float32 (x, y) from the box sums
    ``sums`` (h, w, C) float32 of cells of ``patch_size // nxy_cell`` pixels; ``blocks`` (B, 2) int64 rows of (first
    channel, bins) in output order, (n, cells * total bins). Bit for bit
    ``descriptors.frame_descriptors(descriptors.cell_histograms(...))``."""
    if sums.ndim != 3:
        raise ValueError(f"sums: expected (h, w, C), got shape {sums.shape}")
    h, w, c = sums.shape
    n = len(points)
    _check("sums", sums, sums.shape)
    _check("points", points, (n, 2))
    _check("blocks", blocks, (len(blocks), 2), np.int64)
    if len(blocks) and ((blocks[:, 0] < 0).any() or (blocks[:, 1] < 1).any() or (blocks.sum(1) > c).any()):
        raise ValueError(f"blocks: (first channel, bins) rows within {c} channels, got {blocks.tolist()}")
    cells = nxy_cell * nxy_cell
    out = np.empty((n, cells * int(blocks[:, 1].sum())), np.float32)
    if _lib.idt_cell_descriptors(sums, points, out, n, h, w, c, patch_size, nxy_cell, blocks.ctypes.data,
                                 len(blocks)) != 0:
        raise ValueError(f"cell_descriptors: at most 64 cells and 64 channels, got {cells} and {c}")
    return out


def homography_flow(H: np.ndarray, h: int, w: int) -> np.ndarray:
    """The displacement field (h, w, 2) float32 of the homography ``H`` (3, 3): H(x) - x at every pixel, computed in
    float64 (bit for bit the numpy expression it replaced, which the tests keep)."""
    H = np.ascontiguousarray(H, dtype=np.float64)
    _check("H", H, (3, 3), np.float64)
    out = np.empty((h, w, 2), np.float32)
    _lib.idt_homography_flow(H, out, h, w)
    return out


def cohort_row(pos: np.ndarray, comp: np.ndarray, desc: np.ndarray, alive: np.ndarray) -> tuple[int, int, int, int]:
    """The addresses of one cohort's arrays for ``track_step``, after checking them: ``pos`` (n, L + 1, 2), ``comp``
    (n, L, 2), ``desc`` (n, nt, D) float32 and ``alive`` (n,) bool, all C-contiguous. The caller keeps the arrays (and
    never replaces them) for as long as it passes the addresses."""
    n = len(pos)
    L = comp.shape[1] if comp.ndim == 3 else -1
    _check("pos", pos, (n, L + 1, 2))
    _check("comp", comp, (n, L, 2))
    _check("desc", desc, (n,) + desc.shape[1:])
    _check("alive", alive, (n,), np.bool_)
    if desc.ndim != 3:
        raise ValueError(f"desc: expected (n, nt, D), got shape {desc.shape}")
    return pos.ctypes.data, comp.ctypes.data, desc.ctypes.data, alive.ctypes.data


def track_step(med: np.ndarray, cmed: np.ndarray, fdesc: np.ndarray, table: np.ndarray, L: int, nt: int,
               per_cell: int) -> np.ndarray:
    """Advance every trajectory of a scale's cohorts by one frame (``idt_track_step`` in ``_kernels.c``): ``table``
    (k, 6) int64 rows of ``cohort_row`` + (n, age); ``med``, ``cmed`` (h, w, 2) float32 the median raw and compensated
    flows; ``fdesc`` (sum of n, D) float32 the frame's descriptors of the points in table order. Returns the live
    trajectories of each cohort (k,) int64."""
    h, w = med.shape[:2]
    _check("med", med, (h, w, 2))
    _check("cmed", cmed, (h, w, 2))
    _check("table", table, (len(table), 6), np.int64)
    m = int(table[:, 4].sum()) if len(table) else 0
    _check("fdesc", fdesc, (m, fdesc.shape[1] if fdesc.ndim == 2 else -1))
    if len(table) and (((table[:, 5] < 0) | (table[:, 5] >= L)).any() or table[:, 5].max() // per_cell >= nt):
        raise ValueError(f"track_step: ages must lie in [0, {L}) and in one of the {nt} temporal cells of "
                         f"{per_cell} frames, got ages {table[:, 5].tolist()}")
    counts = np.empty(len(table), np.int64)
    _lib.idt_track_step(med, cmed, h, w, fdesc, fdesc.shape[1], table.ctypes.data, len(table), L, nt, per_cell,
                        counts.ctypes.data)
    return counts


def cohort_points(table: np.ndarray, L: int, only_alive: bool = False) -> np.ndarray:
    """The points (m, 2) float32 at position age of the cohorts in ``table`` (``track_step``'s rows), in table order:
    every trajectory's, or with ``only_alive`` the live ones'."""
    _check("table", table, (len(table), 6), np.int64)
    if len(table) and ((table[:, 5] < 0) | (table[:, 5] > L)).any():
        raise ValueError(f"cohort_points: ages must lie in [0, {L}], got {table[:, 5].tolist()}")
    out = np.empty((int(table[:, 4].sum()) if len(table) else 0, 2), np.float32)
    m = _lib.idt_cohort_points(table.ctypes.data, len(table), L, int(only_alive), out)
    return out[:m]
