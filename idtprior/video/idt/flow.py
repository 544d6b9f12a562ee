"""Dense optical flow over the scale pyramid: one coarse-to-fine Farneback pass whose level results ARE the flows of the
spatial scales.

Farnebäck (SCIA 2003, "Two-frame motion estimation based on polynomial expansion"): each frame is expanded locally as
a quadratic polynomial (a Gaussian-weighted least-squares fit over a (2n+1)^2 neighbourhood); the displacement of each
pixel solves a 2x2 system whose terms are averaged over a Gaussian window; iterating re-samples the second frame's
expansion at the current estimate; a pyramid runs it coarse to fine. The numerics follow OpenCV's implementation
(BSD), checked to 1e-4 px against ``cv2.calcOpticalFlowFarneback`` in the tests.

What the reference release's output pins down (KTH, tracking every reference trajectory from its start point):
- the pyramid levels are the spatial scales (stride sqrt(2)), each a Gaussian blur of the full frame (sigma
  (f - 1) / 2 for scale f, 3x3 at f = 1) resized to that scale's size;
- the flow of scale s is the level's own result, and the next finer level starts from it median-filtered (5x5),
  upsampled and multiplied by the stride.
With this, 99.6% of the reference's trajectories are reproduced to 0.001 px (mean position); OpenCV's own per-scale
pyramid leaves a median 0.2-0.6 px.
"""

from functools import lru_cache

import cv2
import numpy as np

from . import kernels
from .params import IDTParams


@lru_cache(maxsize=8)
def poly_kernels(n: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float, float]:
    """1-D kernels g, x g, x^2 g (2n+1,) float32 of the polynomial fit and the entries of the inverse Gram matrix
    (cached: the same few (n, sigma) for every frame; the arrays are read only)."""
    if sigma < 1e-7:
        sigma = n * 0.3
    x = np.arange(-n, n + 1, dtype=np.float64)
    g = np.exp(-x * x / (2 * sigma * sigma))
    g = (g / g.sum()).astype(np.float32).astype(np.float64)
    xg, xxg = (x * g).astype(np.float32), (x * x * g).astype(np.float32)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    yy, xx = np.meshgrid(x, x, indexing="ij")
    G = np.zeros((6, 6))
    G[0, 0] = (gy * gx).sum()
    G[1, 1] = (gy * gx * xx * xx).sum()
    G[3, 3] = (gy * gx * xx**4).sum()
    G[5, 5] = (gy * gx * xx * xx * yy * yy).sum()
    G[2, 2] = G[0, 3] = G[0, 4] = G[3, 0] = G[4, 0] = G[1, 1]
    G[4, 4] = G[3, 3]
    G[3, 4] = G[4, 3] = G[5, 5]
    iG = np.linalg.inv(G)
    out = g.astype(np.float32), xg, xxg
    for a in out:
        a.flags.writeable = False
    return *out, iG[1, 1], iG[0, 3], iG[3, 3], iG[5, 5]


def poly_expansion(img: np.ndarray, n: int, sigma: float) -> np.ndarray:
    """Quadratic expansion of ``img`` (h, w) float32 -> (h, w, 5) float32: [b_y, b_x, a_yy, a_xx, a_xy]."""
    g, xg, xxg, ig11, ig03, ig33, ig55 = poly_kernels(n, sigma)

    def sep(kx, ky):
        return cv2.sepFilter2D(img, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REPLICATE)

    b1 = sep(g, g)
    R = np.empty(img.shape + (5,), np.float32)
    R[..., 0] = sep(g, xg) * np.float32(ig11)
    R[..., 1] = sep(xg, g) * np.float32(ig11)
    R[..., 2] = b1 * np.float32(ig03) + sep(g, xxg) * np.float32(ig33)
    R[..., 3] = b1 * np.float32(ig03) + sep(xxg, g) * np.float32(ig33)
    R[..., 4] = sep(xg, xg) * np.float32(ig55)
    return R


_EDGE = np.array([0.14, 0.14, 0.4472, 0.4472, 0.4472], np.float32)  # down-weights the last 5 rows/cols (OpenCV's)


class Grid:
    """Edge weights of one level size, computed once."""

    def __init__(self, h: int, w: int):
        ex, ey = np.ones(w, np.float32), np.ones(h, np.float32)
        for v, m in ((ex, w), (ey, h)):
            for i in range(min(5, m)):
                v[i] *= _EDGE[i]
                v[m - 1 - i] *= _EDGE[i]
        self.edge = ey[:, None] * ex[None, :]  # (h, w)


