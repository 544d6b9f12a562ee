"""The scale pyramid's Farneback flow (``flow.py``) in PyTorch, batched over frame pairs, on any device.

The first piece of the torch backend (issue 16): the same numerics as the CPU extractor's own Farneback, written as
tensor operations on ``(B, C, h, w)`` batches, so many frame pairs of many videos go through one call on a GPU:

- the pyramid levels: a Gaussian blur of the frame (OpenCV's kernel for that size and sigma, reflected border) resized
  bilinearly to the scale's size;
- the polynomial expansion: separable correlations with the fit's 1-D kernels (replicated border);
- each iteration: the second frame's expansion sampled bilinearly at the displaced position (outside the frame: no
  linear terms, the first frame's quadratic terms alone), the terms down-weighted at the border, averaged over the
  window (Gaussian or box, replicated border) and the 2x2 systems solved in float64;
- coarse to fine: each level starts from the next coarser one's median-filtered (5x5) flow, upsampled and scaled.

Elementwise steps are written in the C kernels' order of operations (no fused multiply-add), so they round as the CPU
path does; the convolutions sum in another order, so levels agree to float32 rounding, not bit for bit (tested:
``tests/video/test_idt_torch_flow.py``).
"""

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .flow import Grid, poly_kernels, smoothing_window
from .params import IDTParams


def _row(k: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.asarray(k, np.float32), device=device)  # a copy: the cached kernels are read-only


