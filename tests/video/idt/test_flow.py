"""The pyramid Farneback flow: OpenCV's numerics at one level, the right motion at every scale, the chain's seeding."""

import cv2
import numpy as np

from idtprior.video.idt import IDTParams, pyramid_scales
from idtprior.video.idt.flow import PyramidFlow, farneback_level, median_flow, poly_expansion

from .conftest import shift_image, texture


def test_one_level_equals_opencv():
    # cv2's finest level blurs its input 3x3 (sigma 0.8) before the expansion; with no pyramid the rest must agree
    p = IDTParams()
    a = texture(60, 80, seed=1)
    b = shift_image(a, 1.3, -0.7)
    ref = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 0, p.flow_winsize, p.flow_iterations, p.flow_poly_n,
                                       p.flow_poly_sigma, cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    fa, fb = (cv2.GaussianBlur(x.astype(np.float32), (3, 3), 0) for x in (a, b))
    R0, R1 = poly_expansion(fa, p.flow_poly_n, p.flow_poly_sigma), poly_expansion(fb, p.flow_poly_n, p.flow_poly_sigma)
    ours = farneback_level(R0, R1, np.zeros((60, 80, 2), np.float32), p)
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # box window too
    q = IDTParams(flow_gaussian_window=False, flow_winsize=5)
    ref = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 0, 5, 2, 7, 1.5, 0)
    np.testing.assert_allclose(farneback_level(R0, R1, np.zeros((60, 80, 2), np.float32), q), ref, atol=1e-3)


def test_every_scale_sees_the_translation_in_its_own_pixels():
    p = IDTParams()
    a = texture(120, 160, seed=2)
    b = shift_image(a, 2.0, -1.0)
    sc = pyramid_scales(120, 160, p)
    pf = PyramidFlow([s for _, s in sc], [f for f, _ in sc], p)
    raw, med = pf.flows(pf.expand(a), pf.expand(b))
    assert len(raw) == len(sc) == 4
    for (f, (h, w)), r, m in zip(sc, raw, med):
        assert r.shape == m.shape == (h, w, 2)
        inner = m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 2)
        np.testing.assert_allclose(np.median(inner, 0), [2.0 / f, -1.0 / f], atol=0.05 + 0.05 / f)


def test_finer_level_starts_from_the_median_filtered_coarser_flow():
    p = IDTParams()
    a = texture(120, 160, seed=3)
    b = shift_image(a, 3.0, 1.0)
    sc = pyramid_scales(120, 160, p)[:2]
    pf = PyramidFlow([s for _, s in sc], [f for f, _ in sc], p)
    Ra, Rb = pf.expand(a), pf.expand(b)
    raw, med = pf.flows(Ra, Rb)
    coarse = farneback_level(Ra[1], Rb[1], np.zeros(sc[1][1] + (2,), np.float32), p)
    np.testing.assert_allclose(raw[1], coarse, atol=1e-6)
    init = cv2.resize(median_flow(coarse, p), (160, 120), interpolation=cv2.INTER_LINEAR) * np.float32(sc[1][0])
    np.testing.assert_allclose(raw[0], farneback_level(Ra[0], Rb[0], init, p), atol=1e-6)
    np.testing.assert_allclose(med[0], cv2.medianBlur(raw[0], 5))