def _update_matrices(R0: np.ndarray, R1: np.ndarray, flow: np.ndarray, grid: Grid) -> np.ndarray:
    """Per-pixel terms (h, w, 5) [G11, G12, G22, h1, h2] of the displacement equations at the current ``flow``: the
    second frame's expansion sampled bilinearly at the displaced position (outside the frame: no linear terms, the first
    frame's quadratic terms alone), averaged with the first frame's (a compiled loop: ``kernels.farneback_update``)."""
    return kernels.farneback_update(R0, R1, flow, grid.edge)


def smoothing_window(winsize: int, gaussian: bool) -> np.ndarray | None:
    m = winsize // 2
    if not gaussian:
        return None
    sigma = m * 0.3
    k = np.exp(-np.arange(-m, m + 1, dtype=np.float64) ** 2 / (2 * sigma * sigma)).astype(np.float32)
    return (k / k.sum()).astype(np.float32)


def _solve(M: np.ndarray, winsize: int, kernel: np.ndarray | None) -> np.ndarray:
    """Average the terms over the window and solve the 2x2 systems -> flow (h, w, 2) float32."""
    if kernel is not None:
        A = cv2.sepFilter2D(M, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    else:
        m = winsize // 2
        A = cv2.blur(M, (2 * m + 1, 2 * m + 1), borderType=cv2.BORDER_REPLICATE)
    return kernels.farneback_solve(A)


def farneback_level(R0: np.ndarray, R1: np.ndarray, flow: np.ndarray, params: IDTParams, grid: Grid | None = None):
    """Farneback iterations at one level from the expansions ``R0``, ``R1`` (h, w, 5) and an initial ``flow`` (h, w, 2)
    -> flow (h, w, 2) float32."""
    grid = grid or Grid(*flow.shape[:2])
    kernel = smoothing_window(params.flow_winsize, params.flow_gaussian_window)
    M = _update_matrices(R0, R1, flow, grid)
    for i in range(params.flow_iterations):
        flow = _solve(M, params.flow_winsize, kernel)
        if i < params.flow_iterations - 1:
            M = _update_matrices(R0, R1, flow, grid)
    return flow


def median_flow(flow: np.ndarray, params: IDTParams) -> np.ndarray:
    return cv2.medianBlur(flow, params.median_size) if params.median_size > 1 else flow


class PyramidFlow:
    """Flow of every spatial scale between consecutive frames: ``expand`` a frame once, then ``flows`` of a pair.

    ``sizes``: (h, w) of each scale, finest (the frame) first; ``factors`` their full-resolution pixels per pixel.
    """

    def __init__(self, sizes: list[tuple[int, int]], factors: list[float], params: IDTParams):
        self.sizes = sizes
        self.factors = factors
        self.params = params
        self.grids = [Grid(h, w) for h, w in sizes]
        self.kernel = smoothing_window(params.flow_winsize, params.flow_gaussian_window)

    def expand(self, gray: np.ndarray) -> list[np.ndarray]:
        """Polynomial expansion (h, w, 5) float32 of each level of ``gray`` (H, W) uint8 (the finest level's size)."""
        f = gray.astype(np.float32)
        out = []
        for (h, w), s in zip(self.sizes, self.factors):
            sigma = (s - 1.0) * 0.5
            ksize = max(int(round(sigma * 5)) | 1, 3)  # at s = 1: a 3x3 blur (sigma 0.8), as OpenCV's finest level
            # the 4th positional is cv2's dst (a number is accepted there, and replaced): sigmaY stays 0 = sigmaX
            level = cv2.GaussianBlur(f, (ksize, ksize), sigma, sigma)  # type: ignore[call-overload]
            if level.shape != (h, w):
                level = cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(poly_expansion(level, self.params.flow_poly_n, self.params.flow_poly_sigma))
        return out

    def flows(self, R0: list[np.ndarray], R1: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(raw flows, median-filtered flows), each a list of (h, w, 2) float32, finest first."""
        n = len(self.sizes)
        raw: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        med: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        prev = None
        for k in range(n - 1, -1, -1):
            h, w = self.sizes[k]
            if prev is None:
                init = np.zeros((h, w, 2), np.float32)
            else:
                ratio = np.float32(self.factors[k + 1] / self.factors[k])
                init = cv2.resize(prev, (w, h), interpolation=cv2.INTER_LINEAR) * ratio
            raw[k] = farneback_level(R0[k], R1[k], init, self.params, self.grids[k])
            med[k] = median_flow(raw[k], self.params)
            prev = med[k]
        return raw, med
