"""Dense sampling's minimum-eigenvalue test (``extract.sample_points``) in PyTorch, batched over frames.

The torch backend's third piece (issue 16): ``cv2.cornerMinEigenVal(gray, 3, 3)`` (3x3 Sobel derivatives, their
products summed over a 3x3 block, the smaller eigenvalue of each 2x2 matrix; reflected borders) and the grid of
candidates, one per ``min_distance`` cell at its centre, kept where the eigenvalue exceeds ``quality`` times the
frame's largest and no live track is in the cell.
"""

import torch
import torch.nn.functional as F

from .params import IDTParams

_SMOOTH = torch.tensor([1.0, 2.0, 1.0])
_DIFF = torch.tensor([-1.0, 0.0, 1.0])


def _sep3(x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """3x3 separable correlation of ``x (B, 1, H, W)``, reflected border (BORDER_REFLECT_101)."""
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    p = F.conv2d(p, kx.to(x).view(1, 1, 1, 3))
    return F.conv2d(p, ky.to(x).view(1, 1, 3, 1))


def min_eigenvalue(gray: torch.Tensor) -> torch.Tensor:
    """``cv2.cornerMinEigenVal(gray, blockSize=3, ksize=3)`` of ``gray (B, H, W)`` uint8 -> ``(B, H, W)`` float32 (the
    same scaling: derivatives divided by 4 * 3 * 255)."""
    g = gray.to(torch.float32)[:, None]
    scale = 1.0 / (4 * 3 * 255.0)
    dx = _sep3(g, _DIFF, _SMOOTH) * scale
    dy = _sep3(g, _SMOOTH, _DIFF) * scale
    ones = torch.ones(3)
    cov = [_sep3(v, ones, ones) for v in (dx * dx, dx * dy, dy * dy)]
    a, b, c = cov[0] * 0.5, cov[1], cov[2] * 0.5
    return ((a + c) - torch.sqrt((a - c) * (a - c) + b * b))[:, 0]


def sample_points(gray: torch.Tensor, occupied: list[torch.Tensor], params: IDTParams) -> list[torch.Tensor]:
    """``extract.sample_points`` of each frame of ``gray (B, h, w)`` uint8 at one scale, ``occupied[b]`` the
    ``(m, 2)`` positions (x, y) of frame b's live tracks -> per frame ``(n, 2)`` float32 (x, y), in row-major grid
    order."""
    b, h, w = gray.shape
    W = params.min_distance
    nx, ny = w // W, h // W
    if nx == 0 or ny == 0:
        return [torch.zeros((0, 2), dtype=torch.float32, device=gray.device) for _ in range(b)]
    eig = min_eigenvalue(gray)
    threshold = params.quality * eig.flatten(1).max(dim=1).values  # (B,)
    gx = torch.arange(nx, device=gray.device) * W + W // 2
    gy = torch.arange(ny, device=gray.device) * W + W // 2
    keep = eig[:, gy][:, :, gx] > threshold[:, None, None]  # (B, ny, nx)
    out = []
    for i in range(b):
        k = keep[i].clone()
        occ = occupied[i] if i < len(occupied) else None
        if occ is not None and len(occ):
            ix = (occ[:, 0] / W).to(torch.int64)
            iy = (occ[:, 1] / W).to(torch.int64)
            ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            k[iy[ok], ix[ok]] = False
        iy, ix = torch.nonzero(k, as_tuple=True)
        out.append(torch.stack([gx[ix], gy[iy]], 1).to(torch.float32))
    return out
