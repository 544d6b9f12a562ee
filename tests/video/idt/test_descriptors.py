"""The per-frame vote channels and cell histograms against a direct computation: every pixel's votes from its angle
with plain numpy, and each cell's sum as the sum of the patch's pixels (no integral image, no box filter)."""

import cv2
import numpy as np

from idtprior.video.idt.descriptors import HOF, HOG, MBHX, MBHY, cell_histograms, cell_sums, frame_channels


def direct_votes(dx: np.ndarray, dy: np.ndarray, nbins: int = 8) -> np.ndarray:
    """(H, W, nbins) float64: each vector's magnitude split linearly between the two bin centres around its angle."""
    ang = np.arctan2(dy, dx).astype(np.float64) % (2 * np.pi)
    mag = np.hypot(dx, dy).astype(np.float64)
    centres = np.arange(nbins) * 2 * np.pi / nbins
    d = np.abs(ang[..., None] - centres)
    d = np.minimum(d, 2 * np.pi - d) / (2 * np.pi / nbins)  # distance in bins, on the circle
    return mag[..., None] * np.maximum(0.0, 1.0 - d)


def test_frame_channels_equal_direct_votes():
    rng = np.random.default_rng(3)
    h, w = 37, 51
    gray = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (5, 5), 1.2)
    flow = (rng.normal(size=(h, w, 2)) * 0.5).astype(np.float32)
    mbh = cv2.medianBlur(flow, 5)
    ch = frame_channels(gray, flow, 0.4, mbh).astype(np.float64)
    g = gray.astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
    # cv2.cartToPolar's angle is accurate to ~0.3 degrees: a vote moves by at most that share of its magnitude
    tol = lambda mag: 0.01 * mag.max() + 1e-4  # noqa: E731
    np.testing.assert_allclose(ch[..., HOG], direct_votes(gx, gy), atol=tol(np.hypot(gx, gy)))
    small = np.hypot(flow[..., 0], flow[..., 1]) <= 0.4
    assert 0.1 < small.mean() < 0.9  # both kinds of pixels present
    hof = direct_votes(flow[..., 0], flow[..., 1])
    hof[small] = 0.0
    np.testing.assert_allclose(ch[..., HOF][..., :8], hof, atol=tol(np.hypot(flow[..., 0], flow[..., 1])))
    np.testing.assert_array_equal(ch[..., HOF][..., 8], small.astype(np.float64))
    for comp, sl in ((mbh[..., 0], MBHX), (mbh[..., 1], MBHY)):
        cx = cv2.Sobel(np.ascontiguousarray(comp), cv2.CV_32F, 1, 0, ksize=1)
        cy = cv2.Sobel(np.ascontiguousarray(comp), cv2.CV_32F, 0, 1, ksize=1)
        np.testing.assert_allclose(ch[..., sl], direct_votes(cx, cy), atol=tol(np.hypot(cx, cy)))
    # each pixel votes its whole magnitude: the orientation channels of a block sum to it
    np.testing.assert_allclose(ch[..., HOG].sum(-1), np.hypot(gx, gy), rtol=1e-5, atol=1e-4)


def test_cell_histograms_equal_patch_sums_including_shifted_border_patches():
    rng = np.random.default_rng(4)
    h, w, C, patch, nxy = 45, 61, 5, 32, 2
    channels = rng.random((h, w, C)).astype(np.float32)
    # points inside, on the border and outside the frame: patches near an edge are shifted to stay inside
    pts = np.stack([rng.uniform(-4, w + 4, 300), rng.uniform(-4, h + 4, 300)], 1).astype(np.float32)
    got = cell_histograms(cell_sums(channels, patch // nxy), pts, patch, nxy)
    cell = patch // nxy
    for p, hist in zip(pts, got):
        x0 = int(np.clip(np.rint(p[0]) - patch // 2, 0, w - patch))
        y0 = int(np.clip(np.rint(p[1]) - patch // 2, 0, h - patch))
        # cells column by column: x outer, y inner
        want = [
            channels[y0 + cy * cell : y0 + (cy + 1) * cell, x0 + cx * cell : x0 + (cx + 1) * cell].sum((0, 1))
            for cx in range(nxy)
            for cy in range(nxy)
        ]
        np.testing.assert_allclose(hist, np.array(want), rtol=1e-5)


def test_descriptor_sums_per_temporal_cell_equal_the_mean_of_every_frames_rootsift():
    """What a trajectory accumulates frame by frame (nt_cell sums) gives its rows' descriptor columns: per block and
    temporal cell the mean over the cell's frames of each frame's L1-normalised, square-rooted histogram."""
    from idtprior.video.idt.descriptors import BLOCKS, descriptor_rows, frame_descriptors

    rng = np.random.default_rng(5)
    n, L, nt, cells = 7, 15, 3, 4
    hist = rng.random((n, L, cells, 33)).astype(np.float32) * 50
    hist[0, 3, :, HOF] = 0.0  # an empty block in one frame: no division by zero, zeros
    sums = np.zeros((n, nt, cells * 33), np.float32)
    for t in range(L):
        sums[:, t // (L // nt)] += frame_descriptors(hist[:, t])
    got = descriptor_rows(sums, L // nt)
    want = []
    for _, sl, bins in BLOCKS:
        flat = hist[..., sl].reshape(n, L, cells * bins).astype(np.float64)
        rooted = np.sqrt(flat / np.maximum(flat.sum(-1, keepdims=True), 1e-10))
        want.append(rooted.reshape(n, nt, L // nt, -1).mean(2).reshape(n, -1))
    want = np.concatenate(want, axis=1)
    assert got.shape == (n, nt * cells * 33)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # each temporal block of a frame with votes has unit L2 norm before averaging: a mean of units stays <= 1
    hog = got[:, : nt * cells * 8].reshape(n, nt, -1)
    assert (np.linalg.norm(hog, axis=-1) <= 1 + 1e-5).all()
