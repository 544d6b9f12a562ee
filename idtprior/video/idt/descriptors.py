"""Per-frame HOG / HOF / MBH cell histograms by box sums, and the final descriptor normalisation.

For one frame and one scale, every pixel votes into orientation channels (HOG: 8 from the image gradient, HOF: 8 + a
zero-motion bin from the camera-compensated flow, MBHx / MBHy: 8 from the gradient of each flow component). One box
filter of the cell's size over all 33 channels then holds, at every pixel, the sums of the cell whose top-left corner it
is: the 2 x 2 cells of the N x N patch around any number of points are four gathers. (The same sums as the integral
images of the papers, at half the time: float32 running sums of one cell instead of a float64 integral of the frame.)
"""

import cv2
import numpy as np

from . import kernels

# channel layout of the per-frame histograms: HOG 0:8, HOF 8:17, MBHx 17:25, MBHy 25:33
HOG, HOF, MBHX, MBHY = slice(0, 8), slice(8, 17), slice(17, 25), slice(25, 33)
BLOCKS = (("hog", HOG, 8), ("hof", HOF, 9), ("mbhx", MBHX, 8), ("mbhy", MBHY, 8))
N_CHANNELS = 33


def _orientation_votes(
    dx: np.ndarray, dy: np.ndarray, out: np.ndarray, first: int, nbins: int = 8, zero: np.ndarray | None = None
) -> None:
    """Magnitude-weighted votes of the vectors ``(dx, dy)`` (H, W) into ``nbins`` full-circle orientation bins, written
    to channels ``first : first + nbins`` of ``out`` (H * W, C) float32.

    Each vector splits its magnitude linearly between the two nearest bin centres (bin b centred at b * 360/nbins
    degrees), which keeps the histogram smooth under small rotations. ``zero`` (H * W,) bool: pixels that vote nothing
    here.
    """
    mag, ang = cv2.cartToPolar(dx, dy, angleInDegrees=False)  # ang in [0, 2 pi)
    kernels.orientation_votes(mag.reshape(-1), ang.reshape(-1), out, first, nbins, zero)


def frame_channels(
    gray: np.ndarray, flow: np.ndarray, hof_zero_threshold: float, mbh_flow: np.ndarray | None = None
) -> np.ndarray:
    """All 33 vote channels of one frame: ``gray`` (H, W) uint8 or float32, ``flow`` (H, W, 2) float32 -> (H, W, 33)
    float32. ``mbh_flow``: the flow whose gradients MBH takes when not ``flow`` (the extractor passes the median-filtered
    compensated flow: on KTH the median MBH cosine to the reference rises from 0.996 to 1.000, HOF prefers the raw one)."""
    h, w = gray.shape
    out = np.empty((h * w, N_CHANNELS), np.float32)  # every channel of every pixel is written
    g = gray.astype(np.float32)
    # centred differences [-1, 0, 1]: the derivative filter of HOG (Dalal & Triggs) and of the IDT papers
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    _orientation_votes(gx, gy, out, HOG.start)
    fx = np.ascontiguousarray(flow[..., 0])
    fy = np.ascontiguousarray(flow[..., 1])
    # slow pixels carry no reliable direction: they vote once into the zero bin instead of into orientations
    small = cv2.magnitude(fx, fy).reshape(-1) <= hof_zero_threshold
    _orientation_votes(fx, fy, out, HOF.start, zero=small)
    out[:, HOF.stop - 1] = small
    if mbh_flow is not None:
        fx = np.ascontiguousarray(mbh_flow[..., 0])
        fy = np.ascontiguousarray(mbh_flow[..., 1])
    for comp, sl in ((fx, MBHX), (fy, MBHY)):
        cx = cv2.Sobel(comp, cv2.CV_32F, 1, 0, ksize=1)
        cy = cv2.Sobel(comp, cv2.CV_32F, 0, 1, ksize=1)
        _orientation_votes(cx, cy, out, sl.start)
    return out.reshape(h, w, N_CHANNELS)


def cell_sums(channels: np.ndarray, cell: int) -> np.ndarray:
    """Box sums of ``(H, W, C)`` float32 votes over ``cell x cell`` squares -> ``(H, W, C)`` float32 whose pixel (y, x)
    holds the sum over rows y .. y + cell - 1 and columns x .. x + cell - 1 (valid where those lie inside the frame)."""
    return cv2.boxFilter(channels, -1, (cell, cell), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_REPLICATE)


def cell_histograms(sums: np.ndarray, points: np.ndarray, patch_size: int, nxy_cell: int) -> np.ndarray:
    """Sums of the vote channels over the ``nxy_cell x nxy_cell`` cells of the patch around each point.

    ``sums``: ``cell_sums`` of the frame's channels for cells of ``patch_size // nxy_cell``; ``points`` (n, 2) float
    (x, y) at this scale; the patch (``patch_size`` square, centred on the rounded point) is shifted to stay inside the
    frame. Returns (n, nxy_cell * nxy_cell, C) float32, cells in column-major order (x outer, y inner) as the reference.
    """
    h, w = sums.shape[:2]
    cell = patch_size // nxy_cell
    x0 = np.clip(np.rint(points[:, 0]).astype(np.intp) - patch_size // 2, 0, max(w - patch_size, 0))
    y0 = np.clip(np.rint(points[:, 1]).astype(np.intp) - patch_size // 2, 0, max(h - patch_size, 0))
    steps = np.arange(nxy_cell) * cell
    ys = np.minimum(y0[:, None] + steps, h - 1)  # (n, nxy)
    xs = np.minimum(x0[:, None] + steps, w - 1)
    # the reference lists cells column by column (x outer, y inner): matching it lifts HOG cosine from 0.90 to 1.00
    c = sums[ys[:, None, :], xs[:, :, None]]  # (n, nxy_x, nxy_y, C)
    # running float32 sums can leave -1e-6 where a cell is empty: clip so square roots stay real
    return np.maximum(c.reshape(len(points), nxy_cell * nxy_cell, -1), np.float32(0.0))


def finalize_block(per_frame: np.ndarray, nt_cell: int) -> np.ndarray:
    """Normalise one descriptor block of whole trajectories.

    ``per_frame`` (n, L, cells, bins) raw cell sums of each tracked frame. Each frame's (cells x bins) histogram is
    L1-normalised and square-rooted (RootSIFT), then the frames of each of the ``nt_cell`` temporal cells are averaged;
    the reference output has this signature (each temporal block has an L2 norm just below 1, lower for flow than for
    appearance since flow varies more between frames). Returns (n, nt_cell * cells * bins) float32.
    """
    n, L, cells, bins = per_frame.shape
    flat = np.ascontiguousarray(per_frame, dtype=np.float32).reshape(n, L, cells * bins)  # one copy of the block
    total = flat.sum(-1, keepdims=True)
    rooted = np.sqrt(flat / np.maximum(total, np.float32(1e-10)))
    return rooted.reshape(n, nt_cell, L // nt_cell, cells * bins).mean(2).reshape(n, -1)
