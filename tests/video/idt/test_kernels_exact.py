"""The compiled loops that replaced OpenCV and numpy calls of the extractor give their results bit for bit: the box
sums are cv2.boxFilter's, the points' descriptors are the numpy reference's (cell_histograms then frame_descriptors), a
frame's votes in one pass are four orientation_votes calls, and a homography's field is the numpy expression's. Each on
data where a difference would show: sparse votes with long runs of zeros, tiny and huge values, points off the frame,
border patches, NaN."""

import cv2
import numpy as np
import pytest

from idtprior.video.idt import kernels
from idtprior.video.idt.camera import homography_flow
from idtprior.video.idt.descriptors import (BLOCKS, N_CHANNELS, cell_histograms, cell_sums, frame_channels,
                                            frame_descriptors, point_descriptors)


def votes_like(rng, h, w, c=N_CHANNELS) -> np.ndarray:
    """Sparse non-negative votes spanning magnitudes from 1e-6 to 1e3, as a frame's channels are."""
    a = rng.random((h, w, c)) * 10.0 ** rng.integers(-6, 4, size=(h, w, c))
    return np.where(rng.random((h, w, c)) < 0.25, a, 0.0).astype(np.float32)


@pytest.mark.parametrize("h,w,c,k", [(120, 160, 33, 16), (42, 57, 33, 16), (10, 7, 33, 16), (17, 20, 3, 6),
                                     (30, 31, 1, 7), (1, 1, 2, 9)])
def test_box_sums_are_cv2_box_filter_bit_for_bit(h, w, c, k):
    """Cells of 6 px and more (the extractor's are 16): OpenCV sums smaller boxes another way, and ``cell_sums``
    leaves those to it."""
    a = votes_like(np.random.default_rng(h * w + k), h, w, c)
    want = cv2.boxFilter(a, -1, (k, k), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_REPLICATE)
    want = want.reshape(a.shape)  # OpenCV drops a single channel
    out = np.full_like(a, np.nan)
    assert kernels.box_sums(a, k, out) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cell_sums(a, k), want)
    small = cv2.boxFilter(a, -1, (3, 3), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_REPLICATE)
    np.testing.assert_array_equal(cell_sums(a, 3), small.reshape(a.shape))
    # and they are box sums: one pixel checked against the direct sum, replicating past the edges
    ys = np.minimum(np.arange(k), h - 1)
    xs = np.minimum(np.arange(k), w - 1)
    np.testing.assert_allclose(out[0, 0], a[ys][:, xs].astype(np.float64).sum((0, 1)), rtol=1e-5, atol=1e-6)


