"""The torch backend's tracking step, pruning and per-point descriptors (issue 16) against the CPU extractor's
functions on the same inputs."""

import numpy as np
import torch

from idtprior.video.idt import IDTParams
from idtprior.video.idt import torch_tracks as tt
from idtprior.video.idt.descriptors import cell_histograms, frame_descriptors
from idtprior.video.idt.extract import keep_trajectories


def test_pruning_equals_the_cpu_rule_on_planted_trajectories():
    rng = np.random.default_rng(0)
    p = IDTParams()
    L, n = p.track_length, 400
    kind = rng.integers(0, 4, n)  # static, moving, erratic (one big jump), wild
    speed = np.where(kind == 0, 0.01, np.where(kind == 3, 30.0, 1.0))
    steps = rng.normal(0, 1, (n, L, 2)) * speed[:, None, None] + np.where(kind == 1, 1.0, 0.0)[:, None, None]
    steps[kind == 2, L // 2] += 25.0
    P = np.concatenate([np.zeros((n, 1, 2)), np.cumsum(steps, 1)], 1).astype(np.float32) + 50
    C = (steps * rng.uniform(0, 1, (n, 1, 1))).astype(np.float32)
    for q in (p, IDTParams(use_camera_compensation=False)):
        want = keep_trajectories(P, C, q)
        got = tt.keep_trajectories(torch.from_numpy(P), torch.from_numpy(C), q).numpy()
        assert np.array_equal(got, want)
        assert 0 < want.sum() < n  # some kept, some pruned


def test_cell_histograms_and_descriptors_equal_the_cpu_ones():
    rng = np.random.default_rng(1)
    sums = rng.uniform(0, 3, (60, 80, 33)).astype(np.float32)
    sums[..., 5] = -1e-6  # running sums can leave tiny negatives: clipped
    points = np.concatenate([rng.uniform(-3, [83, 63], (50, 2)), [[40.5, 30.5], [41.5, 31.5]]]).astype(np.float32)
    want = cell_histograms(sums, points, 32, 2)
    got = tt.cell_histograms(torch.from_numpy(sums).permute(2, 0, 1), torch.from_numpy(points), 32, 2).numpy()
    assert np.array_equal(got, want)
    np.testing.assert_allclose(tt.frame_descriptors(torch.from_numpy(want)).numpy(), frame_descriptors(want),
                               rtol=1e-6, atol=1e-7)


def test_a_tracking_step_reads_the_flow_at_the_rounded_position():
    h, w = 30, 40
    med = torch.zeros(2, h, w)
    med[0, 10, 20], med[1, 10, 20] = 1.5, -2.0  # only pixel (x 20, y 10) moves
    comp = med * 0.5
    pts = torch.tensor([[20.4, 9.6], [19.5, 10.0], [20.5, 10.0], [0.0, 0.0], [39.2, 29.0]])
    new, cstep, inside = tt.track_step(pts, med, comp, h, w)
    # 19.5 and 20.5 both round to 20 (half to even, as numpy's rint)
    np.testing.assert_allclose(new.numpy(), [[21.9, 7.6], [21.0, 8.0], [22.0, 8.0], [0, 0], [39.2, 29.0]], atol=1e-6)
    np.testing.assert_allclose(cstep[:3].numpy(), [[0.75, -1.0]] * 3)
    assert inside.tolist() == [True, True, True, True, False]  # x 39.2 is past the last column (39)
    med[0] = -1.0
    assert tt.track_step(torch.tensor([[0.2, 5.0]]), med, comp, h, w)[2].tolist() == [False]  # stepped out
