"""The torch backend's pyramid Farneback (issue 16's first piece) against the CPU extractor's own (``flow.py``): each
step on its own, then the whole coarse-to-fine pass on KTH frames (mean end-point error < 0.05 px at every scale)."""

import cv2
import numpy as np
import pytest
import torch

from idtprior.video.idt import IDTParams, pyramid_scales
from idtprior.video.idt import torch_flow as tf
from idtprior.video.idt.flow import PyramidFlow, Grid, smoothing_window, farneback_level, poly_expansion
from idtprior.video.io import iter_frames

from .conftest import shift_image, texture


def nchw(a: np.ndarray) -> torch.Tensor:
    """(h, w, C) or (h, w) -> (1, C, h, w)."""
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def hwc(t: torch.Tensor, i: int = 0) -> np.ndarray:
    return t[i].permute(1, 2, 0).numpy()


def test_expansion_level_and_median_equal_the_cpu_steps():
    p = IDTParams()
    a = texture(60, 80, seed=1)
    b = shift_image(a, 1.3, -0.7)
    fa, fb = (cv2.GaussianBlur(x.astype(np.float32), (3, 3), 0) for x in (a, b))
    R0, R1 = (poly_expansion(x, p.flow_poly_n, p.flow_poly_sigma) for x in (fa, fb))
    T0, T1 = (tf.poly_expansion(nchw(x), p.flow_poly_n, p.flow_poly_sigma) for x in (fa, fb))
    np.testing.assert_allclose(hwc(T0), R0, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(hwc(T1), R1, rtol=1e-5, atol=1e-4)
    # one level from the same expansions (Gaussian window, then a box)
    zero = np.zeros((60, 80, 2), np.float32)
    edge = torch.from_numpy(Grid(60, 80).edge)
    for q in (p, IDTParams(flow_gaussian_window=False, flow_winsize=5)):
        ref = farneback_level(R0, R1, zero, q)
        k = smoothing_window(q.flow_winsize, q.flow_gaussian_window)
        kernel = None if k is None else torch.from_numpy(k)
        flow = nchw(zero)
        M = tf.update_matrices(nchw(R0), nchw(R1), flow, edge)
        for _i in range(q.flow_iterations):
            flow = tf.solve(M, q.flow_winsize, kernel)
            M = tf.update_matrices(nchw(R0), nchw(R1), flow, edge)
        np.testing.assert_allclose(hwc(flow), ref, atol=1e-4)
    # the update step alone, bit for bit: the same elementwise operations in the C kernel's order
    from idtprior.video.idt import kernels

    flow0 = np.random.default_rng(0).normal(0, 2, (60, 80, 2)).astype(np.float32)
    flow0[0, 0] = np.nan  # NaN is outside the frame, as in C
    want = kernels.farneback_update(R0, R1, flow0, Grid(60, 80).edge)
    got = hwc(tf.update_matrices(nchw(R0), nchw(R1), nchw(flow0), edge))
    assert np.array_equal(got, want, equal_nan=True) and np.isnan(got[0, 0]).any()
    # the 5x5 median, exactly
    np.testing.assert_array_equal(hwc(tf.median5(nchw(flow0[1:, 1:].copy()))), cv2.medianBlur(flow0[1:, 1:], 5))


def test_a_batch_of_pairs_is_each_pair_alone():
    p = IDTParams()
    sc = pyramid_scales(60, 80, p)
    pf = tf.TorchPyramidFlow([s for _, s in sc], [f for f, _ in sc], p)
    a = np.stack([texture(60, 80, seed=s) for s in (4, 5, 6)])
    b = np.stack([shift_image(x, 1.0 + i, -0.5) for i, x in enumerate(a)])
    raw, med = pf.flows(pf.expand(torch.from_numpy(a)), pf.expand(torch.from_numpy(b)))
    for i in range(3):
        r1, m1 = pf.flows(pf.expand(torch.from_numpy(a[i : i + 1])), pf.expand(torch.from_numpy(b[i : i + 1])))
        for k in range(len(sc)):
            torch.testing.assert_close(raw[k][i : i + 1], r1[k], rtol=1e-5, atol=1e-4)  # batched convolutions sum in another order
            torch.testing.assert_close(med[k][i : i + 1], m1[k], rtol=1e-5, atol=1e-4)  # batched convolutions sum in another order


@pytest.fixture(scope="module")
def kth_pairs(kth_dir_module):
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for _, f in
              zip(range(9), iter_frames(kth_dir_module / "person01_boxing_d1_uncomp.avi"))]
    return np.stack(frames[:-1]), np.stack(frames[1:])


def test_the_pyramid_on_kth_frames_matches_the_cpu_extractors(kth_pairs):
    p = IDTParams()
    a, b = kth_pairs  # 8 consecutive pairs of the 160x120 clip, as one batch
    sc = pyramid_scales(*a.shape[1:], p)
    sizes, factors = [s for _, s in sc], [f for f, _ in sc]
    cpu = PyramidFlow(sizes, factors, p)
    ours = tf.TorchPyramidFlow(sizes, factors, p)
    E0, E1 = ours.expand(torch.from_numpy(a)), ours.expand(torch.from_numpy(b))
    raw, med = ours.flows(E0, E1)
    epe = np.zeros((len(a), len(sc)))
    for i in range(len(a)):
        C0, C1 = cpu.expand(a[i]), cpu.expand(b[i])
        for k in range(len(sc)):
            np.testing.assert_allclose(hwc(E0[k], i), C0[k], rtol=1e-4, atol=2e-3)  # the levels' blur and resize
        craw, cmed = cpu.flows(C0, C1)
        for k in range(len(sc)):
            epe[i, k] = np.linalg.norm(hwc(med[k], i) - cmed[k], axis=-1).mean()
    assert epe.max() < 0.05, epe  # mean end-point error per pair and scale, in that scale's pixels
    assert raw[0].shape == (len(a), 2, *sizes[0])
