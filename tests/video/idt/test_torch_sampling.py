"""The torch backend's dense sampling (issue 16) against OpenCV's minimum eigenvalue and the CPU extractor's
``sample_points``, on KTH frames at every scale."""

import cv2
import numpy as np
import torch

from idtprior.video.idt import IDTParams, pyramid_scales
from idtprior.video.idt import torch_sampling as ts
from idtprior.video.idt.extract import build_pyramid, sample_points
from idtprior.video.io import iter_frames

from .conftest import texture


def test_min_eigenvalue_equals_opencv():
    g = np.stack([texture(40, 56, seed=s) for s in range(3)])
    ours = ts.min_eigenvalue(torch.from_numpy(g)).numpy()
    for i in range(3):
        want = cv2.cornerMinEigenVal(g[i], 3, 3)
        np.testing.assert_allclose(ours[i], want, rtol=1e-4, atol=1e-5 * want.max())


def test_sampled_points_equal_the_cpu_extractors_on_kth(kth_dir):
    p = IDTParams()
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for _, f in
              zip(range(3), iter_frames(kth_dir / "person01_boxing_d1_uncomp.avi"))]
    sizes = [s for _, s in pyramid_scales(*frames[0].shape, p)]
    pyramids = [build_pyramid(f, sizes) for f in frames]
    rng = np.random.default_rng(0)
    total = 0
    for k, (h, w) in enumerate(sizes):
        batch = np.stack([pyr[k] for pyr in pyramids])
        occupied = [rng.uniform(0, [w, h], (20, 2)).astype(np.float32) for _ in frames]  # live tracks somewhere
        got = ts.sample_points(torch.from_numpy(batch), [torch.from_numpy(o) for o in occupied], p)
        for i in range(len(frames)):
            want = sample_points(batch[i], occupied[i], p)
            assert np.array_equal(got[i].numpy(), want), (k, i)
            total += len(want)
    assert total > 1000  # the frames are textured enough to sample at every scale