def sep_filter(x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """``cv2.sepFilter2D`` of every channel of ``x (B, C, h, w)``: correlation with ``kx`` along the rows, then ``ky``
    along the columns (odd lengths, anchored at the centre), the border padded by ``mode`` (``"replicate"``:
    BORDER_REPLICATE, ``"reflect"``: BORDER_REFLECT_101)."""
    b, c, h, w = x.shape
    rx, ry = kx.numel() // 2, ky.numel() // 2
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (rx, rx, 0, 0), mode=mode), kx.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, ry, ry), mode=mode), ky.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def resize_linear(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` of ``x (B, C, H, W)`` float32: half-pixel centres, no antialiasing."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)


def poly_expansion(img: torch.Tensor, n: int, sigma: float) -> torch.Tensor:
    """``flow.poly_expansion`` of ``img (B, 1, h, w)`` float32 -> ``(B, 5, h, w)``: [b_y, b_x, a_yy, a_xx, a_xy]."""
    g: np.ndarray | torch.Tensor
    xg: np.ndarray | torch.Tensor
    xxg: np.ndarray | torch.Tensor
    g, xg, xxg, ig11, ig03, ig33, ig55 = poly_kernels(n, sigma)
    dev = img.device
    g, xg, xxg = _row(g, dev), _row(xg, dev), _row(xxg, dev)
    b1 = sep_filter(img, g, g)
    f32 = np.float32
    # torch's stubs take no NumPy scalar operands; float32 factors are deliberate (they round as the CPU path)
    return torch.cat([
        sep_filter(img, g, xg) * f32(ig11),  # type: ignore[operator]  # stubs: no NumPy scalars
        sep_filter(img, xg, g) * f32(ig11),  # type: ignore[operator]  # stubs: no NumPy scalars
        b1 * f32(ig03) + sep_filter(img, g, xxg) * f32(ig33),  # type: ignore[operator]  # stubs: no NumPy scalars
        b1 * f32(ig03) + sep_filter(img, xxg, g) * f32(ig33),  # type: ignore[operator]  # stubs: no NumPy scalars
        sep_filter(img, xg, xg) * f32(ig55),  # type: ignore[operator]  # stubs: no NumPy scalars
    ], dim=1)


def update_matrices(R0: torch.Tensor, R1: torch.Tensor, flow: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """``kernels.farneback_update`` on ``(B, 5, h, w)`` expansions and a ``(B, 2, h, w)`` flow -> terms
    ``(B, 5, h, w)`` [G11, G12, G22, h1, h2]; ``edge (h, w)`` the border weights."""
    b, _, h, w = R0.shape
    dx, dy = flow[:, 0], flow[:, 1]  # (B, h, w)
    ys = torch.arange(h, device=R0.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=R0.device, dtype=torch.float32).view(1, 1, w)
    fx, fy = xs + dx, ys + dy
    x1, y1 = torch.floor(fx), torch.floor(fy)
    ax, ay = fx - x1, fy - y1
    inside = (x1 >= 0) & (x1 < w - 1) & (y1 >= 0) & (y1 < h - 1)  # NaN: False, outside
    xi = torch.where(inside, x1, torch.zeros_like(x1)).long()
    yi = torch.where(inside, y1, torch.zeros_like(y1)).long()
    q = (yi * w + xi).view(b, 1, h * w).expand(b, 5, h * w)
    flat = R1.reshape(b, 5, h * w)

    def at(offset: int) -> torch.Tensor:
        return torch.gather(flat, 2, q + offset).view(b, 5, h, w)

    bx, by = 1.0 - ax, 1.0 - ay
    w00, w01, w10, w11 = (bx * by)[:, None], (ax * by)[:, None], (bx * ay)[:, None], (ax * ay)[:, None]
    s = w00 * at(0)
    s = s + w01 * at(1)
    s = s + w10 * at(w)
    s = s + w11 * at(w + 1)
    outside = torch.cat([torch.zeros_like(R0[:, :2]), R0[:, 2:]], dim=1)
    s = torch.where(inside[:, None], s, outside)
    r4 = (R0[:, 2] + s[:, 2]) * 0.5
    r5 = (R0[:, 3] + s[:, 3]) * 0.5
    r6 = (R0[:, 4] + s[:, 4]) * 0.25
    r2 = (R0[:, 0] - s[:, 0]) * 0.5 + r4 * dy + r6 * dx
    r3 = (R0[:, 1] - s[:, 1]) * 0.5 + r6 * dy + r5 * dx
    r2, r3, r4, r5, r6 = (r * edge for r in (r2, r3, r4, r5, r6))
    return torch.stack([r4 * r4 + r6 * r6, (r4 + r5) * r6, r5 * r5 + r6 * r6, r4 * r2 + r6 * r3,
                        r6 * r2 + r5 * r3], dim=1)


def solve(M: torch.Tensor, winsize: int, kernel: torch.Tensor | None) -> torch.Tensor:
    """The terms averaged over the window (``kernel``: Gaussian 1-D weights; None: a box), the 2x2 systems solved in
    float64 -> flow ``(B, 2, h, w)`` float32 (``flow._solve``)."""
    if kernel is None:
        m = winsize // 2
        box = torch.full((2 * m + 1,), 1.0 / (2 * m + 1), dtype=torch.float32, device=M.device)
        A = sep_filter(M, box, box)
    else:
        A = sep_filter(M, kernel, kernel)
    A = A.double()
    g11, g12, g22, h1, h2 = A.unbind(1)
    idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3)
    return torch.stack([(g11 * h2 - g12 * h1) * idet, (g22 * h1 - g12 * h2) * idet], dim=1).float()


def median5(flow: torch.Tensor, size: int = 5) -> torch.Tensor:
    """``cv2.medianBlur`` of each channel of ``flow (B, C, h, w)`` float32 (replicated border, odd ``size``)."""
    if size <= 1:
        return flow
    b, c, h, w = flow.shape
    r = size // 2
    padded = F.pad(flow.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    windows = F.unfold(padded, size)  # (B*C, size*size, h*w)
    return windows.median(dim=1).values.view(b, c, h, w)


class TorchPyramidFlow:
    """``flow.PyramidFlow`` on batches of frames: ``expand`` a ``(B, H, W)`` uint8 batch once, then ``flows`` of
    pairs of expansions. ``sizes``: (h, w) of each scale, finest first; ``factors``: full-resolution pixels per pixel
    of each."""

    def __init__(self, sizes: list[tuple[int, int]], factors: list[float], params: IDTParams,
                 device: str | torch.device = "cpu"):
        self.sizes, self.factors, self.params = sizes, factors, params
        self.device = torch.device(device)
        self.edges = [torch.as_tensor(Grid(h, w).edge, device=self.device) for h, w in sizes]
        k = smoothing_window(params.flow_winsize, params.flow_gaussian_window)
        self.kernel = None if k is None else _row(k, self.device)
        self.blurs = []
        for s in factors:
            sigma = (s - 1.0) * 0.5
            ksize = max(int(round(sigma * 5)) | 1, 3)  # as flow.PyramidFlow.expand
            self.blurs.append(_row(cv2.getGaussianKernel(ksize, sigma, cv2.CV_32F).ravel(), self.device))

    def expand(self, gray: torch.Tensor) -> list[torch.Tensor]:
        """Polynomial expansion ``(B, 5, h, w)`` of each level of ``gray (B, H, W)`` uint8 (the finest level's size)."""
        f = gray.to(self.device, torch.float32)[:, None]
        out = []
        for (h, w), k in zip(self.sizes, self.blurs):
            level = resize_linear(sep_filter(f, k, k, mode="reflect"), h, w)
            out.append(poly_expansion(level, self.params.flow_poly_n, self.params.flow_poly_sigma))
        return out

    def level(self, R0: torch.Tensor, R1: torch.Tensor, flow: torch.Tensor, k: int) -> torch.Tensor:
        """``flow.farneback_level`` at scale ``k``."""
        p = self.params
        M = update_matrices(R0, R1, flow, self.edges[k])
        for i in range(p.flow_iterations):
            flow = solve(M, p.flow_winsize, self.kernel)
            if i < p.flow_iterations - 1:
                M = update_matrices(R0, R1, flow, self.edges[k])
        return flow

    def flows(self, R0: list[torch.Tensor], R1: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw flows, median-filtered flows), each a list of ``(B, 2, h, w)`` float32, finest first."""
        n = len(self.sizes)
        raw: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        med: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        prev = None
        for k in range(n - 1, -1, -1):
            h, w = self.sizes[k]
            if prev is None:
                init = torch.zeros((R0[k].shape[0], 2, h, w), dtype=torch.float32, device=self.device)
            else:
                ratio = np.float32(self.factors[k + 1] / self.factors[k])
                init = resize_linear(prev, h, w) * ratio  # type: ignore[operator]  # stubs: no NumPy scalars
            raw[k] = self.level(R0[k], R1[k], init, k)
            med[k] = median5(raw[k], self.params.median_size)
            prev = med[k]
        return raw, med