def test_box_sums_refuse_a_wrong_buffer():
    with pytest.raises(ValueError, match=r"out: expected a C-contiguous float32 array of shape \(4, 5, 3\)"):
        kernels.box_sums(np.zeros((4, 5, 3), np.float32), 2, np.zeros((4, 5, 2), np.float32))
    with pytest.raises(ValueError, match="expected \\(h, w, C\\) channels and a cell >= 1"):
        kernels.box_sums(np.zeros((4, 5, 3), np.float32), 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the reference's NaN point
def test_point_descriptors_are_the_numpy_reference_bit_for_bit():
    rng = np.random.default_rng(7)
    for h, w in [(120, 160), (42, 57), (20, 30)]:
        sums = cell_sums(votes_like(rng, h, w), 16)
        sums[rng.random(sums.shape) < 0.01] = -1e-6  # running sums can leave tiny negatives: clipped alike
        pts = np.stack([rng.uniform(-8, w + 8, 2000), rng.uniform(-8, h + 8, 2000)], 1).astype(np.float32)
        pts[:4] = [[0.5, 1.5], [2.5, 3.5], [w - 0.5, h - 0.5], [np.nan, 3.0]]  # ties round to even; a NaN point
        sums[:8, :8, 8:17] = 0.0  # an empty HOF block: divided by 1e-10, zeros
        want = frame_descriptors(cell_histograms(sums, pts, 32, 2))
        got = point_descriptors(sums, pts, 32, 2)
        assert got.shape == (2000, 4 * N_CHANNELS)
        np.testing.assert_array_equal(got, want)
    # a NaN vote makes its block NaN in both
    sums = cell_sums(votes_like(rng, 120, 160), 16)
    sums[5, 5, 0] = np.nan
    p = np.float32([[5 + 16, 5 + 16]])  # its patch's first cell starts at (5, 5)
    np.testing.assert_array_equal(point_descriptors(sums, p, 32, 2), frame_descriptors(cell_histograms(sums, p, 32, 2)))
    assert np.isnan(point_descriptors(sums, p, 32, 2)[0, :32]).all()


def test_point_descriptors_check_their_blocks():
    sums = np.zeros((40, 40, 5), np.float32)
    with pytest.raises(ValueError, match="blocks: \\(first channel, bins\\) rows within 5 channels"):
        kernels.cell_descriptors(sums, np.zeros((1, 2), np.float32), 32, 2, np.array([[0, 8]], np.int64))
    with pytest.raises(ValueError, match="at most 64 cells"):
        kernels.cell_descriptors(sums, np.zeros((1, 2), np.float32), 36, 9, np.array([[0, 5]], np.int64))


def test_frame_votes_in_one_pass_are_four_orientation_votes_calls():
    rng = np.random.default_rng(8)
    h, w = 37, 51
    gray = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (5, 5), 1.2)
    flow = (rng.normal(size=(h, w, 2)) * 0.5).astype(np.float32)
    flow[0, 0] = np.nan  # a NaN vector votes NaN in both
    mbh = cv2.medianBlur(flow, 5)
    got = frame_channels(gray, flow, 0.4, mbh)
    want = np.full((h * w, N_CHANNELS), 7.0, np.float32)
    g = gray.astype(np.float32)
    fx, fy = np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1])
    small = cv2.magnitude(fx, fy).reshape(-1) <= 0.4
    fields = [(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)), (fx, fy)]
    for comp in (np.ascontiguousarray(mbh[..., 0]), np.ascontiguousarray(mbh[..., 1])):
        fields.append((cv2.Sobel(comp, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(comp, cv2.CV_32F, 0, 1, ksize=1)))
    for (dx, dy), (_, sl, _) in zip(fields, BLOCKS):
        mag, ang = cv2.cartToPolar(dx, dy, angleInDegrees=False)
        kernels.orientation_votes(mag.reshape(-1), ang.reshape(-1), want, sl.start, 8,
                                  zero=small if sl.start == 8 else None)
    want[:, 16] = small
    np.testing.assert_array_equal(got.reshape(h * w, N_CHANNELS), want)
    assert 0.1 < small.mean() < 0.9 and np.isnan(got[0, 0, 8:10]).all()  # a NaN vector: NaN votes, as the reference


def test_homography_field_is_the_numpy_expression_bit_for_bit():
    rng = np.random.default_rng(9)
    for h, w in [(120, 160), (17, 23)]:
        H = np.eye(3) + rng.normal(scale=[[1e-2, 1e-2, 2.0], [1e-2, 1e-2, 2.0], [1e-4, 1e-4, 1e-3]])
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        den = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
        u = (H[0, 0] * xs + H[0, 1] * ys + H[0, 2]) / den - xs
        v = (H[1, 0] * xs + H[1, 1] * ys + H[1, 2]) / den - ys
        np.testing.assert_array_equal(homography_flow(H, h, w), np.dstack([u, v]).astype(np.float32))
    np.testing.assert_array_equal(homography_flow(np.eye(3), 4, 5), np.zeros((4, 5, 2), np.float32))


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the reference's NaN point
def test_the_tracking_step_is_the_numpy_step_bit_for_bit():
    """Cohorts of different ages and sizes, points inside, on and off the frame (and a NaN): the compiled step moves,
    stores and kills exactly as the extractor's numpy code did, and gathers the points it read."""
    rng = np.random.default_rng(10)
    h, w, L, nt, D = 23, 31, 15, 3, 132
    per_cell = L // nt
    med = (rng.normal(size=(h, w, 2)) * 3).astype(np.float32)
    cmed = (rng.normal(size=(h, w, 2))).astype(np.float32)
    cohorts = []
    for n, age in [(5, 0), (1, 4), (9, 14), (3, 7)]:
        pos = (rng.random((n, L + 1, 2)) * [w + 6, h + 6] - 3).astype(np.float32)
        comp = rng.normal(size=(n, L, 2)).astype(np.float32)
        desc = rng.random((n, nt, D)).astype(np.float32)
        alive = rng.random(n) < 0.8
        cohorts.append([pos, comp, desc, alive, age])
    cohorts[2][0][0, 14] = [np.nan, 3.0]
    want = [[a.copy() for a in c[:4]] + [c[4]] for c in cohorts]
    table = np.array([kernels.cohort_row(*c[:4]) + (len(c[0]), c[4]) for c in cohorts], np.int64)
    pts = kernels.cohort_points(table, L)
    np.testing.assert_array_equal(pts, np.concatenate([c[0][:, c[4]] for c in want]))
    np.testing.assert_array_equal(kernels.cohort_points(table, L, only_alive=True),
                                  np.concatenate([c[0][c[3], c[4]] for c in want]))
    fdesc = rng.random((len(pts), D)).astype(np.float32)
    counts = kernels.track_step(med, cmed, fdesc, table, L, nt, per_cell)
    # the extractor's numpy code before the compiled step
    xi = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, h - 1)
    new = pts + med[yi, xi]
    cstep = cmed[yi, xi]
    inside = (new[:, 0] >= 0) & (new[:, 0] <= w - 1) & (new[:, 1] >= 0) & (new[:, 1] <= h - 1)
    k = 0
    for (pos, comp, desc, alive, age), got, count in zip(want, cohorts, counts):
        n = len(pos)
        desc[:, age // per_cell] += fdesc[k: k + n]
        comp[:, age] = cstep[k: k + n]
        pos[:, age + 1] = new[k: k + n]
        alive &= inside[k: k + n]
        k += n
        for a, b in zip((pos, comp, desc, alive), got[:4]):
            np.testing.assert_array_equal(b, a)
        assert count == alive.sum()
    assert 0 < counts.sum() < len(pts)  # some points left the frame
    with pytest.raises(ValueError, match="ages must lie in"):
        kernels.track_step(med, cmed, fdesc, table + np.array([0, 0, 0, 0, 0, L], np.int64), L, nt, per_cell)


def test_the_new_kernels_refuse_what_they_cannot_read_before_the_c_code_sees_it():
    ch = np.zeros((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"work: expected a C-contiguous float64 buffer of >= 105 elements"):
        kernels.box_sums(ch, 6, work=np.zeros(104, np.float64))
    with pytest.raises(ValueError, match="polar: expected the \\(magnitude, angle\\) pairs of 4 blocks, got 3"):
        v = np.zeros(20, np.float32)
        kernels.frame_votes([(v, v)] * 3, np.zeros(20, bool), np.zeros((20, 33), np.float32))
    with pytest.raises(ValueError, match=r"angle 2: expected a C-contiguous float32 array of shape \(20,\)"):
        kernels.frame_votes([(v, v)] * 2 + [(v, v.astype(np.float64))] + [(v, v)], np.zeros(20, bool),
                            np.zeros((20, 33), np.float32))
    n, L = 3, 15
    pos, comp = np.zeros((n, L + 1, 2), np.float32), np.zeros((n, L, 2), np.float32)
    desc, alive = np.zeros((n, 3, 132), np.float32), np.ones(n, bool)
    with pytest.raises(ValueError, match=r"alive: expected a C-contiguous bool array of shape \(3,\), got uint8"):
        kernels.cohort_row(pos, comp, desc, alive.view(np.uint8))
    with pytest.raises(ValueError, match=r"pos: expected a C-contiguous float32 array of shape \(3, 16, 2\)"):
        kernels.cohort_row(pos[:, :L], comp, desc, alive)
    table = np.array([kernels.cohort_row(pos, comp, desc, alive) + (n, L + 1)], np.int64)
    with pytest.raises(ValueError, match=r"cohort_points: ages must lie in \[0, 15\], got \[16\]"):
        kernels.cohort_points(table, L)
    assert desc.sum() == 0 and alive.all()  # nothing was written
