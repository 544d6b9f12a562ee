"""The torch backend's batched RANSAC homography (issue 16) against planted homographies and OpenCV's
``findHomography`` (what the CPU path calls), and its displacement field against the CPU path's."""

import cv2
import numpy as np
import torch

from idtprior.video.idt import IDTParams
from idtprior.video.idt import torch_camera as tc
from idtprior.video.idt.camera import estimate_homography, homography_flow


def planted(rng, n: int, outliers: float):
    """A camera-like homography (small zoom, rotation, pan, perspective) and n matches of a 320x240 frame, a fraction
    of them outliers (moving people), with 0.1 px noise."""
    a = rng.uniform(-0.02, 0.02)
    s = 1 + rng.uniform(-0.03, 0.03)
    H = np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-4, 4)],
                  [s * np.sin(a), s * np.cos(a), rng.uniform(-4, 4)],
                  [rng.uniform(-2e-5, 2e-5), rng.uniform(-2e-5, 2e-5), 1.0]])
    src = rng.uniform([0, 0], [320, 240], (n, 2))
    dst = cv2.perspectiveTransform(src[None], H)[0] + rng.normal(0, 0.1, (n, 2))
    bad = rng.random(n) < outliers
    dst[bad] += rng.uniform(-30, 30, (bad.sum(), 2))
    return H, src.astype(np.float32), dst.astype(np.float32)


def reprojection(H, G, pts):
    return np.linalg.norm(cv2.perspectiveTransform(pts[None].astype(np.float64), H)[0]
                          - cv2.perspectiveTransform(pts[None].astype(np.float64), G)[0], axis=1)


def test_batched_ransac_recovers_planted_homographies_as_opencv_does():
    rng = np.random.default_rng(0)
    p = IDTParams()
    sizes = [200, 80, 350, 120, 60, 10]  # the last: too few matches, the identity
    pairs = [planted(rng, n, outliers=0.3) for n in sizes]
    m = max(sizes)
    src = np.zeros((len(sizes), m, 2), np.float32)
    dst = np.zeros((len(sizes), m, 2), np.float32)
    for b, (_, s, d) in enumerate(pairs):
        src[b, : len(s)], dst[b, : len(d)] = s, d
    H, inliers = tc.estimate_homographies(torch.from_numpy(src), torch.from_numpy(dst), torch.tensor(sizes), p)
    grid = np.stack(np.meshgrid(np.arange(0, 320, 16), np.arange(0, 240, 16)), -1).reshape(-1, 2)
    for b, (truth, s, d) in enumerate(pairs):
        ours = H[b].numpy()
        if sizes[b] < p.min_matches:
            assert np.array_equal(ours, np.eye(3)) and inliers[b] == 0
            continue
        ref, _ = estimate_homography(s, d, p)  # the CPU path: cv2.findHomography(RANSAC)
        # over the whole frame, in pixels: as close to the truth as OpenCV's fit (0.1 px noise on 42-245 inliers)
        err, err_cv = reprojection(ours, truth, grid).max(), reprojection(ref, truth, grid).max()
        assert err < max(1.25 * err_cv, 0.05), (b, err, err_cv)
        assert reprojection(ours, ref, grid).max() < 0.2, b
        assert 0.6 * sizes[b] < inliers[b] <= sizes[b]
    # seeded: the same draw gives the same homographies
    again, _ = tc.estimate_homographies(torch.from_numpy(src), torch.from_numpy(dst), torch.tensor(sizes), p)
    assert torch.equal(again, H)


def test_homography_flow_equals_the_cpu_field():
    rng = np.random.default_rng(1)
    Hs = [planted(rng, 10, 0.0)[0] for _ in range(3)]
    got = tc.homography_flow(torch.from_numpy(np.stack(Hs)), 30, 40)
    for b, H in enumerate(Hs):
        np.testing.assert_allclose(got[b].permute(1, 2, 0).numpy(), homography_flow(H, 30, 40), rtol=0, atol=1e-6)
