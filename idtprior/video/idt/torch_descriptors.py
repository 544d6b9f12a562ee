"""The per-frame HOG / HOF / MBH vote channels and their cell sums (``descriptors.py``) in PyTorch, batched over frames.

The torch backend's second piece (issue 16): ``frame_channels`` and ``cell_sums`` of the CPU extractor as tensor
operations on ``(B, C, H, W)`` batches. The channel layout is the CPU one (HOG 0:8, HOF 8:17 with the zero-motion bin
last, MBHx 17:25, MBHy 25:33). Differences from the CPU path, within float32 rounding of the histograms (tested:
``tests/video/idt/test_torch_descriptors.py``): the angle is ``atan2`` (OpenCV's ``cartToPolar`` uses a polynomial
approximation), and the cell sums are a pooled sum instead of OpenCV's running sums in double.
"""

import math

import torch
import torch.nn.functional as F

from .descriptors import N_CHANNELS  # noqa: F401  (the layout: HOG 0:8, HOF 8:17, MBHx 17:25, MBHy 25:33)


def central_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cv2.Sobel(x, CV_32F, 1, 0, ksize=1)`` and ``(0, 1)`` of ``x (B, 1, H, W)``: ``x[i+1] - x[i-1]`` along the
    columns and the rows, reflected border (BORDER_REFLECT_101)."""
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    gx = p[..., 1:-1, 2:] - p[..., 1:-1, :-2]
    gy = p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
    return gx, gy


def orientation_votes(dx: torch.Tensor, dy: torch.Tensor, nbins: int = 8, zero: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Magnitude-weighted votes of the vectors ``(dx, dy)`` ``(B, 1, H, W)`` into ``nbins`` full-circle orientation
    bins -> ``(B, nbins, H, W)`` float32: each vector splits its magnitude linearly between the two bin centres
    (``b * 2 pi / nbins``) around its angle (``kernels.orientation_votes``). ``zero (B, 1, H, W)`` bool: pixels that
    vote nothing."""
    mag = torch.sqrt(dx * dx + dy * dy)
    ang = torch.atan2(dy, dx)
    ang = torch.where(ang < 0, ang + 2 * math.pi, ang)  # [0, 2 pi], as cartToPolar's
    fbin = ang * (nbins / (2 * math.pi))
    inside = (fbin >= 0) & (fbin < nbins)
    b0f = torch.where(inside, torch.floor(fbin), torch.zeros_like(fbin))
    f64 = fbin.double()
    # fbin >= nbins: the angle rounds up to 2 pi, bin 0; NaN (a NaN vector): NaN votes, no index computed from it
    w1 = torch.where(inside, f64 - b0f.double(), torch.where(fbin >= nbins, f64 - nbins, f64))
    b0 = b0f.long()
    b1 = torch.where(b0 + 1 < nbins, b0 + 1, torch.zeros_like(b0))
    m = mag.double()
    lo, hi = (m * (1.0 - w1)).float(), (m * w1).float()
    if zero is not None:
        lo = torch.where(zero, torch.zeros_like(lo), lo)
        hi = torch.where(zero, torch.zeros_like(hi), hi)
    out = torch.zeros((dx.shape[0], nbins, *dx.shape[2:]), dtype=torch.float32, device=dx.device)
    out.scatter_add_(1, b0, lo)
    out.scatter_add_(1, b1, hi)
    return out


def frame_channels(gray: torch.Tensor, flow: torch.Tensor, hof_zero_threshold: float,
                   mbh_flow: torch.Tensor | None = None) -> torch.Tensor:
    """All 33 vote channels of a batch of frames (``descriptors.frame_channels``): ``gray (B, H, W)`` uint8 or float,
    ``flow (B, 2, H, W)`` float32 (HOF's), ``mbh_flow`` the flow whose gradients MBH takes (default ``flow``) ->
    ``(B, 33, H, W)`` float32."""
    g = gray.to(torch.float32)[:, None]
    gx, gy = central_differences(g)
    fx, fy = flow[:, :1], flow[:, 1:2]
    small = torch.sqrt(fx * fx + fy * fy) <= hof_zero_threshold  # no reliable direction: the zero bin
    parts = [orientation_votes(gx, gy), orientation_votes(fx, fy, zero=small), small.to(torch.float32)]
    mf = flow if mbh_flow is None else mbh_flow
    for comp in (mf[:, :1], mf[:, 1:2]):
        cx, cy = central_differences(comp)
        parts.append(orientation_votes(cx, cy))
    return torch.cat(parts, dim=1)


def cell_sums(channels: torch.Tensor, cell: int) -> torch.Tensor:
    """Sums of ``(B, C, H, W)`` votes over ``cell x cell`` squares whose top-left corner is each pixel (replicated
    border beyond the right and bottom edges): ``descriptors.cell_sums`` -> ``(B, C, H, W)`` float32."""
    padded = F.pad(channels, (0, cell - 1, 0, cell - 1), mode="replicate")
    ones = torch.ones((1, 1, cell, 1), dtype=channels.dtype, device=channels.device)
    b, c, h, w = padded.shape
    rows = F.conv2d(padded.reshape(b * c, 1, h, w), ones)  # sums over cell rows
    return F.conv2d(rows, ones.view(1, 1, 1, cell)).reshape(b, c, h - cell + 1, w - cell + 1)
