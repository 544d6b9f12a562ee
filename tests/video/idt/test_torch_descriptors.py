"""The torch backend's per-frame vote channels and cell sums (issue 16) against the CPU extractor's
(``descriptors.py``), on KTH frames with the CPU extractor's own flows."""

import cv2
import numpy as np
import pytest
import torch

from idtprior.video.idt import IDTParams, pyramid_scales
from idtprior.video.idt import torch_descriptors as td
from idtprior.video.idt.descriptors import cell_sums, frame_channels
from idtprior.video.idt.flow import PyramidFlow
from idtprior.video.io import iter_frames

from .conftest import texture


def test_votes_split_the_magnitude_between_the_two_nearest_bins():
    # vectors at known angles: 0 deg -> bin 0; 22.5 deg -> half in bins 0 and 1; 350 deg -> bins 7 and 0
    ang = np.deg2rad(np.array([0.0, 22.5, 90.0, 350.0], np.float32))
    mag = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    dx = torch.from_numpy(mag * np.cos(ang)).view(1, 1, 1, 4)
    dy = torch.from_numpy(mag * np.sin(ang)).view(1, 1, 1, 4)
    v = td.orientation_votes(dx, dy)[0, :, 0].T.numpy()  # (4 pixels, 8 bins)
    want = np.zeros((4, 8), np.float32)
    want[0, 0] = 1.0
    want[1, 0] = want[1, 1] = 1.0
    want[2, 2] = 3.0
    want[3, 7], want[3, 0] = 4.0 * 2 / 9, 4.0 * 7 / 9  # 350 deg = bin 7 + 7/9
    np.testing.assert_allclose(v, want, atol=1e-5)
    np.testing.assert_allclose(v.sum(1), mag, rtol=1e-6)
    zero = torch.tensor([True, False, False, False]).view(1, 1, 1, 4)
    assert td.orientation_votes(dx, dy, zero=zero)[0, :, 0, 0].abs().sum() == 0


@pytest.fixture(scope="module")
def kth_frames_and_flows(kth_dir_module):
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for _, f in
              zip(range(5), iter_frames(kth_dir_module / "person01_boxing_d1_uncomp.avi"))]
    p = IDTParams()
    sc = pyramid_scales(*frames[0].shape, p)
    pf = PyramidFlow([s for _, s in sc], [f for f, _ in sc], p)
    exp = [pf.expand(f) for f in frames]
    flows = [pf.flows(exp[i], exp[i + 1]) for i in range(4)]  # (raw, med) per pair
    return np.stack(frames[1:]), np.stack([r[0] for r, _ in flows]), np.stack([m[0] for _, m in flows])


def test_channels_and_cell_sums_match_the_cpu_extractors(kth_frames_and_flows):
    gray, raw, med = kth_frames_and_flows  # (4, 120, 160), (4, 120, 160, 2) x 2: the finest scale
    p = IDTParams()
    cell = p.patch_size // p.nxy_cell
    t = td.frame_channels(torch.from_numpy(gray), torch.from_numpy(raw).permute(0, 3, 1, 2),
                          p.hof_zero_threshold, torch.from_numpy(med).permute(0, 3, 1, 2))
    sums = td.cell_sums(t, cell)
    assert t.shape == (4, td.N_CHANNELS, 120, 160)
    for i in range(4):
        want = frame_channels(gray[i], raw[i], p.hof_zero_threshold, med[i])  # (H, W, 33)
        got = t[i].permute(1, 2, 0).numpy()
        scale = np.abs(want).max()
        # the angles: atan2 here, OpenCV's approximation there; a vote moves between two bins by that difference
        np.testing.assert_allclose(got, want, atol=2e-3 * scale)
        np.testing.assert_allclose(got.sum(-1), want.sum(-1), rtol=1e-5, atol=1e-5 * scale)  # the magnitudes
        assert np.array_equal(got[..., 16], want[..., 16])  # HOF's zero bin: the same pixels
        want_sums = cell_sums(want, cell)
        got_sums = sums[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got_sums, want_sums, atol=2e-3 * np.abs(want_sums).max())
        # the same sums of the same votes: only the order of additions differs
        exact = td.cell_sums(torch.from_numpy(want).permute(2, 0, 1)[None], cell)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(exact, want_sums, rtol=1e-5, atol=1e-4)


def test_a_batch_is_each_frame_alone():
    g = np.stack([texture(40, 50, seed=s) for s in range(3)])
    flow = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (3, 2, 40, 50)).astype(np.float32))
    both = td.cell_sums(td.frame_channels(torch.from_numpy(g), flow, 0.4), 8)
    for i in range(3):
        one = td.cell_sums(td.frame_channels(torch.from_numpy(g[i : i + 1]), flow[i : i + 1], 0.4), 8)
        torch.testing.assert_close(both[i : i + 1], one)
