"""Fidelity against the reference release's own output on the KTH clip (skips where ../shared/data is absent).

Floors of issue 3: trajectory count within 15% overall and per scale, 70% of the reference's trajectories matched (same
end frame and scale, mean position within 2 px), median block cosine on matched pairs >= 0.95. Since the flow
reproduces the reference's tracks, the extractor sits far above them (full clip: 99.5% matched, counts within 1.1%);
the tighter guard below catches a regression long before the floor does.
Default run: frames 0-60 (a few seconds). Slow: the whole clip.
"""

import cv2
import numpy as np
import pytest

from idtprior.video.idt import IDTParams, extract_idt
from idtprior.video.idt.compare import fidelity_report, format_report, match_rows
from idtprior.video.idt.textformat import read_idt_text
from idtprior.video.io import iter_frames


def run(kth_dir, n_frames: int | None):
    cv2.setNumThreads(1)
    frames = iter_frames(kth_dir / "person01_boxing_d1_uncomp.avi")
    if n_frames is not None:
        frames = (f for t, f in zip(range(n_frames), frames))
    ours = extract_idt(frames, IDTParams())
    ref = read_idt_text(kth_dir / "person01_boxing_d1.idt.txt.gz")
    if n_frames is not None:
        ref = ref[ref[:, 0] < n_frames]
    rep = fidelity_report(ours, ref)
    print(format_report(rep))
    return rep


def check(rep, count_tol: float, matched: float, cosine: float, min_ref_per_scale: int = 20):
    assert abs(rep["count_ratio"] - 1) <= count_tol, rep["count_ratio"]
    for s, e in rep["per_scale"].items():
        if e["n_ref"] >= min_ref_per_scale:  # a ratio of a handful of trajectories says little
            assert abs(e["count_ratio"] - 1) <= count_tol, (s, e["count_ratio"])
            assert e["matched"] >= matched, (s, e["matched"])
    for name, c in rep["cosine"].items():
        assert c >= cosine, (name, c)
    assert rep["matched"] >= matched, rep["matched"]


@pytest.fixture(scope="module")
def first_60(kth_dir_module):
    return run(kth_dir_module, 61)


def test_fidelity_floor_first_60_frames(first_60):
    check(first_60, count_tol=0.15, matched=0.70, cosine=0.95)


def test_fidelity_guard_first_60_frames(first_60):
    # measured: count ratio 0.983 (per scale 0.96-1.00), matched 0.971 (0.92 at the coarsest scale's 24 trajectories;
    # the misses are first-frame trajectories whose camera-motion pruning differs), median cosines 0.999-1.000
    check(first_60, count_tol=0.05, matched=0.90, cosine=0.99)


@pytest.mark.slow
def test_fidelity_full_clip(kth_dir):
    rep = run(kth_dir, None)
    check(rep, count_tol=0.15, matched=0.70, cosine=0.95)
    # measured: count ratio 0.997 (per scale 0.989-1.000), matched 0.995 (0.977-0.996 per scale), cosines >= 0.999
    check(rep, count_tol=0.03, matched=0.97, cosine=0.99)


def largest_step_fraction(steps) -> np.ndarray:
    """(n,) largest step magnitude over the summed magnitudes of (n, L, 2) steps."""
    mag = np.sqrt((np.asarray(steps, np.float64) ** 2).sum(-1))
    return mag.max(1) / mag.sum(1)


def test_reference_keeps_a_track_above_the_erratic_ratio_and_so_do_we(kth_dir):
    # The release keeps a track whose largest step is 0.739 of its length (shape columns; end frame 64, scale 1), so
    # the 70% ratio alone does not prune: only a step above max_dis too does (see keep_trajectories).
    ref = read_idt_text(kth_dir / "person01_boxing_d1.idt.txt.gz")
    ref = ref[ref[:, 0] <= 64]
    ref_frac = largest_step_fraction(ref[:, 10:40].reshape(-1, 15, 2))
    above = np.nonzero(ref_frac > IDTParams().erratic_ratio)[0]
    assert len(above) >= 1, ref_frac.max()
    cv2.setNumThreads(1)
    frames = (f for _, f in zip(range(65), iter_frames(kth_dir / "person01_boxing_d1_uncomp.avi")))
    ours, pts = extract_idt(frames, IDTParams(), return_points=True)
    pairs = match_rows(ours, ref[above])
    assert len(pairs) == len(above), (len(pairs), len(above))  # every such reference track has our twin
    raw = largest_step_fraction(np.diff(pts[pairs[:, 1]], axis=1))
    shape = largest_step_fraction(ours[pairs[:, 1], 10:40].reshape(-1, 15, 2))
    # our twin is above the ratio too (raw steps 0.740, compensated 0.734), and its shape matches the reference's
    assert (raw > IDTParams().erratic_ratio).all(), raw
    np.testing.assert_allclose(shape, ref_frac[above][pairs[:, 0]], atol=0.01)
