"""Per-frame HOG / HOF / MBH cell histograms by integral images, and the final descriptor normalisation.

For one frame and one scale, every pixel votes into orientation channels (HOG: 8 from the image gradient, HOF: 8 + a
zero-motion bin from the camera-compensated flow, MBHx / MBHy: 8 from the gradient of each flow component). One integral
image of all 33 channels then gives the 2 x 2 cell sums of the N x N patch around any number of points in one gather.
"""

import numpy as np
import cv2

# channel layout of the per-frame histograms: HOG 0:8, HOF 8:17, MBHx 17:25, MBHy 25:33
HOG, HOF, MBHX, MBHY = slice(0, 8), slice(8, 17), slice(17, 25), slice(25, 33)
BLOCKS = (("hog", HOG, 8), ("hof", HOF, 9), ("mbhx", MBHX, 8), ("mbhy", MBHY, 8))
N_CHANNELS = 33


def _orientation_votes(dx: np.ndarray, dy: np.ndarray, out: np.ndarray, nbins: int = 8) -> np.ndarray:
    """Magnitude-weighted votes of the vectors ``(dx, dy)`` into ``nbins`` full-circle orientation bins.

    Each vector splits its magnitude linearly between the two nearest bin centres (bin b centred at b * 360/nbins
    degrees), which keeps the histogram smooth under small rotations. ``out`` is ``(H, W, nbins)`` float32, written.
    """
    mag, ang = cv2.cartToPolar(dx, dy, angleInDegrees=False)  # ang in [0, 2 pi)
    fbin = ang.ravel() * np.float32(nbins / (2 * np.pi))
    b0 = fbin.astype(np.int32)  # floor: fbin >= 0
    w1 = fbin - b0
    m = mag.ravel()
    # scatter the two votes of each pixel: two fancy-index writes instead of 2 * nbins full-frame passes
    flat = np.zeros((m.size, nbins), np.float32)
    rows = np.arange(m.size)
    flat[rows, b0 % nbins] = m * (1.0 - w1)
    flat[rows, (b0 + 1) % nbins] += m * w1
    out[...] = flat.reshape(out.shape)
    return out


def frame_channels(
    gray: np.ndarray, flow: np.ndarray, hof_zero_threshold: float, mbh_flow: np.ndarray | None = None
) -> np.ndarray:
    """All 33 vote channels of one frame: ``gray`` (H, W) uint8 or float32, ``flow`` (H, W, 2) float32 -> (H, W, 33)
    float32. ``mbh_flow``: the flow whose gradients MBH takes when not ``flow`` (the extractor passes the median-filtered
    compensated flow: on KTH the median MBH cosine to the reference rises from 0.996 to 1.000, HOF prefers the raw one)."""
    h, w = gray.shape
    out = np.empty((h, w, N_CHANNELS), np.float32)
    g = gray.astype(np.float32)
    # centred differences [-1, 0, 1]: the derivative filter of HOG (Dalal & Triggs) and of the IDT papers
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    _orientation_votes(gx, gy, out[..., HOG])
    fx = np.ascontiguousarray(flow[..., 0])
    fy = np.ascontiguousarray(flow[..., 1])
    hof = out[..., HOF]
    _orientation_votes(fx, fy, hof[..., :8])
    mag = cv2.magnitude(fx, fy)
    small = mag <= hof_zero_threshold
    # slow pixels carry no reliable direction: they vote once into the zero bin instead of into orientations
    hof[..., :8][small] = 0.0
    hof[..., 8] = small.astype(np.float32)
    if mbh_flow is not None:
        fx = np.ascontiguousarray(mbh_flow[..., 0])
        fy = np.ascontiguousarray(mbh_flow[..., 1])
    for comp, sl in ((fx, MBHX), (fy, MBHY)):
        cx = cv2.Sobel(comp, cv2.CV_32F, 1, 0, ksize=1)
        cy = cv2.Sobel(comp, cv2.CV_32F, 0, 1, ksize=1)
        _orientation_votes(cx, cy, out[..., sl])
    return out


def integral_channels(channels: np.ndarray) -> np.ndarray:
    """Integral image of ``(H, W, C)`` float32 votes -> ``(H + 1, W + 1, C)`` float64."""
    return cv2.integral(channels, sdepth=cv2.CV_64F)


def cell_histograms(integral: np.ndarray, points: np.ndarray, patch_size: int, nxy_cell: int) -> np.ndarray:
    """Sums of the vote channels over the ``nxy_cell x nxy_cell`` cells of the patch around each point.

    ``points`` (n, 2) float (x, y) at this scale; the patch (``patch_size`` square, centred on the rounded point) is
    shifted to stay inside the frame. Returns (n, nxy_cell * nxy_cell, C) float32, cells in column-major order (x outer, y inner) as the reference.
    """
    H1, W1, _ = integral.shape
    h, w = H1 - 1, W1 - 1
    cell = patch_size // nxy_cell
    x0 = np.clip(np.rint(points[:, 0]).astype(np.int64) - patch_size // 2, 0, max(w - patch_size, 0))
    y0 = np.clip(np.rint(points[:, 1]).astype(np.int64) - patch_size // 2, 0, max(h - patch_size, 0))
    steps = np.arange(nxy_cell + 1) * cell
    xs = np.minimum(x0[:, None] + steps, w)  # (n, nxy+1)
    ys = np.minimum(y0[:, None] + steps, h)
    c = integral[ys[:, :, None], xs[:, None, :]]  # (n, nxy+1, nxy+1, C)
    sums = c[:, 1:, 1:] - c[:, :-1, 1:] - c[:, 1:, :-1] + c[:, :-1, :-1]  # (n, nxy_y, nxy_x, C)
    # the reference lists cells column by column (x outer, y inner): matching it lifts HOG cosine from 0.90 to 1.00
    sums = sums.transpose(0, 2, 1, 3)
    # float64 integrals can leave -1e-9 where a cell is empty: clip so square roots stay real
    return np.maximum(sums.reshape(len(points), nxy_cell * nxy_cell, -1), 0.0).astype(np.float32)


def finalize_block(per_frame: np.ndarray, nt_cell: int) -> np.ndarray:
    """Normalise one descriptor block of whole trajectories.

    ``per_frame`` (n, L, cells, bins) raw cell sums of each tracked frame. Each frame's (cells x bins) histogram is
    L1-normalised and square-rooted (RootSIFT), then the frames of each of the ``nt_cell`` temporal cells are averaged;
    the reference output has this signature (each temporal block has an L2 norm just below 1, lower for flow than for
    appearance since flow varies more between frames). Returns (n, nt_cell * cells * bins) float32.
    """
    n, L, cells, bins = per_frame.shape
    flat = per_frame.reshape(n, L, cells * bins).astype(np.float32)
    total = flat.sum(-1, keepdims=True)
    rooted = np.sqrt(flat / np.maximum(total, np.float32(1e-10)))
    return rooted.reshape(n, nt_cell, L // nt_cell, cells * bins).mean(2).reshape(n, -1)
