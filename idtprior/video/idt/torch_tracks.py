"""Tracking, pruning and the per-trajectory descriptors of one frame (``extract.py``, ``descriptors.py``) in PyTorch.

The torch backend's fourth piece (issue 16), for many points at once: a step of every live point along the
median-filtered flow at its rounded position, the pruning of finished trajectories, and the cell histograms of the
patch around each point, normalised per block (RootSIFT), as the CPU extractor computes them.
"""

import torch

from .descriptors import BLOCKS as _BLOCKS
from .params import IDTParams

BLOCKS = tuple((sl.start, bins) for _, sl, bins in _BLOCKS)  # (first channel, bins): HOG, HOF (+ zero bin), MBHx, MBHy


def track_step(pts: torch.Tensor, med: torch.Tensor, comp_med: torch.Tensor, h: int, w: int,
               video: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame of tracking: ``pts (m, 2)`` (x, y) at t-1 move by the median flow ``med (2, h, w)`` at their rounded
    position (half to even, clipped to the frame). Returns (new positions (m, 2), the compensated steps read from
    ``comp_med (2, h, w)`` at the same pixels (m, 2), inside (m,) bool: the new position lies in the frame). With
    ``video (m,)``, ``med`` and ``comp_med`` are batches ``(B, 2, h, w)`` and point i reads frame ``video[i]``."""
    xi = torch.round(pts[:, 0]).to(torch.int64).clamp(0, w - 1)
    yi = torch.round(pts[:, 1]).to(torch.int64).clamp(0, h - 1)
    if video is None:
        step, cstep = med[:, yi, xi].T, comp_med[:, yi, xi].T  # (m, 2)
    else:
        step, cstep = med[video, :, yi, xi], comp_med[video, :, yi, xi]
    new = pts + step
    inside = (new[:, 0] >= 0) & (new[:, 0] <= w - 1) & (new[:, 1] >= 0) & (new[:, 1] <= h - 1)
    return new, cstep, inside


def keep_trajectories(P: torch.Tensor, C: torch.Tensor, params: IDTParams) -> torch.Tensor:
    """``extract.keep_trajectories``: ``P (n, L+1, 2)`` tracked points and ``C (n, L, 2)`` compensated steps in
    full-resolution pixels -> ``(n,)`` bool, the trajectories that are neither static, wild nor erratic and move
    against the camera."""
    dmag = torch.sqrt((torch.diff(P, dim=1) ** 2).sum(-1))  # (n, L)
    cmag = torch.sqrt((C**2).sum(-1))
    std = P.std(1, unbiased=False).max(1).values  # numpy's std: the population one
    largest = dmag.max(1).values
    valid = (std > params.min_var) & (std < params.max_var)
    valid &= ~((largest > params.max_dis) & (largest > params.erratic_ratio * dmag.sum(1)))
    if params.use_camera_compensation:
        valid &= cmag.max(1).values > params.min_camera_displacement
    else:
        valid &= largest > 0
    return valid


def cell_histograms(sums: torch.Tensor, points: torch.Tensor, patch_size: int, nxy_cell: int,
                    video: torch.Tensor | None = None) -> torch.Tensor:
    """``descriptors.cell_histograms``: the cell sums ``sums (C, h, w)`` of the ``nxy_cell x nxy_cell`` cells of the
    patch around each of ``points (n, 2)`` (x, y), the patch shifted to stay inside the frame -> ``(n, cells, C)``,
    cells column by column (x outer, y inner). With ``video (n,)``, ``sums`` is a batch ``(B, C, h, w)`` and point i
    reads frame ``video[i]``."""
    h, w = sums.shape[-2:]
    cell = patch_size // nxy_cell
    x0 = (torch.round(points[:, 0]).to(torch.int64) - patch_size // 2).clamp(0, max(w - patch_size, 0))
    y0 = (torch.round(points[:, 1]).to(torch.int64) - patch_size // 2).clamp(0, max(h - patch_size, 0))
    steps = torch.arange(nxy_cell, device=sums.device) * cell
    ys = torch.minimum(y0[:, None] + steps, torch.tensor(h - 1, device=sums.device))  # (n, nxy)
    xs = torch.minimum(x0[:, None] + steps, torch.tensor(w - 1, device=sums.device))
    if video is None:
        c = sums[:, ys[:, None, :], xs[:, :, None]].permute(1, 2, 3, 0)  # (n, nxy_x, nxy_y, C)
    else:
        c = sums[video[:, None, None], :, ys[:, None, :], xs[:, :, None]]  # (n, nxy_x, nxy_y, C)
    return c.reshape(len(points), nxy_cell * nxy_cell, -1).clamp_min(0.0)


def frame_descriptors(hist: torch.Tensor) -> torch.Tensor:
    """``descriptors.frame_descriptors``: ``hist (n, cells, 33)`` -> ``(n, cells * 33)``, each block's (cells x bins)
    histogram L1-normalised and square-rooted, the blocks in HOG, HOF, MBHx, MBHy order."""
    n, cells, _ = hist.shape
    out = []
    for first, bins in BLOCKS:
        flat = hist[:, :, first : first + bins].reshape(n, cells * bins)
        total = flat.sum(-1, keepdim=True)
        out.append(torch.sqrt(flat / total.clamp_min(1e-10)))
    return torch.cat(out, dim=1)
