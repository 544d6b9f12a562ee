"""Per-frame HOG / HOF / MBH cell histograms by box sums, and the final descriptor normalisation.

For one frame and one scale, every pixel votes into orientation channels (HOG: 8 from the image gradient, HOF: 8 + a
zero-motion bin from the camera-compensated flow, MBHx / MBHy: 8 from the gradient of each flow component). One box
filter of the cell's size over all 33 channels then holds, at every pixel, the sums of the cell whose top-left corner it
is: the 2 x 2 cells of the N x N patch around any number of points are four gathers. (The same sums as the integral
images of the papers, in less time: running sums over one cell, which OpenCV accumulates in double, instead of a float64
integral of the whole frame.)
"""

import cv2
import numpy as np

from . import kernels

# channel layout of the per-frame histograms: HOG 0:8, HOF 8:17, MBHx 17:25, MBHy 25:33
HOG, HOF, MBHX, MBHY = slice(0, 8), slice(8, 17), slice(17, 25), slice(25, 33)
BLOCKS = (("hog", HOG, 8), ("hof", HOF, 9), ("mbhx", MBHX, 8), ("mbhy", MBHY, 8))
N_CHANNELS = 33


def frame_channels(
    gray: np.ndarray,
    flow: np.ndarray,
    hof_zero_threshold: float,
    mbh_flow: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """All 33 vote channels of one frame: ``gray`` (H, W) uint8 or float32, ``flow`` (H, W, 2) float32 -> (H, W, 33)
    float32. ``mbh_flow``: the flow whose gradients MBH takes when not ``flow`` (the extractor passes the median-filtered
    compensated flow: on KTH the median MBH cosine to the reference rises from 0.996 to 1.000, HOF prefers the raw one).
    ``out``: an (H, W, 33) float32 buffer to write (every channel of every pixel is written), reused frame after frame."""
    h, w = gray.shape
    if out is None:
        out = np.empty((h, w, N_CHANNELS), np.float32)
    elif out.shape != (h, w, N_CHANNELS) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous float32 array of shape {(h, w, N_CHANNELS)}, got {out.shape}")
    g = gray.astype(np.float32)
    # centred differences [-1, 0, 1]: the derivative filter of HOG (Dalal & Triggs) and of the IDT papers
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    polar = [cv2.cartToPolar(gx, gy, angleInDegrees=False)]  # angles in [0, 2 pi)
    fx = np.ascontiguousarray(flow[..., 0])
    fy = np.ascontiguousarray(flow[..., 1])
    # slow pixels carry no reliable direction: they vote once into the zero bin instead of into orientations
    small = cv2.magnitude(fx, fy).reshape(-1) <= hof_zero_threshold
    polar.append(cv2.cartToPolar(fx, fy, angleInDegrees=False))
    if mbh_flow is not None:
        fx = np.ascontiguousarray(mbh_flow[..., 0])
        fy = np.ascontiguousarray(mbh_flow[..., 1])
    for comp in (fx, fy):
        cx = cv2.Sobel(comp, cv2.CV_32F, 1, 0, ksize=1)
        cy = cv2.Sobel(comp, cv2.CV_32F, 0, 1, ksize=1)
        polar.append(cv2.cartToPolar(cx, cy, angleInDegrees=False))
    # each pixel's 33 channels in one pass over ``out`` (the tests hold it to kernels.orientation_votes block by block)
    kernels.frame_votes([(m.reshape(-1), a.reshape(-1)) for m, a in polar], small, out.reshape(h * w, N_CHANNELS))
    return out


def cell_sums(channels: np.ndarray, cell: int, out: np.ndarray | None = None,
              work: np.ndarray | None = None) -> np.ndarray:
    """Box sums of ``(H, W, C)`` float32 votes over ``cell x cell`` squares -> ``(H, W, C)`` float32 whose pixel (y, x)
    holds the sum over rows y .. y + cell - 1 and columns x .. x + cell - 1 (valid where those lie inside the frame).
    ``out``: a buffer of the same shape to write, and ``work`` a float64 one (``kernels.box_work_size``), both reused
    frame after frame. Bit for bit ``cv2.boxFilter(channels, -1, (cell, cell), anchor=(0, 0), normalize=False,
    borderType=BORDER_REPLICATE)``: from 6 px (the default cells are 16) a compiled loop in about half its time
    (``kernels.box_sums``), below that OpenCV itself, which sums small boxes another way."""
    if cell < kernels.BOX_MIN:
        return cv2.boxFilter(channels, -1, (cell, cell), dst=out, anchor=(0, 0), normalize=False,
                             borderType=cv2.BORDER_REPLICATE).reshape(channels.shape)
    return kernels.box_sums(np.ascontiguousarray(channels, dtype=np.float32), cell, out, work)


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


_BLOCK_TABLE = np.array([(sl.start, bins) for _, sl, bins in BLOCKS], np.int64)


def point_descriptors(sums: np.ndarray, points: np.ndarray, patch_size: int, nxy_cell: int) -> np.ndarray:
    """``frame_descriptors(cell_histograms(sums, points, patch_size, nxy_cell))`` in one compiled loop
    (``kernels.cell_descriptors``), bit for bit: (n, nxy_cell^2 * 33) float32, the tracked points' normalised
    histograms of one frame. The extractor's path; the two numpy functions are its reference."""
    pts = np.ascontiguousarray(points, dtype=np.float32)
    return kernels.cell_descriptors(sums, pts, patch_size, nxy_cell, _BLOCK_TABLE)


def frame_descriptors(hist: np.ndarray) -> np.ndarray:
    """One tracked frame's normalised histograms: ``hist`` (n, cells, 33) raw cell sums -> (n, cells * 33) float32, the
    blocks in ``BLOCKS`` order, each block's (cells x bins) histogram L1-normalised and square-rooted (RootSIFT).

    A trajectory's descriptor block is the mean of these over the frames of each temporal cell (``descriptor_rows``):
    accumulated frame by frame, so a live trajectory holds ``nt_cell`` sums instead of every frame's raw histograms (5x
    less memory at the default 15 frames and 3 cells). The reference output has this signature: each temporal block
    has an L2 norm just below 1, lower for flow than for appearance since flow varies more between frames."""
    n, cells, _ = hist.shape
    out = np.empty((n, cells * N_CHANNELS), np.float32)
    col = 0
    for _, sl, bins in BLOCKS:
        flat = np.ascontiguousarray(hist[:, :, sl]).reshape(n, cells * bins)
        total = flat.sum(-1, keepdims=True)
        out[:, col : col + cells * bins] = np.sqrt(flat / np.maximum(total, np.float32(1e-10)))
        col += cells * bins
    return out


def descriptor_rows(sums: np.ndarray, frames_per_cell: int) -> np.ndarray:
    """The HOG, HOF, MBHx, MBHy columns of the output rows from ``sums`` (n, nt_cell, cells * 33): per temporal cell the
    sum of ``frame_descriptors`` over its ``frames_per_cell`` frames. Returns (n, nt_cell * cells * 33) float32, each
    block's temporal cells in order (the reference's layout)."""
    n, nt, width = sums.shape
    cells = width // N_CHANNELS
    mean = sums / np.float32(frames_per_cell)
    out, col = [], 0
    for _, _, bins in BLOCKS:
        out.append(mean[:, :, col : col + cells * bins].reshape(n, -1))
        col += cells * bins
    return np.concatenate(out, axis=1)
